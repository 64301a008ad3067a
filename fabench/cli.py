"""The ``fabench`` command line: parses, calls the library, prints. No maths here.

Every error of input or data is one line on stderr and exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

from tabulate import tabulate

from fabench import registry
from fabench.errors import ConfigError, FabenchError
from fabench.params import parse_assignments
from fabench.records import Record, default_results_dir, radius_key

EXIT_USAGE = 2


def parse_radii(text: str) -> list[float]:
    """``0,10,20`` or ``start:stop:step`` (inclusive) -> radii; negative or non-numeric is an error."""
    from fabench.taskfiles import radius_grid

    text = text.strip()
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) != 3:
                raise ValueError
            values = list(radius_grid(*parts))
        else:
            values = [float(p) for p in text.split(",") if p.strip()]
    except (ValueError, ConfigError):
        raise ConfigError(f"--epsilons {text!r}: expected numbers like 0,10,20 or start:stop:step") from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise ConfigError(f"--epsilons {text!r}: radii must be finite and non-negative")
    return values


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def format_record(rec: Record, *, reused: bool = False, path: Path | None = None) -> str:
    """The human-readable report of one record."""
    lines = [
        f"task {rec.task} · recipe {rec.recipe} · seed {rec.seed} · {rec.n_eval} test points attacked"
        + (" · reused finished record" if reused else ""),
    ]
    if rec.data_info.get("data_subset"):
        lines.append(f"NOTE: data subset ({rec.data_info.get('n_train')} train / {rec.data_info.get('n_test')} test)")
    lines.append(
        f"clean accuracy {_fmt(rec.clean_accuracy)} · median minimal adversarial distance "
        f"{_fmt(rec.median_min_distance, 2)} · feature-averaging score {_fmt(rec.fa_score)}"
    )
    cols = rec.attacks + ["worst"]
    rows = [[r] + [rec.robust_accuracy[a].get(radius_key(r)) for a in cols] for r in rec.radii]
    rows.append(["median dist"] + [rec.median_distance.get(a) for a in cols])
    lines.append("robust accuracy (L2; worst = per-point worst case over all attacks):")
    lines.append(tabulate(rows, headers=["radius"] + cols, floatfmt=".3f", tablefmt="github"))
    cm = rec.cosine_matrix
    lines.append(
        f"cosine with own-class features {_fmt(cm.get('mean_own_class'))}, "
        f"with other-class features {_fmt(cm.get('mean_other_class'))}"
    )
    values = cm.get("values", [])
    if values and len(values) <= 30 and len(values[0]) <= 12:
        hdr = [f"mu{j}{'+' if p else '-'}" for j, p in enumerate(cm.get("positive_features", []))]
        lines.append("cosine matrix (units x features):")
        lines.append(tabulate([[u] + row for u, row in zip(cm["units"], values)], headers=["unit"] + hdr,
                              floatfmt=".2f", tablefmt="github"))
    t = rec.timings
    lines.append("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in t.items()))
    if path is not None:
        lines.append(f"record: {path}")
    return "\n".join(lines)


# -- commands --------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    kinds = [args.kind] if args.kind else list(registry.REGISTRIES)
    for kind in kinds:
        reg = registry.REGISTRIES[kind]
        rows = [[e.name, e.source, e.meta.description,
                 ", ".join(f"{k}={v!r}" for k, v in e.meta.params.items()) if args.verbose else ""]
                for e in reg.entries(args.pattern)]
        out.write(f"{kind}:\n")
        hdr = ["name", "from", "description"] + (["parameters (defaults)"] if args.verbose else [])
        out.write(tabulate([r[: len(hdr)] for r in rows], headers=hdr, tablefmt="simple") + "\n\n")
    return 0


def cmd_evaluate(args: argparse.Namespace, out: TextIO) -> int:
    from fabench.evaluate import RunConfig, evaluate
    from fabench.progress import ProgressBar

    human = sys.stderr if args.json else out
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    radii = parse_radii(args.epsilons) if args.epsilons else None
    overrides = parse_assignments(args.set or [])
    out_dir = Path(args.out).expanduser() if args.out else default_results_dir()
    bar = ProgressBar(sys.stderr, enabled=not args.quiet)
    cfg = RunConfig(task=args.task, recipe=args.recipe, seed=args.seed, attacks=attacks, radii=radii,
                    n_eval=args.n_eval, overrides=overrides, data_dir=args.data_dir, cache_dir=args.cache_dir)
    rec, path, reused = evaluate(cfg, out_dir=out_dir, force=args.force, progress=bar)
    if not args.quiet or not args.json:
        human.write(format_record(rec, reused=reused, path=path) + "\n")
    if args.json:
        out.write(json.dumps(rec.to_json(), sort_keys=True) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fabench",
        description="Feature averaging and its cost in L2 robustness (Li, Pan, Lyu, Li, ICLR 2025).",
    )
    sub = p.add_subparsers(dest="command", required=True)

    ls = sub.add_parser("list", help="list registered tasks, recipes and attacks")
    ls.add_argument("kind", nargs="?", choices=list(registry.REGISTRIES), help="only this registry")
    ls.add_argument("pattern", nargs="?", default="*", help="shell wildcard on names, e.g. 'mnist*'")
    ls.add_argument("-v", "--verbose", action="store_true", help="show parameters and defaults")
    ls.set_defaults(func=cmd_list)

    ev = sub.add_parser("evaluate", help="train a recipe on a task and run the attack protocol")
    ev.add_argument("--task", required=True, help="registered task name, or a task file (*.toml)")
    ev.add_argument("--recipe", required=True, help="registered recipe (name or name@distribution)")
    ev.add_argument("--seed", type=int, default=0, help="seed of data, init and attacks (default 0)")
    ev.add_argument("--attacks", default="analytic,pgd,deepfool", help="comma-separated attack names")
    ev.add_argument("--epsilons", help="radii: 0,10,20 or start:stop:step (default: the task's grid)")
    ev.add_argument("--n-eval", type=int, default=0, help="test points to attack (0 = all; else a seeded subset)")
    ev.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a parameter: d=512, task.k=6, recipe.lr=0.01, pgd.steps=100")
    ev.add_argument("--out", help="directory of result records (default: $FABENCH_RESULTS or ~/.local/share/fabench/results)")
    ev.add_argument("--data-dir", help="where real datasets live (default: $FABENCH_DATA or the user cache)")
    ev.add_argument("--cache-dir", help="where trained backbones and features are cached")
    ev.add_argument("--force", action="store_true", help="recompute even if a finished record exists")
    ev.add_argument("--json", action="store_true", help="print exactly one JSON record on stdout")
    ev.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=cmd_evaluate)
    return p


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    stream = out if out is not None else sys.stdout
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace, TextIO], int] = args.func
    try:
        return func(args, stream)
    except FabenchError as exc:
        sys.stderr.write(f"fabench: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("fabench: interrupted; finished records are kept, nothing partial was written\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
