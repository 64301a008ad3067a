#!/usr/bin/env python
"""Time the protocol's attacks against a plain foolbox loop on the same trained model.

For each recipe (synthetic task at the paper's setting by default: k=10, d=3072, 1000 test points,
radii 0..58 step 2) the model is trained once, then, interleaved and repeated ``--repeats`` times
(median reported):

* ``full``: :func:`fabench.protocol.run_protocol` with ``mode="full"`` and the chosen PGD search;
* ``fast``: ``mode="fast"`` (later attacks only see what earlier ones left unbroken);
* ``foolbox``: a plain loop, foolbox L2PGD at every radius on every point + L2DeepFool, same
  settings (steps, step size, random start), no fabench logic.

Per attack: seconds; per mode: the worst-case robust accuracy curve; the largest difference of
each curve from the ``full``/``grid`` (exhaustive) one; peak resident memory (getrusage).

    OMP_NUM_THREADS=1 python scripts/benchmark_attacks.py                      # paper setting
    OMP_NUM_THREADS=1 python scripts/benchmark_attacks.py --n-test 200 --repeats 1   # quick
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import time
import warnings
from typing import Any

warnings.filterwarnings("ignore", category=DeprecationWarning)

import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

from fabench import registry  # noqa: E402
from fabench.attacks.base import is_adversarial, perturbation_norms  # noqa: E402
from fabench.attacks.foolbox_attacks import import_foolbox  # noqa: E402
from fabench.protocol import AttackSpec, run_protocol  # noqa: E402
from fabench.types import FitContext  # noqa: E402

ATTACKS = ("analytic", "pairwise", "pgd", "deepfool")


def specs(pgd_search: str) -> list[AttackSpec]:
    out = []
    for name in ATTACKS:
        a = registry.attacks.get(name)
        params = dict(a.meta.params)
        if name == "pgd":
            params["search"] = pgd_search
        out.append(AttackSpec(name, a, params))
    return out


def plain_foolbox(model: Any, data: Any, radii: tuple[float, ...]) -> tuple[dict[str, float], torch.Tensor]:
    """L2PGD at every radius on every point, and L2DeepFool: the reference loop, no fabench logic."""
    fb = import_foolbox()
    pgd_p, df_p = registry.attacks.get("pgd").meta.params, registry.attacks.get("deepfool").meta.params
    x, y = data.x_test, data.y_test
    fmodel = fb.PyTorchModel(model.eval(), bounds=data.bounds, device="cpu")
    times: dict[str, float] = {}
    broken = torch.zeros(len(radii), len(x), dtype=torch.bool)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    pgd = fb.attacks.L2PGD(rel_stepsize=pgd_p["rel_stepsize"], steps=pgd_p["steps"], random_start=True)
    for i, eps in enumerate(radii):
        _, adv, _ = pgd(fmodel, x, fb.criteria.Misclassification(y), epsilons=float(eps))
        broken[i] = is_adversarial(model, adv, y)
    times["pgd"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    df = fb.attacks.L2DeepFoolAttack(steps=df_p["steps"], candidates=2, overshoot=df_p["overshoot"], loss="logits")
    _, adv, _ = df(fmodel, x, fb.criteria.Misclassification(y), epsilons=None)
    d = torch.where(is_adversarial(model, adv, y), perturbation_norms(adv, x), torch.tensor(float("inf")))
    broken |= d[None, :] <= torch.tensor(radii)[:, None] * (1 + 1e-5)
    times["deepfool"] = time.perf_counter() - t0
    broken |= ~model.correct(x, y)[None, :]
    return times, broken


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default="binary,fine")
    p.add_argument("--d", type=int, default=3072)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--runs", default="full/grid,full/bisect,fast/bisect,foolbox",
                   help="comma list of MODE/PGD_SEARCH and 'foolbox'")
    args = p.parse_args()

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}), python {platform.python_version()}")
    task = registry.tasks.get("synthetic")
    data = task.load({**task.meta.params, "d": args.d, "n_test": args.n_test}, seed=args.seed)
    radii = tuple(float(r) for r in data.radii)
    runs = [r for r in args.runs.split(",") if r]
    for recipe_name in [r for r in args.recipes.split(",") if r]:
        recipe = registry.recipes.get(recipe_name)
        t0 = time.perf_counter()
        model = recipe.fit(data, dict(recipe.meta.params), context=FitContext(seed=args.seed)).eval()
        print(f"\nrecipe {recipe_name}: trained in {time.perf_counter() - t0:.1f} s; d={args.d}, "
              f"{len(data.x_test)} test points, {len(radii)} radii {radii[0]:g}..{radii[-1]:g}")
        times: dict[str, dict[str, list[float]]] = {r: {} for r in runs}
        curves: dict[str, torch.Tensor] = {}
        for _ in range(args.repeats):  # interleaved: every run once per repeat
            for run in runs:
                if run == "foolbox":
                    t, broken = plain_foolbox(model, data, radii)
                else:
                    mode, search = run.split("/")
                    t0 = time.perf_counter()
                    res = run_protocol(model, data, specs(search), radii=radii, seed=args.seed, mode=mode)
                    t = {k.removeprefix("attack "): v for k, v in res.timings.items()}
                    t["total"] = time.perf_counter() - t0
                    broken = res.worst_broken
                for k, v in t.items():
                    times[run].setdefault(k, []).append(v)
                if run == "foolbox":
                    times[run].setdefault("total", []).append(sum(t.values()))
                curves[run] = (~broken).float().mean(dim=1)
        names = list(ATTACKS) + ["total"]
        rows = [[n] + [f"{statistics.median(times[r][n]):.2f}" if n in times[r] else "-" for r in runs]
                for n in names]
        print(tabulate(rows, headers=["seconds (median)"] + runs, tablefmt="github"))
        ref = curves.get("full/grid", next(iter(curves.values())))
        rows = [[f"{r:g}"] + [f"{float(curves[k][i]):.3f}" for k in runs] for i, r in enumerate(radii)]
        rows.append(["max diff vs " + ("full/grid" if "full/grid" in curves else runs[0])]
                    + [f"{float((curves[k] - ref).max()):+.3f}" for k in runs])
        print(tabulate(rows, headers=["radius: worst-case robust acc"] + runs, tablefmt="github"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak resident memory: {peak:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
