"""--device / --threads / --batch-size: recorded in ``runtime``, never in the key; CPU here, CUDA where present."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import torch

from fabench.device import (CPU_ACTIVATION_BUDGET, CPU_BATCH, CPU_MIN_BATCH, CUDA_PRECISION, GPU_BATCH_RANGE,
                            GPU_BYTES_PER_ACTIVATION, TRAINING_THREADS, Footprint, activation_footprint,
                            attack_batch_size, device_spec, full_precision, resolve_device, training_threads)
from fabench.errors import ConfigError
from fabench.evaluation import RunConfig, evaluate, resolve
from fabench.records import Record

SMALL = (("d", 48), ("n_train", 80), ("n_test", 40))


def _cfg(**kw: object) -> RunConfig:
    return RunConfig(task="synthetic", recipe="binary", attacks=("analytic", "pairwise"), radii=(0.0, 4.0, 8.0),
                     overrides=SMALL, **kw)  # type: ignore[arg-type]


def test_device_spec_parses_and_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FABENCH_DEVICE", raising=False)
    assert device_spec(None) == "auto"
    assert device_spec("CUDA:1") == "cuda:1"
    monkeypatch.setenv("FABENCH_DEVICE", "cpu")
    assert device_spec(None) == "cpu"
    for bad in ("gpu", "cuda:x", "tpu"):
        with pytest.raises(ConfigError):
            device_spec(bad)


def test_auto_picks_what_is_there() -> None:
    want = "cuda" if torch.cuda.is_available() else None
    got = resolve_device("auto")
    assert got.type == (want or got.type)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda")


def test_cuda_that_fails_to_initialise_is_one_line_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    def failing() -> bool:  # what torch does when cudaGetDeviceCount fails (here: an address-space cap)
        warnings.warn("CUDA initialization: Unexpected error from cudaGetDeviceCount(). Did you run some cuda "
                      "functions before calling NumCudaDevices() that might have already set an error? Error 2: "
                      "out of memory (Triggered internally at /pytorch/c10/cuda/CUDAFunctions.cpp:119.)", UserWarning)
        return False

    monkeypatch.setattr(torch.cuda, "is_available", failing)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's warning must not escape beside fabench's error
        with pytest.raises(ConfigError) as exc:
            resolve_device("cuda")
    assert str(exc.value) == ("--device cuda: CUDA could not be initialised here (CUDA initialization: Unexpected "
                              "error from cudaGetDeviceCount(). Error 2: out of memory) (use cpu or auto)")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # no driver at all: no reason to give
    with pytest.raises(ConfigError, match=r"^--device cuda:1: no CUDA device is available here \(use cpu or auto\)$"):
        resolve_device("cuda:1")


def test_batch_size_requested_or_default() -> None:
    cpu = torch.device("cpu")
    assert attack_batch_size(cpu, 3072, requested=7) == 7
    assert attack_batch_size(cpu, 3072) == 500
    with pytest.raises(ConfigError):
        attack_batch_size(cpu, 3072, requested=-1)


def test_activation_footprint_counts_each_layer_per_point() -> None:
    """The footprint of the small CNN (width 8 on 1 x 12 x 12): its largest activation is a first
    conv stage's output (8 x 12 x 12 per point), whatever the probe batch; the model is untouched."""
    from fabench.models.cnn import small_cnn

    torch.manual_seed(0)
    net = small_cnn((1, 12, 12), 4, width=8, feature_dim=16)
    net.train()
    x = torch.rand(3, 1, 12, 12)
    one, three = activation_footprint(net, x[:1]), activation_footprint(net, x)
    assert one == three
    assert one.largest == 8 * 12 * 12
    # input 144; normalize 144; three conv, BN, ReLU stages (8x12x12, 16x6x6, 32x3x3 each x 3) and their
    # pools (8x6x6, 16x3x3, 32x1x1); flatten 32, linear + relu 16 x 2, fc 4.
    assert one.total == 144 + 144 + 3 * (1152 + 576 + 288) + (288 + 144 + 32) + 32 + 32 + 4
    assert net.training and all(not m._forward_hooks for m in net.modules())


def test_cpu_batch_keeps_the_largest_activation_within_the_budget() -> None:
    """On the CPU the batch holds the model's largest activation within ``CPU_ACTIVATION_BUDGET``
    (measured: ``cifar5v5``'s CNN takes an input gradient 1.1x to 1.5x faster in batches of 128 than of 500)."""
    cpu = torch.device("cpu")
    per_point = {"mnist5v5 cnn": 16 * 28 * 28, "cifar5v5 cnn": 32 * 32 * 32, "resnet18": 64 * 32 * 32}
    got = {k: attack_batch_size(cpu, 3072, footprint=Footprint(largest=v, total=10 * v)) for k, v in per_point.items()}
    assert got == {"mnist5v5 cnn": 334, "cifar5v5 cnn": 128, "resnet18": 64}
    for k, n in got.items():
        assert n * 4 * per_point[k] <= CPU_ACTIVATION_BUDGET
    assert attack_batch_size(cpu, 3072, footprint=Footprint(largest=3072, total=3072)) == CPU_BATCH
    assert attack_batch_size(cpu, 10**8, footprint=Footprint(largest=10**8, total=10**8)) == CPU_MIN_BATCH
    assert attack_batch_size(cpu, 3072, requested=1000, footprint=Footprint(largest=10**6)) == 1000


def test_gpu_batch_reserves_memory_for_the_backward_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU with 80 GB free: the synthetic head (64 copies of a 3072-float point) gets the
    largest batch, a ResNet-18 (1.24 million activation floats per image, 16 bytes each) about a
    thousand images, so that a quarter of the free memory holds them."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (80 * 10**9, 80 * 10**9))
    gpu = torch.device("cuda")
    assert attack_batch_size(gpu, 3072) == GPU_BATCH_RANGE[1]
    resnet = attack_batch_size(gpu, 3072, footprint=Footprint(largest=65536, total=1_241_602))
    assert resnet == 20 * 10**9 // (1_241_602 * GPU_BYTES_PER_ACTIVATION) == 1006
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10**6, 80 * 10**9))
    assert attack_batch_size(gpu, 3072, footprint=Footprint(largest=65536, total=1_241_602)) == GPU_BATCH_RANGE[0]


def test_evaluate_chooses_the_batch_from_the_model(tmp_path: Path) -> None:
    """``evaluate`` measures the attacked model's activations: a pixel head keeps the CPU's 500
    (the backbone tasks: ``test_paper_setting``)."""
    rec, _, _ = evaluate(_cfg(device="cpu", threads=1, batch_size=0), out_dir=tmp_path)
    assert rec.runtime["batch_size"] == CPU_BATCH and "feature_space_batch_size" not in rec.runtime


def test_runtime_is_recorded_and_not_keyed(tmp_path: Path) -> None:
    a, b = _cfg(device="cpu", threads=1, batch_size=16), _cfg(device="auto", threads=0, batch_size=0)
    assert resolve(a).key == resolve(b).key
    rec, _, reused = evaluate(a, out_dir=tmp_path)
    assert not reused
    assert rec.runtime["device"] == rec.runtime["device_name"] == "cpu"
    assert rec.runtime["threads"] == 1 and rec.runtime["batch_size"] == 16
    assert rec.runtime["precision"] == "float32"
    # batches of 16 attack the same points as one batch of 500 would: the curve is the same
    rec2, _, _ = evaluate(_cfg(device="cpu", batch_size=500), out_dir=tmp_path, force=True)
    assert rec2.robust_accuracy == rec.robust_accuracy


@pytest.fixture
def precision_flags() -> Iterator[tuple[str, str, str]]:
    """The process-wide float32 settings, restored after the test."""
    keep = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision,
            torch.backends.cudnn.rnn.fp32_precision)
    yield keep
    (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision,
     torch.backends.cudnn.rnn.fp32_precision) = keep


def test_full_precision_turns_tf32_off_for_cuda_only(precision_flags: tuple[str, str, str]) -> None:
    # torch's default runs cuDNN convolutions in TF32 on Ampere and later GPUs
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    assert full_precision("cpu") == "float32"
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"  # a CPU run changes nothing
    assert full_precision("cuda") == CUDA_PRECISION  # the flags need no GPU to be set
    assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    assert torch.backends.cudnn.rnn.fp32_precision == "ieee"
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_convolution_is_full_float32(precision_flags: tuple[str, str, str]) -> None:  # pragma: no cover - needs a GPU
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1)
    x = torch.randn(16, 64, 32, 32)
    ref = conv.double()(x.double())
    conv = conv.float()

    def error() -> float:
        got = conv.cuda()(x.cuda()).double().cpu()
        return float((got - ref).norm() / ref.norm())

    torch.backends.cudnn.conv.fp32_precision = "tf32"
    tf32 = error()
    full_precision("cuda")
    ieee = error()
    # float32 sums of 576 products: about 1e-6 (3e-5 leaves room for cuDNN's Winograd/FFT
    # algorithms); TF32 rounds both factors to 11 significant bits: about 4e-4
    assert ieee < 3e-5, ieee
    if torch.cuda.get_device_capability()[0] >= 8:  # TF32 hardware: the setting matters there
        assert tf32 > 1e-4 > ieee, (tf32, ieee)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_agrees_with_cpu(tmp_path: Path) -> None:  # pragma: no cover - needs a GPU
    cpu, _, _ = evaluate(_cfg(device="cpu"), out_dir=tmp_path / "cpu")
    gpu, _, _ = evaluate(_cfg(device="cuda"), out_dir=tmp_path / "gpu")
    assert gpu.runtime["device"].startswith("cuda")
    assert gpu.runtime["precision"] == CUDA_PRECISION and torch.backends.cudnn.conv.fp32_precision == "ieee"
    assert abs(gpu.clean_accuracy - cpu.clean_accuracy) <= 0.026  # one point of 40
    for r, v in cpu.robust_accuracy["worst"].items():
        assert abs(gpu.robust_accuracy["worst"][r] - v) <= 0.051  # two points of 40 (float round-off)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device on this machine"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("recipe", ["binary", "fine", "robust"])
def test_recipes_train_on_the_context_device(recipe: str, device: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A recipe trains its head on ``FitContext.device`` (every parameter and every loss there),
    returns its classifier there, and learns the same weights as on the CPU (CPU-seeded init)."""
    from fabench import registry
    from fabench.data.synthetic import SyntheticClusters
    from fabench.recipes import binary, fine
    from fabench.types import FitContext

    seen: list[tuple[str, ...]] = []
    for module in (binary, fine):
        real = module.descend

        def spy(parameters: list[torch.nn.Parameter], loss: object, *a: object, _real: object = real,
                **kw: object) -> list[float]:
            def loss_spy(idx: torch.Tensor) -> torch.Tensor:
                value = loss(idx)  # type: ignore[operator]
                seen.append((str(value.device.type),))
                return value

            seen.append(tuple(sorted({p.device.type for p in parameters})))
            return _real(parameters, loss_spy, *a, **kw)  # type: ignore[operator, no-any-return]

        monkeypatch.setattr(module, "descend", spy)
    task = SyntheticClusters()
    data = task.load({**task.defaults, **dict(SMALL)}, seed=0, data_dir=None, progress=lambda *a: None)
    rec = registry.recipes.get(recipe)
    params = {**rec.meta.params, "steps": 20} if recipe != "robust" else dict(rec.meta.params)
    model = rec.fit(data, params, context=FitContext(seed=0, cache_dir=str(tmp_path), device=device))
    assert {p.device.type for p in model.head.parameters()} | {b.device.type for b in model.head.buffers()} \
        == {device}
    if recipe != "robust":
        assert seen and all(s == (device,) for s in seen)
    reference = rec.fit(data, params, context=FitContext(seed=0, cache_dir=str(tmp_path), device="cpu"))
    for p, q in zip(model.head.parameters(), reference.head.parameters()):
        assert torch.allclose(p.detach().cpu(), q.detach(), rtol=1e-4, atol=1e-7)


def test_training_threads_pins_the_cpu_and_restores_the_count() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with training_threads("cpu") as n:
            assert n == TRAINING_THREADS == torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), training_threads(torch.device("cpu")):  # restored on errors too
            raise RuntimeError("training failed")
        assert torch.get_num_threads() == 2
        with training_threads("cuda") as n:  # a GPU trains on the GPU: the CPU's count is left alone
            assert n == torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_tune_allocator_is_done_once_and_recorded(tmp_path: Path) -> None:
    """glibc's malloc keeps freed blocks (no mmap/munmap per attack step), once per process, recorded."""
    import platform

    from fabench.device import tune_allocator

    first = tune_allocator()
    assert tune_allocator() == first  # once per process
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert first.startswith("glibc: mmap threshold 32 MiB")
    rec, _, _ = evaluate(RunConfig(task="synthetic", recipe="binary", attacks=["analytic"], overrides=SMALL,
                                   threads=1), out_dir=tmp_path)
    assert rec.runtime["allocator"] == first


def test_cpu_twin_is_the_model_itself_on_the_cpu() -> None:
    from fabench.models.classifier import Classifier, cpu_twin
    from fabench.models.heads import BinaryHead

    model = Classifier(BinaryHead(8, m=2))
    assert cpu_twin(model) is model


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cpu_twin_is_one_copy_per_model_state() -> None:  # pragma: no cover - needs a GPU
    """Elsewhere than the CPU: one CPU copy per model and state (a changed weight gives a new one)."""
    from fabench.models.classifier import Classifier, cpu_twin
    from fabench.models.heads import BinaryHead

    model = Classifier(BinaryHead(8, m=2, init_std=1.0)).cuda()
    twin = cpu_twin(model)
    assert twin is not model and twin is cpu_twin(model)
    assert all(p.device.type == "cpu" for p in twin.parameters())
    assert torch.equal(twin.head.weight, model.head.weight.cpu())
    with torch.no_grad():
        model.head.weight.add_(1.0)
    again = cpu_twin(model)
    assert again is not twin and torch.equal(again.head.weight, model.head.weight.cpu())


def test_certificate_reuses_the_exact_attacks_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The certificate asks ``exact`` for the batches the attack solved (whatever ``--batch-size``),
    on the same model object (the CPU twin on a GPU), so the region analysis runs once per point."""
    from fabench import evaluation
    from fabench.attacks import exact

    calls = {"regions": 0, "in_bracket": 0}
    real_regions, real_bracket = exact._region_min, evaluation.bracket

    def regions(*a: object, **kw: object) -> object:
        calls["regions"] += 1
        return real_regions(*a, **kw)  # type: ignore[arg-type]

    def bracket(*a: object, **kw: object) -> object:
        before = calls["regions"]
        out = real_bracket(*a, **kw)  # type: ignore[arg-type]
        calls["in_bracket"] += calls["regions"] - before
        return out

    monkeypatch.setattr(exact, "_region_min", regions)
    monkeypatch.setattr(evaluation, "bracket", bracket)
    exact._MEMO.clear()
    rec, _, _ = evaluate(RunConfig(task="synthetic", recipe="binary", attacks=("exact",), radii=(0.0, 4.0, 8.0),
                                   overrides=SMALL, batch_size=16), out_dir=tmp_path)
    assert rec.certified["method"] == "crown+exact-regions"
    assert calls["regions"] >= 3  # three batches of 16, 16 and 8 points, each solved by the attack
    assert calls["in_bracket"] == 0  # ... and none again by the certificate


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("recipe", ["binary", "fine", "robust"])
def test_default_protocol_on_cuda_agrees_with_cpu(recipe: str, tmp_path: Path) -> None:  # pragma: no cover
    """Every default attack (exact's polish and the certificate included) on the GPU: the same
    curve as on the CPU up to float round-off and the attacks' random starts (drawn on the CPU)."""
    radii = tuple(float(r) for r in range(0, 13))

    def run(device: str) -> Record:
        cfg = RunConfig(task="synthetic", recipe=recipe, radii=radii, overrides=SMALL, device=device)
        return evaluate(cfg, out_dir=tmp_path / device)[0]

    cpu, gpu = run("cpu"), run("cuda")
    assert gpu.runtime["device"].startswith("cuda") and gpu.key == cpu.key
    assert abs(gpu.clean_accuracy - cpu.clean_accuracy) <= 0.026  # one point of 40
    for r, v in cpu.robust_accuracy["worst"].items():
        assert abs(gpu.robust_accuracy["worst"][r] - v) <= 0.051, r  # two points of 40
    assert gpu.certified["method"] == cpu.certified["method"]


def test_describe_device_names_the_gpu() -> None:
    from fabench.device import describe_device

    assert describe_device("cpu") == "cpu" and describe_device(torch.device("cpu")) == "cpu"
    # the thread count (a backbone's cache entry: where it was trained) is shown on a CPU only
    assert describe_device("cpu", threads=1) == "cpu (1 thread)" and describe_device("cpu", threads=2) == "cpu (2 threads)"
    assert describe_device("meta", threads=1) == "meta"
    if torch.cuda.is_available():  # the name is the driver's (e.g. cuda:0 (NVIDIA H100 80GB HBM3))
        assert describe_device("cuda") == f"cuda:{torch.cuda.current_device()} ({torch.cuda.get_device_name()})"


def test_threads_are_bounded_by_the_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from fabench.device import check_threads, max_threads, set_threads

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert max_threads() == 8 and check_threads(8) == 8 and check_threads(0) == 0
    for bad in (9, 1000, 65536, 2**64, 99999999999999999999):
        with pytest.raises(ConfigError, match=r"at most 8 \(4 x the 2 CPUs here\)"):
            check_threads(bad)
        with pytest.raises(ConfigError, match="at most 8"):  # the API refuses before torch is asked
            set_threads(bad)
    with pytest.raises(ConfigError, match=">= 0"):
        set_threads(-1)


def test_a_bad_device_from_the_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FABENCH_DEVICE", "tpu")
    with pytest.raises(ConfigError, match=r"^FABENCH_DEVICE 'tpu'"):
        device_spec(None)
    with pytest.raises(ConfigError, match=r"^--device 'gpu'"):
        device_spec("gpu")
