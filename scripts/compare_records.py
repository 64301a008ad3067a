"""Compare the records of two result directories, configuration by configuration.

Records are paired by task, recipe, seed and key (the key is the configuration's hash: device,
threads and batch size are not in it, so a CPU and a GPU run of one configuration pair up). For
each pair it prints how far the measured numbers are apart: clean accuracy and the worst-case
robust accuracy at every radius (in test points), the median minimal distance, the
feature-averaging score and the cosine matrix. Used to check that a run on another device, or
after a change meant to be bit-identical, gives the same results::

    python scripts/compare_records.py leaderboard/records /tmp/gpu-results
    python scripts/compare_records.py leaderboard/records /tmp/gpu-results --tol-points 2

Exit status 1 if a pair differs by more than ``--tol-points`` test points at some radius (or in
clean accuracy), or by more than ``--tol-distance`` (relative) in the median distance; 2 if a
directory is missing or no record has a reference (nothing compared).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from tabulate import tabulate

from fabench.records import Record, iter_records


def _index(root: Path) -> dict[tuple[str, str, int, str], Record]:
    return {(r.task, r.recipe, r.seed, r.key): r for _, r in iter_records(root)}


def _max_abs(a: Any, b: Any) -> float:
    if a is None or b is None:
        return 0.0 if a is b else math.inf
    flat_a = [float(v) for row in a for v in row]
    flat_b = [float(v) for row in b for v in row]
    if len(flat_a) != len(flat_b):
        return math.inf
    return max((abs(x - y) for x, y in zip(flat_a, flat_b)), default=0.0)


def _backbone(a: Record, b: Record) -> str:
    """Whether both records attacked the same trained backbone (its test accuracy and training
    losses, which the cache stores with the weights), and where each was trained."""
    ba, bb = (r.model_info.get("backbone") or {} for r in (a, b))
    if "epoch_losses" not in ba and "epoch_losses" not in bb:
        return "-"
    same = ba.get("epoch_losses") == bb.get("epoch_losses") and ba.get("test_accuracy") == bb.get("test_accuracy")
    where = f" ({ba.get('trained_on') or '?'} / {bb.get('trained_on') or '?'})"
    return ("same" if same else "differs") + where


def compare(a: Record, b: Record) -> dict[str, Any]:
    """How far ``b``'s numbers are from ``a``'s (same configuration)."""
    n = a.n_eval
    wa, wb = a.robust_accuracy["worst"], b.robust_accuracy["worst"]
    radius_points = {r: round(abs(wa[r] - wb[r]) * n) for r in wa}
    worst_r = max(radius_points, key=lambda r: radius_points[r]) if radius_points else ""
    ma, mb = a.median_min_distance, b.median_min_distance
    if ma is not None and mb is not None and ma and math.isfinite(ma) and math.isfinite(mb):
        rel = abs(ma - mb) / abs(ma)
    else:  # no distance (None), zero or infinite: equal or not
        rel = 0.0 if ma == mb else math.inf
    return {
        "task": a.task, "recipe": a.recipe, "seed": a.seed, "n": n,
        "devices": f"{a.runtime.get('device', '?')} / {b.runtime.get('device', '?')}",
        "backbone": _backbone(a, b),
        "clean (points)": round(abs(a.clean_accuracy - b.clean_accuracy) * n),
        "worst, max over radii (points)": radius_points.get(worst_r, 0),
        "at radius": worst_r,
        "radii differing": sum(1 for v in radius_points.values() if v),
        "median distance (rel.)": rel,
        "fa_score": abs((a.fa_score or 0.0) - (b.fa_score or 0.0)),
        "cosines (max abs)": _max_abs(a.cosine_matrix.get("values"), b.cosine_matrix.get("values")),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reference", type=Path, help="result directory of the reference run (e.g. the CPU's)")
    ap.add_argument("other", type=Path, help="result directory of the run to check (e.g. the GPU's)")
    ap.add_argument("--tol-points", type=int, default=0, help="largest difference allowed, in test points")
    ap.add_argument("--tol-distance", type=float, default=0.0, help="largest relative difference of the median distance")
    args = ap.parse_args(argv)
    for d in (args.reference, args.other):
        if not d.is_dir():
            print(f"compare_records: {d} is not a directory of result records", file=sys.stderr)
            return 2
    ref, other = _index(args.reference), _index(args.other)
    rows, unmatched = [], []
    for ident, rec in sorted(other.items(), key=lambda kv: kv[0][:3]):
        if ident in ref:
            rows.append(compare(ref[ident], rec))
        else:
            unmatched.append(ident)
    if rows:
        print(tabulate(rows, headers="keys", floatfmt=".3g"))
    for task, recipe, seed, key in unmatched:
        print(f"no reference record for {task}/{recipe} seed {seed} ({key[:16]})")
    if not rows:
        print(f"compare_records: no record of {args.other} has a reference in {args.reference}: nothing compared",
              file=sys.stderr)
        return 2
    bad = [r for r in rows if max(r["clean (points)"], r["worst, max over radii (points)"]) > args.tol_points
           or r["median distance (rel.)"] > args.tol_distance]
    print(f"{len(rows)} pairs, {len(bad)} beyond the tolerance ({args.tol_points} points, "
          f"{args.tol_distance:g} relative distance), {len(unmatched)} without a reference")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
