#!/usr/bin/env python
"""Time each stage of the fabench protocol: data, training (backbone, features, head), each attack.

Speed is measured here, never asserted in tests. Every run is fresh (``force``) and written to a
temporary directory, so nothing is reused from earlier runs except cached backbones/features
when ``--cache-dir`` points at a warm cache (pass a fresh one to time backbone training).

    python scripts/benchmark.py                                   # the paper's synthetic setting
    python scripts/benchmark.py --task mnist5v5 --n-eval 1000 --data-dir ../shared/data-copy
    python scripts/benchmark.py --task cifar5v5 --recipes fine,binary --data-dir ../shared/data-copy

On real-image tasks the first recipe's rows include the backbone's training (``train: backbone
cnn (train)``) and feature extraction; later recipes load both from the cache (``(load)``,
``load features``); ``train: head`` is the rest of the training time (the head itself).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", category=DeprecationWarning)

import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

from fabench.evaluation import DEFAULT_ATTACKS, RunConfig, evaluate  # noqa: E402
from fabench.params import parse_assignments  # noqa: E402
from fabench.progress import ProgressBar  # noqa: E402

OLD_DEFAULT = ("analytic", "pairwise", "pgd", "deepfool")  # the default protocol before `exact`


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="synthetic")
    p.add_argument("--recipes", default="binary,fine,robust")
    p.add_argument("--attacks", default=",".join(DEFAULT_ATTACKS))
    p.add_argument("--compare", default=",".join(OLD_DEFAULT),
                   help="a second attack list timed beside --attacks (default: the protocol before exact); '' for none")
    p.add_argument("--n-eval", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data-dir")
    p.add_argument("--cache-dir", help="backbone/feature cache (default: a fresh temporary directory)")
    args = p.parse_args()

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), python {platform.python_version()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or str(Path(tmp) / "cache")
        lists = [("default", args.attacks)] + ([("compare", args.compare)] if args.compare else [])
        totals: dict[str, float] = {}
        for label, attacks in lists:
            for recipe in [r for r in args.recipes.split(",") if r]:
                names = [a for a in attacks.split(",") if a]
                cfg = RunConfig(task=args.task, recipe=recipe, seed=args.seed,
                                attacks=tuple(names) if tuple(names) == DEFAULT_ATTACKS else names, n_eval=args.n_eval,
                                overrides=parse_assignments(args.set), data_dir=args.data_dir, cache_dir=cache)
                start = time.perf_counter()
                rec, _, _ = evaluate(cfg, out_dir=Path(tmp) / label, force=True, progress=ProgressBar(sys.stderr))
                total = time.perf_counter() - start
                for stage, seconds in rec.timings.items():
                    rows.append([label, recipe, stage, seconds])
                parts = [v for k, v in rec.timings.items() if k.startswith("train: ")]
                if parts and "train" in rec.timings:
                    rows.append([label, recipe, "train: head", rec.timings["train"] - sum(parts)])
                rows.append([label, recipe, "total (wall)", total])
                protocol = sum(v for k, v in rec.timings.items() if k.startswith("attack ") or k == "certify")
                rows.append([label, recipe, "protocol (attacks + certify)", protocol])
                totals[label] = totals.get(label, 0.0) + protocol
    print(f"task {args.task}, {rec.n_eval} test points attacked; default = {args.attacks}"
          + (f"; compare = {args.compare}" if args.compare else ""))
    print(tabulate(rows, headers=["protocol", "recipe", "stage", "seconds"], floatfmt=".2f", tablefmt="github"))
    print("protocol time over all recipes: " + ", ".join(f"{k} {v:.1f}s" for k, v in totals.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
