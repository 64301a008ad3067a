"""Where the computation runs: the torch device, its float32 precision, CPU threads and the attack batch size.

None of these enter a record's key (a result does not depend on them beyond floating-point
round-off and, for the batch size, which random starts the attacks draw: they are seeded per
batch); they are recorded in the record's ``runtime`` so a reader knows how it was computed. The
one computation whose result the CPU thread count would change, a backbone's training, runs at a
fixed count (:data:`TRAINING_THREADS`).
``auto`` picks CUDA when it is available, then Apple's MPS, else the CPU.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from fabench.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch

DEVICE_ENV = "FABENCH_DEVICE"
_SPEC = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
#: Attack batch size on the CPU (points attacked together), and the bounds of the GPU's choice.
CPU_BATCH = 500
GPU_BATCH_RANGE = (32, 20_000)
#: The largest ``--batch-size`` accepted: the most test points a built-in task has
#: (:data:`fabench.protocol.MAX_N_EVAL`); a batch of at least the points attacked is all of them at once.
MAX_BATCH_SIZE = 100_000_000
#: On the CPU, a smaller batch where the model's largest activation over the batch would exceed
#: this many bytes (half a server CPU's 32 MiB last-level cache, so that a layer's input and output
#: fit in it together; see :func:`attack_batch_size`), but never fewer than :data:`CPU_MIN_BATCH`.
CPU_ACTIVATION_BUDGET = 16 * 2**20
CPU_MIN_BATCH = 32
#: On a GPU, bytes per point reserved per float of the model's activations (all of them, kept for
#: the backward pass, with room for their gradients and the attack's own copies).
GPU_BYTES_PER_ACTIVATION = 16


def device_spec(text: str | None) -> str:
    """``--device`` (or ``$FABENCH_DEVICE``, else ``auto``), checked: ``auto``, ``cpu``, ``cuda[:N]``, ``mps``.

    The error names where the bad value came from (``--device`` or ``FABENCH_DEVICE``)."""
    env = os.environ.get(DEVICE_ENV)
    origin = "--device" if text else DEVICE_ENV
    spec = (text or env or "auto").strip().lower()
    if not _SPEC.match(spec):
        raise ConfigError(f"{origin} {spec!r}: expected auto, cpu, cuda, cuda:N or mps")
    return spec


def max_threads() -> int:
    """The most CPU threads fabench accepts: :data:`THREADS_PER_CPU` per CPU of this machine.

    More threads than that only oversubscribe the CPUs (1000 threads on 2 cores ran 20x slower),
    and far more exhaust the OpenMP runtime (libgomp aborts, then a segfault)."""
    return THREADS_PER_CPU * (os.cpu_count() or 1)


#: ``--threads`` may be at most this many per CPU (:func:`max_threads`).
THREADS_PER_CPU = 4


def check_threads(threads: object, *, what: str = "--threads") -> int:
    """``threads`` if it is an integer from 0 (torch's default) to :func:`max_threads`, else a ConfigError."""
    if isinstance(threads, bool) or not isinstance(threads, int):
        raise ConfigError(f"{what} must be an integer, got {threads!r}")
    if threads < 0:
        raise ConfigError(f"{what} must be >= 0 (0 = torch's default), got {threads}")
    if threads > max_threads():
        raise ConfigError(f"{what} {threads}: at most {max_threads()} ({THREADS_PER_CPU} x the "
                          f"{os.cpu_count() or 1} CPUs here)")
    return threads


def check_batch_size(batch_size: object, *, what: str = "--batch-size") -> int:
    """``batch_size`` if it is an integer from 0 (chosen for the device) to :data:`MAX_BATCH_SIZE`,
    else a ConfigError."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 0 <= batch_size <= MAX_BATCH_SIZE:
        raise ConfigError(f"{what} {batch_size!r}: expected an integer from 0 (chosen for the device) "
                          f"to {MAX_BATCH_SIZE:,}")
    return batch_size


def resolve_device(text: str | None = None) -> "torch.device":
    """The torch device for ``text`` (see :func:`device_spec`); one that is not present is an error."""
    import torch

    spec = device_spec(text)
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps is not None and mps.is_available())
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if spec.startswith("cuda"):
        cuda, why = _cuda_available()
        if not cuda:
            raise ConfigError(f"--device {spec}: " + (f"CUDA could not be initialised here ({why})" if why else
                                                      "no CUDA device is available here") + " (use cpu or auto)")
        index = int(spec.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) here")
    if spec == "mps" and not has_mps:
        raise ConfigError("--device mps: the MPS backend is not available here (use cpu or auto)")
    return torch.device(spec)


def _cuda_available() -> tuple[bool, str]:
    """``torch.cuda.is_available()``, and why not where a CUDA driver is there but failed.

    A machine with a GPU can still fail to initialise CUDA (a driver older than torch's CUDA, an
    address-space limit below what CUDA reserves: ``cudaGetDeviceCount`` then reports "out of
    memory"). torch says so only in a warning and answers ``False``; here that warning, without
    torch's boilerplate (its guess about earlier CUDA calls, the C++ source line), becomes part of
    fabench's one-line error instead of a second message on stderr."""
    import warnings

    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok = bool(torch.cuda.is_available())
    why = next((str(w.message) for w in caught if "CUDA" in str(w.message)), "")
    why = re.sub(r"\s*\(Triggered internally at [^)]*\)\.?", "", why)
    why = re.sub(r"Did you run some cuda functions[^?]*\?\s*", "", why)
    return ok, " ".join(why.split())


def describe_device(device: "torch.device | str", *, threads: int | None = None) -> str:
    """``device`` for a record: ``cpu``, or a GPU with its name (``cuda:0 (NVIDIA H100 80GB HBM3)``);
    on a CPU with ``threads`` given, the count too (``cpu (1 thread)``: what :func:`training_threads`
    yields, on which a backbone's weights depend; elsewhere ``threads`` is not shown).

    Results computed on different devices differ by floating-point round-off (and, for trained
    backbones, by what that round-off does to training), so records and caches say where they were
    computed."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    if dev.type == "cpu" and threads is not None:
        return f"{dev} ({threads} thread{'s' if threads != 1 else ''})"
    return str(dev)


#: What :func:`full_precision` records for a CUDA device: float32 as IEEE float32, TF32 off.
CUDA_PRECISION = "float32 (TF32 off)"


def full_precision(device: "torch.device | str") -> str:
    """Make float32 mean float32 on ``device``; returns what the record's ``runtime`` says.

    On NVIDIA GPUs since Ampere, PyTorch runs cuDNN convolutions in TF32 by default (a 10-bit
    mantissa; ``torch.backends.cudnn.conv.fp32_precision == "tf32"``): a GPU run of a convolutional
    backbone would then be a reduced-precision run, its features, head training and attack
    gradients off by about 1e-4 to 1e-3 relative where the CPU's are off by about 1e-7. fabench does not use
    mixed precision, so on CUDA this turns TF32 off for cuDNN (convolutions, RNNs) and for CUDA
    matrix products (the per-backend API of torch >= 2.9, else the ``allow_tf32`` flags). Like
    :func:`set_threads`, process-wide. Elsewhere nothing is changed (``"float32"``).
    """
    import torch

    if torch.device(device).type != "cuda":
        return "float32"
    if hasattr(torch.backends, "fp32_precision"):  # torch >= 2.9: one setting per backend
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        torch.backends.cudnn.conv.fp32_precision = "ieee"  # type: ignore[attr-defined]
        torch.backends.cudnn.rnn.fp32_precision = "ieee"  # type: ignore[attr-defined]
    else:  # pragma: no cover - older torch
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return CUDA_PRECISION


def module_device(module: "torch.nn.Module") -> "torch.device":
    """Where ``module`` runs: the device of its first parameter or buffer (the CPU if it has none)."""
    import torch

    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")


def set_threads(threads: int) -> int:
    """Set torch's CPU threads (``0``: leave torch's default); returns the number in use.

    ``threads`` outside ``0..``:func:`max_threads` is a ConfigError (:func:`check_threads`)."""
    check_threads(threads)
    import torch

    if threads:
        torch.set_num_threads(threads)
    return int(torch.get_num_threads())


#: torch's CPU threads while a backbone trains on the CPU, whatever ``--threads`` says. A
#: convolution's weight gradient is summed over the batch in one partial sum per thread, so the
#: weights after one step depend on the thread count at float32 round-off, and training over epochs
#: turns that into another model: ``cifar5v5``'s CNN trained with 2 threads reached 70.3% ten-class
#: test accuracy where 1 thread gives 67.9%, and its binary head's worst case moved by up to 9 of
#: 100 points at a radius (session 14). The forward pass, the input gradient and the heads'
#: training gave the same bits at 1 and 2 threads, so only the backbone's training is pinned. One
#: thread is what the published backbones were trained with (the leaderboard's sweep runs one
#: thread per job).
TRAINING_THREADS = 1


@contextlib.contextmanager
def training_threads(device: "torch.device | str") -> Iterator[int]:
    """Within the block torch uses :data:`TRAINING_THREADS` CPU threads if ``device`` is the CPU
    (elsewhere nothing changes); the count before is restored after. Yields the count in use."""
    import torch

    before = int(torch.get_num_threads())
    if torch.device(device).type != "cpu":
        yield before
        return
    torch.set_num_threads(TRAINING_THREADS)
    try:
        yield TRAINING_THREADS
    finally:
        torch.set_num_threads(before)


#: glibc ``mallopt`` settings of :func:`tune_allocator`: blocks up to 32 MiB (glibc's largest
#: threshold) come from the heap, not a fresh ``mmap``, and up to 256 MiB of freed heap is kept.
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 256 * 2**20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
_ALLOCATOR: str | None = None


def tune_allocator() -> str:
    """Let glibc's ``malloc`` reuse freed memory for the attacks' per-step tensors; returns what was set.

    An attack step allocates a few tensors of the batch's size (500 points x 3072 floats = 6 MB
    each) and frees them. Above glibc's default threshold (128 KiB, raised dynamically) each such
    block is a fresh ``mmap`` whose pages fault in on first touch and are unmapped on free, so the
    step pays the page faults again every time: measured here, foolbox-style L2 PGD on the synthetic
    task runs 2-3x faster with the heap reused. Only where memory comes from changes, never a value
    (results are bit-identical). A no-op (``"default"``) where the C library is not glibc; done once
    per process, as :func:`set_threads`, whose process-wide effect it shares.
    """
    global _ALLOCATOR
    if _ALLOCATOR is None:
        _ALLOCATOR = "default"
        try:
            import ctypes
            import ctypes.util

            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt, Windows)
            return _ALLOCATOR
        if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD):
            _ALLOCATOR = f"glibc: mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim threshold {TRIM_THRESHOLD >> 20} MiB"
    return _ALLOCATOR


@dataclass(frozen=True)
class Footprint:
    """A model's activations for one input point, in floats (see :func:`activation_footprint`)."""

    largest: int = 0
    """The largest tensor any layer outputs (or the input itself, if larger)."""
    total: int = 0
    """All layers' outputs together: about what the backward pass keeps."""


def activation_footprint(model: "torch.nn.Module", point: "torch.Tensor") -> Footprint:
    """Measure ``model``'s activations on ``point`` (a batch of one), by one forward pass with a hook
    on every leaf module (one without submodules); functional operations in a module's ``forward``
    are not seen, so ``total`` is a lower bound. The model's mode and parameters are unchanged."""
    import torch

    sizes: list[int] = []

    def hook(module: torch.nn.Module, args: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            sizes.append(out.numel() // max(1, len(point)))

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            model(point)
    finally:
        for h in handles:
            h.remove()
    per_point = point[0].numel() if len(point) else 0
    return Footprint(largest=max([per_point, *sizes]), total=per_point + sum(sizes))


def attack_batch_size(device: "torch.device", point_numel: int, *, requested: int = 0,
                      footprint: Footprint | None = None) -> int:
    """Points attacked together: ``requested`` if given, else chosen for the device.

    * On the CPU: :data:`CPU_BATCH`, or fewer where the model's largest activation (``footprint``,
      float32) over the batch would exceed :data:`CPU_ACTIVATION_BUDGET`: once a layer's input
      and output overflow the last-level cache, an attack step streams its activations from main
      memory. Measured on a 2-core EPYC (32 MiB L3, 2 threads; ``scripts/gradient_throughput.py``
      and the README), the input gradient per image, inference form, range of the medians of
      separate runs: ``cifar5v5``'s CNN (128 KiB per point; here 128) 0.33 to 0.40 ms in batches
      of 64 to 128, 0.43 to 0.49 ms at 500, 0.60 ms at 1000; a CIFAR ResNet-18 (256 KiB; here 64)
      10.5 to 10.8 ms at 64, 12.1 to 13.6 ms at 500; ``mnist5v5``'s CNN (49 KiB; here 334) 0.10
      to 0.18 ms at every batch from 64 to 1000, within the runs' noise. The budget is a constant,
      not this machine's cache size, so the batches (and with them the attacks' random starts,
      seeded per batch) are the same on every CPU.
    * On a GPU: what a quarter of its free memory holds at ~64 copies of a point or
      :data:`GPU_BYTES_PER_ACTIVATION` bytes per float of the model's activations, whichever is
      more (clipped to :data:`GPU_BATCH_RANGE`): a ResNet-18 keeps about 1.2 million floats per
      CIFAR image for its backward pass.
    """
    if check_batch_size(requested):
        return requested
    fp = footprint or Footprint()
    if device.type != "cuda":
        if fp.largest <= 0:
            return CPU_BATCH
        return max(CPU_MIN_BATCH, min(CPU_BATCH, CPU_ACTIVATION_BUDGET // (4 * fp.largest)))
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    per_point = max(1, point_numel * 4 * 64, fp.total * GPU_BYTES_PER_ACTIVATION)
    low, high = GPU_BATCH_RANGE
    return int(min(high, max(low, free // 4 // per_point)))
