#!/usr/bin/env python
"""How fast can this machine take the input gradient every attack step needs, and what does it cost?

For each backbone of the shipped real-data tasks (the architecture and width the task's defaults
give, randomly initialised: the cost does not depend on the weights), in its inference form (what
the evaluation attacks, :func:`fabench.models.backbones.inference_form`) under a 2-logit linear head:

* FLOPs of one input gradient (forward + backward to the input) per image (torch's FLOP counter);
* milliseconds per image at several batch sizes, interleaved rounds, median; the achieved GFLOP/s
  against this machine's float32 matrix-product peak (a 2048 x 2048 ``matmul``, best of 10);
* the batch :func:`fabench.device.attack_batch_size` chooses on this device, from the model's
  activation footprint;
* how many gradient steps per point a budget allows: ``--budget-s`` seconds for ``--points``
  points (the issue's CPU target for MNIST: 30 s for 10 000 points), at the measured speed and at
  the matrix-product peak. The default protocol takes thousands per point (APGD alone 100 steps x 4
  restarts per probed cell).

    OMP_NUM_THREADS=2 .venv/bin/python scripts/gradient_throughput.py --threads 2
    .venv/bin/python scripts/gradient_throughput.py --models cifar5v5 --batches 64,128,256,500
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings

warnings.filterwarnings("ignore", category=DeprecationWarning)

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from fabench.device import (activation_footprint, attack_batch_size, full_precision, resolve_device,  # noqa: E402
                            set_threads)
from fabench.evaluation import RunConfig, resolve  # noqa: E402
from fabench.models.backbones import inference_form  # noqa: E402
from fabench.models.cnn import resnet18_cifar, small_cnn  # noqa: E402

#: Each model: the task whose defaults give its architecture, and its input shape.
MODELS: dict[str, tuple[str, tuple[int, ...]]] = {
    "mnist5v5": ("mnist5v5", (1, 28, 28)),
    "cifar5v5": ("cifar5v5", (3, 32, 32)),
    "resnet18": ("cifar5v5-resnet18", (3, 32, 32)),
}


def build(name: str) -> tuple[torch.nn.Module, tuple[int, ...], str]:
    task, shape = MODELS[name]
    p = resolve(RunConfig(task=task, recipe="binary")).recipe_params
    torch.manual_seed(0)
    if p["backbone"] == "cnn":
        net = small_cnn(shape, 10, width=int(p["backbone_width"]))
        what = f"cnn width {p['backbone_width']}"
    else:
        net = resnet18_cifar(shape, 10)
        what = str(p["backbone"])
    model = torch.nn.Sequential(net.extractor(), torch.nn.Linear(net.feature_dim, 2)).eval()
    for q in model.parameters():
        q.requires_grad_(False)
    return model, shape, what


def gradient(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    xx = x.clone().requires_grad_(True)
    out = model(xx)
    (g,) = torch.autograd.grad(out[:, 1].sum() - out[:, 0].sum(), xx)
    return g


def gradient_flops(model: torch.nn.Module, x: torch.Tensor) -> float:
    """FLOPs per image of one input gradient (``autograd.grad`` is not counted by torch's counter,
    so the same gradient is taken by ``backward`` on a leaf)."""
    xx = x.clone().requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        out = model(xx)
        (out[:, 1].sum() - out[:, 0].sum()).backward()
    return counter.get_total_flops() / len(x)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so the wall clock measures it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device) -> float:
    a, b = torch.randn(2048, 2048, device=device), torch.randn(2048, 2048, device=device)
    best = float("inf")
    for i in range(13):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        if i >= 3:
            best = min(best, time.perf_counter() - t)
    return 2 * 2048**3 / best / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    ap.add_argument("--batches", default="64,128,256,500,1000", help="batch sizes to time")
    ap.add_argument("--images", type=int, default=1000, help="images per timed round (the ResNet: a quarter)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--budget-s", type=float, default=30.0)
    ap.add_argument("--points", type=int, default=10_000)
    args = ap.parse_args()
    device = resolve_device(args.device)
    threads = set_threads(args.threads)
    precision = full_precision(device)  # as fabench runs: on CUDA, TF32 off
    names = args.models.split(",")
    if unknown := [n for n in names if n not in MODELS]:
        ap.error(f"unknown model(s) {', '.join(unknown)}: choose from {', '.join(MODELS)}")
    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        ap.error(f"--batches {args.batches!r}: expected comma-separated integers")
    if min(batches) < 1:
        ap.error("--batches: every batch must be >= 1")
    peak = matmul_peak(device)
    print(f"{platform.processor() or platform.machine()}, {device} ({precision}), {threads} threads, "
          f"torch {torch.__version__}; "
          f"float32 matmul peak {peak:.0f} GFLOP/s", flush=True)
    rows = []
    for name in names:
        model, shape, what = build(name)
        n_img = args.images if name != "resnet18" else max(args.images // 4, max(batches))
        x = torch.rand(max(n_img, max(batches)), *shape)
        fast, how = inference_form(model, x[:64], device=device)
        fast = fast.to(device)
        xd = x.to(device)
        flops = gradient_flops(fast, xd[:8])
        chosen = attack_batch_size(device, xd[0].numel(), footprint=activation_footprint(fast, xd[:1]))
        times: dict[int, list[float]] = {b: [] for b in batches}
        for _ in range(args.rounds):
            for b in batches:
                gradient(fast, xd[:b])  # warm
                sync(device)
                t = time.perf_counter()
                for b0 in range(0, n_img, b):
                    gradient(fast, xd[b0 : b0 + b])
                sync(device)
                times[b].append((time.perf_counter() - t) / (len(range(0, n_img, b)) * b))
        for b in batches:
            per = statistics.median(times[b])
            rows.append([name, what, f"{flops / 1e6:.1f}", b, "<-" if b == chosen else "", f"{per * 1e3:.3f}",
                         f"{flops / per / 1e9:.0f}", f"{100 * flops / per / 1e9 / peak:.0f}%"])
        best = min(statistics.median(v) for v in times.values())
        steps_now = args.budget_s / (args.points * best)
        steps_peak = args.budget_s / (args.points * flops / (peak * 1e9))
        print(f"{name} ({what}; {how}): fabench's batch here {chosen}; {args.budget_s:g} s for {args.points} points "
              f"allow {steps_now:.0f} gradient steps per point at the best measured speed, "
              f"{steps_peak:.0f} at the matmul peak", flush=True)
    table = [["model", "backbone", "MFLOP/img", "batch", "chosen", "ms/img", "GFLOP/s", "of peak"], *rows]
    widths = [max(len(str(r[i])) for r in table) for i in range(len(table[0]))]
    for r in table:  # plain text: no tabulate needed on a bare GPU machine
        print("  ".join(str(v).rjust(w) for v, w in zip(r, widths)))


if __name__ == "__main__":
    main()
