#!/usr/bin/env python
"""Time each stage of the fabench protocol: data, training (backbone, features, head), each attack.

Speed is measured here, never asserted in tests. Every run is fresh (``force``), in its own
subprocess (so its peak memory, the child's ``ru_maxrss``, is its own), and written to a temporary
directory, so nothing is reused from earlier runs except cached backbones/features when
``--cache-dir`` points at a warm cache (pass a fresh one to time backbone training). Each stage is
the median of ``--repeat`` runs (default 3).

    python scripts/benchmark.py                                   # the paper's synthetic setting
    python scripts/benchmark.py --protocol full,fast --n-eval 200 # both protocol modes
    python scripts/benchmark.py --task mnist5v5 --n-eval 1000 --data-dir ../shared/data-copy
    python scripts/benchmark.py --task cifar5v5 --recipes fine,binary --data-dir ../shared/data-copy
    python scripts/benchmark.py --foolbox ''                      # no plain-foolbox side-by-side
    python scripts/benchmark.py --foolbox-allocator default       # foolbox with glibc's default malloc

On real-image tasks the first recipe's rows include the backbone's training (``train: backbone
cnn (train)``) and feature extraction; later recipes load both from the cache (``(load)``,
``load features``); ``train: head`` is the rest of the training time (the head itself).

**Side by side with plain foolbox** (``--foolbox RECIPES``, default: every recipe): on the same
model and the same attacked points, foolbox's ``L2PGD`` (same ``steps`` and ``rel_stepsize`` as
fabench's ``pgd``, random start) run at every radius on every point, as a plain evaluation loop
would. Its process gets the same malloc tuning as ``evaluate`` (:func:`fabench.device.tune_allocator`)
unless ``--foolbox-allocator default``. Reported: its time, the speed ratio against fabench's
``pgd`` and against fabench's whole protocol, and whether fabench's worst-case curve is equal or
lower at every radius.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore", category=DeprecationWarning)

from fabench.evaluation import DEFAULT_ATTACKS  # noqa: E402 (after the warning filter)

OLD_DEFAULT = ("analytic", "pairwise", "pgd", "deepfool")  # the default protocol before `exact`


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# -- workers (one per run, in a subprocess) ------------------------------------------------------
def _config(spec: dict[str, Any]) -> Any:
    from fabench.evaluation import DEFAULT_ATTACKS, RunConfig
    from fabench.params import parse_assignments

    names = tuple(spec["attacks"])
    return RunConfig(task=spec["task"], recipe=spec["recipe"], seed=spec["seed"],
                     attacks=names if names == DEFAULT_ATTACKS else list(names), n_eval=spec["n_eval"],
                     overrides=parse_assignments(spec["set"]), data_dir=spec["data_dir"],
                     cache_dir=spec["cache_dir"], protocol=spec["protocol"], device=spec["device"])


def worker_evaluate(spec: dict[str, Any]) -> dict[str, Any]:
    """One fresh evaluation: its stage timings, wall time, runtime and worst-case curve."""
    import torch

    from fabench.evaluation import evaluate

    cfg = _config(spec)
    start = time.perf_counter()
    rec, _, _ = evaluate(cfg, out_dir=Path(spec["out"]), force=True)
    wall = time.perf_counter() - start
    return {"timings": dict(rec.timings), "wall": wall, "n_eval": rec.n_eval, "runtime": dict(rec.runtime),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "worst": {str(r): v for r, v in rec.robust_curve("worst").items()}}


def worker_foolbox(spec: dict[str, Any]) -> dict[str, Any]:
    """Plain foolbox: ``L2PGD`` at every radius on every attacked point of the same model."""
    import torch

    from fabench import registry
    from fabench.attacks.foolbox_attacks import import_foolbox
    from fabench.device import full_precision, resolve_device, tune_allocator
    from fabench.evaluation import resolve
    from fabench.protocol import select_points
    from fabench.types import FitContext

    cfg = _config(spec)
    res = resolve(cfg)
    device = resolve_device(cfg.device)
    full_precision(device)  # as fabench's own runs (no TF32 on a GPU)
    allocator = tune_allocator() if spec.get("allocator", "tuned") == "tuned" else "default"
    data = res.task.load(res.task_params, seed=cfg.seed, data_dir=cfg.data_dir)
    model = res.recipe.fit(data, res.recipe_params, context=FitContext(
        seed=cfg.seed, cache_dir=cfg.cache_dir, data_dir=cfg.data_dir, device=str(device)))
    model.cpu().eval().to(device)
    pgd = next((a.params for a in res.attacks if a.name == "pgd"), registry.attacks.get("pgd").meta.params)
    idx = select_points(len(data.x_test), cfg.n_eval, cfg.seed)
    x, y = data.x_test[idx].to(device), data.y_test[idx].to(device)
    fb = import_foolbox()
    fmodel = fb.PyTorchModel(model, bounds=data.bounds, device=device)
    attack = fb.attacks.L2PGD(steps=int(pgd["steps"]), rel_stepsize=float(pgd["rel_stepsize"]), random_start=True)
    curve: dict[str, float] = {}
    start = time.perf_counter()
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    torch.manual_seed(cfg.seed)
    for r in res.radii:
        robust = correct.clone()
        if r > 0:
            _, adv, _ = attack(fmodel, x, fb.criteria.Misclassification(y), epsilons=float(r))
            with torch.no_grad():
                fooled = model(adv).argmax(1) != y
            robust &= ~(fooled & ((adv - x).flatten(1).norm(dim=1) <= float(r) * (1 + 1e-5)))
        curve[str(float(r))] = float(robust.float().mean())
    return {"seconds": time.perf_counter() - start, "curve": curve, "n": len(idx),
            "steps": int(pgd["steps"]), "rel_stepsize": float(pgd["rel_stepsize"]), "allocator": allocator}


def run_worker(kind: str, spec: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """Run one worker in a subprocess; returns its JSON answer and its peak RSS in MiB
    (``ru_maxrss`` of that child alone, from ``os.wait4``)."""
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen([sys.executable, __file__, "--worker", kind, json.dumps(spec)],
                                stdout=out, stderr=subprocess.DEVNULL if spec.get("quiet") else None)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise SystemExit(f"benchmark: {kind} worker failed (exit {proc.returncode}) on {spec['recipe']}")
    peak_mib = usage.ru_maxrss / 1024 if sys.platform != "darwin" else usage.ru_maxrss / 2**20
    return json.loads(text.strip().splitlines()[-1]), peak_mib


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def main() -> int:
    from tabulate import tabulate

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="synthetic")
    p.add_argument("--recipes", default="binary,fine,robust")
    p.add_argument("--attacks", default=",".join(DEFAULT_ATTACKS), help="default: the default protocol")
    p.add_argument("--compare", default=",".join(OLD_DEFAULT),
                   help="a second attack list timed beside --attacks (default: the protocol before exact); '' for none")
    p.add_argument("--protocol", default="full", help="protocol modes to time: full, fast or full,fast")
    p.add_argument("--foolbox", default=None,
                   help="recipes to compare with a plain foolbox L2PGD loop (default: all of --recipes; '' for none)")
    p.add_argument("--foolbox-allocator", default="tuned", choices=("tuned", "default"),
                   help="the plain foolbox loop's malloc: fabench's (tuned, as evaluate sets it: the ratio then "
                        "credits the algorithm only) or glibc's default (a plain script's)")
    p.add_argument("--repeat", type=int, default=3, help="runs per configuration; stages report the median")
    p.add_argument("--device", default="cpu", help="as evaluate's --device (auto, cpu, cuda[:N], mps)")
    p.add_argument("--n-eval", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data-dir")
    p.add_argument("--cache-dir", help="backbone/feature cache (default: a fresh temporary directory)")
    p.add_argument("--verbose", action="store_true", help="show the workers' progress bars")
    args = p.parse_args()
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    modes = [m for m in args.protocol.split(",") if m]
    if not modes or any(m not in ("full", "fast") for m in modes):
        p.error("--protocol takes full, fast or full,fast")
    recipes = [r for r in args.recipes.split(",") if r]
    versus = recipes if args.foolbox is None else [r for r in args.foolbox.split(",") if r]

    rows: list[list[Any]] = []
    totals: dict[str, float] = {}
    fabench_times: dict[tuple[str, str], dict[str, float]] = {}
    curves: dict[tuple[str, str], dict[str, float]] = {}
    info: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or str(Path(tmp) / "cache")
        lists = [("default", args.attacks)] + ([("compare", args.compare)] if args.compare else [])
        for mode in modes:
            for label, attacks in lists:
                for recipe in recipes:
                    spec = {"task": args.task, "recipe": recipe, "seed": args.seed, "n_eval": args.n_eval,
                            "attacks": [a for a in attacks.split(",") if a], "set": args.set,
                            "data_dir": args.data_dir, "cache_dir": cache, "protocol": mode,
                            "device": args.device, "out": str(Path(tmp) / label), "quiet": not args.verbose}
                    runs = [run_worker("evaluate", spec) for _ in range(args.repeat)]
                    answers = [a for a, _ in runs]
                    info = answers[-1]
                    stages: dict[str, list[float]] = {}
                    for a in answers:
                        t = a["timings"]
                        parts = [v for k, v in t.items() if k.startswith("train: ")]
                        if parts and "train" in t:
                            t["train: head"] = t["train"] - sum(parts)
                        t["protocol (attacks + certify)"] = sum(
                            v for k, v in t.items() if k.startswith(("attack ", "certify")))
                        t["total (wall)"] = a["wall"]
                        for k, v in t.items():
                            stages.setdefault(k, []).append(float(v))
                    for stage, values in stages.items():
                        rows.append([mode, label, recipe, stage, median(values), min(values), max(values)])
                    peak = max(m for _, m in runs)
                    rows.append([mode, label, recipe, "peak RSS (MiB)", peak, min(m for _, m in runs), peak])
                    proto = median(stages["protocol (attacks + certify)"])
                    totals[f"{mode}/{label}"] = totals.get(f"{mode}/{label}", 0.0) + proto
                    if label == "default":
                        fabench_times[(mode, recipe)] = {k: median(v) for k, v in stages.items()}
                        curves[(mode, recipe)] = answers[-1]["worst"]
        plain: dict[str, tuple[dict[str, Any], float, float]] = {}
        for recipe in versus:
            spec = {"task": args.task, "recipe": recipe, "seed": args.seed, "n_eval": args.n_eval,
                    "attacks": [a for a in args.attacks.split(",") if a], "set": args.set,
                    "data_dir": args.data_dir, "cache_dir": cache, "protocol": modes[0], "device": args.device,
                    "quiet": not args.verbose, "allocator": args.foolbox_allocator}
            runs = [run_worker("foolbox", spec) for _ in range(args.repeat)]
            plain[recipe] = (runs[-1][0], median([a["seconds"] for a, _ in runs]), max(m for _, m in runs))

    runtime = info.get("runtime", {})
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; python {platform.python_version()}, "
          f"torch {info.get('torch')} ({runtime.get('threads', info.get('torch_threads'))} threads), "
          f"device {runtime.get('device_name', runtime.get('device', args.device))}, batch size {runtime.get('batch_size')}")
    print(f"task {args.task}, {info.get('n_eval')} test points attacked; protocol mode(s) {', '.join(modes)}; "
          f"default = {args.attacks}" + (f"; compare = {args.compare}" if args.compare else "")
          + f"; median (min, max) of {args.repeat} run(s), each in a fresh subprocess")
    print(tabulate(rows, headers=["mode", "attacks", "recipe", "stage", "median", "min", "max"],
                   floatfmt=".2f", tablefmt="github"))
    print("protocol time over all recipes (medians): " + ", ".join(f"{k} {v:.1f}s" for k, v in totals.items()))
    if len(modes) > 1:
        for recipe in recipes:
            a, b = curves.get((modes[0], recipe), {}), curves.get((modes[1], recipe), {})
            diffs = {r: b[r] - a[r] for r in a if r in b}
            off = {r: round(d, 6) for r, d in diffs.items() if abs(d) > 1e-12}
            print(f"worst case, {recipe}: {modes[1]} " + ("equals " if not off else f"differs from (at {off}) ")
                  + f"{modes[0]} at every radius ({len(diffs)} radii)")
    if plain:
        print()
        print(f"plain foolbox: L2PGD at every radius on every point (random start), same model and points, "
              f"mode {modes[0]} for fabench; foolbox's allocator: {next(iter(plain.values()))[0]['allocator']}")
        vs = []
        for recipe, (ans, seconds, peak) in plain.items():
            fab = fabench_times.get((modes[0], recipe), {})
            worst = curves.get((modes[0], recipe), {})
            diffs = [worst[r] - ans["curve"][r] for r in ans["curve"] if r in worst]
            lower = all(d <= 1e-12 for d in diffs) and len(diffs) == len(ans["curve"])
            pgd_s = fab.get("attack pgd", float("nan"))
            proto_s = fab.get("protocol (attacks + certify)", float("nan"))
            vs.append([recipe, f"{ans['steps']} x {ans['rel_stepsize']}", seconds, pgd_s, seconds / pgd_s,
                       proto_s, seconds / proto_s, peak, "yes" if lower else "NO",
                       max(diffs, default=float("nan")), min(diffs, default=float("nan"))])
        print(tabulate(vs, headers=["recipe", "steps x rel", "foolbox s", "fabench pgd s", "ratio (pgd)",
                                    "fabench protocol s", "ratio (protocol)", "foolbox peak MiB",
                                    "worst <= foolbox everywhere", "max(worst - fb)", "min(worst - fb)"],
                       floatfmt=".2f", tablefmt="github"))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        kind, spec = sys.argv[2], json.loads(sys.argv[3])
        answer = worker_evaluate(spec) if kind == "evaluate" else worker_foolbox(spec)
        print(json.dumps(answer))
        raise SystemExit(0)
    raise SystemExit(main())
