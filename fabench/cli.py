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
    rows: list[list[Any]] = [[f"{r:g}"] + [rec.robust_accuracy[a].get(radius_key(r)) for a in cols]
                             for r in rec.radii]
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
    fs = rec.feature_space
    if fs:
        hl = [r for r in fs.get("headline_radii", [])]
        worst = fs.get("robust_accuracy", {}).get("worst", {})
        lines.append(
            f"feature space (head alone; radii in units of the median class-mean distance {_fmt(fs.get('scale'), 2)}): "
            f"clean accuracy {_fmt(fs.get('clean_accuracy'))} · median minimal distance "
            f"{_fmt(fs.get('median_min_distance'), 2)} · worst case "
            + ", ".join(f"{r / fs['scale']:.2g}: {_fmt(worst.get(radius_key(r)))}" for r in hl if fs.get("scale"))
        )
    for warning in rec.model_info.get("warnings", []):
        lines.append(f"WARNING: {warning}")
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
    from fabench.evaluation import RunConfig, evaluate
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
        out.write(json.dumps(rec.to_json()) + "\n")
    return 0


def parse_seeds(text: str) -> list[int]:
    """``0,1,2`` or ``0:3`` (half-open, like ``range``) -> distinct seeds in the given order."""
    text = text.strip()
    try:
        if ":" in text:
            lo, _, hi = text.partition(":")
            seeds = list(range(int(lo), int(hi)))
        else:
            seeds = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected integers like 0,1,2 or a range like 0:3") from None
    if not seeds:
        raise ConfigError(f"--seeds {text!r}: no seeds given")
    return list(dict.fromkeys(seeds))


def add_sweep_options(ev: argparse.ArgumentParser) -> None:
    """``evaluate --seeds`` and ``evaluate --plot`` (the command runs through :func:`cmd_evaluate_sweep`)."""
    ev.add_argument("--seeds", metavar="SEEDS",
                    help="run several seeds (0,1,2 or 0:3), reusing finished records; replaces --seed")
    ev.add_argument("--plot", action="store_true",
                    help="also draw the robustness curve (mean and spread over the seeds) and the cosine "
                         "heatmap, as PNG and SVG, into --plot-dir")
    ev.add_argument("--plot-dir", help="where --plot writes figures (default: <results>/figures)")
    ev.set_defaults(func=cmd_evaluate_sweep)


def cmd_evaluate_sweep(args: argparse.Namespace, out: TextIO) -> int:
    """``fabench evaluate`` with ``--seeds`` and ``--plot``: one :func:`cmd_evaluate` per seed."""
    from fabench.evaluation import RunConfig, resolve
    from fabench.records import find_record

    if args.seeds is not None and args.seed != 0:
        raise ConfigError("give either --seed or --seeds, not both")
    seeds = parse_seeds(args.seeds) if args.seeds is not None else [args.seed]
    out_dir = Path(args.out).expanduser() if args.out else default_results_dir()
    for seed in seeds:
        if len(seeds) > 1 and not args.json:
            out.write(f"== seed {seed} ==\n")
        status = cmd_evaluate(argparse.Namespace(**{**vars(args), "seed": seed}), out)
        if status:
            return status
    if args.plot:
        from fabench import plots

        records = []
        for seed in seeds:  # the records just written or reused, found again by their key
            cfg = RunConfig(task=args.task, recipe=args.recipe, seed=seed,
                            attacks=[a.strip() for a in args.attacks.split(",") if a.strip()],
                            radii=parse_radii(args.epsilons) if args.epsilons else None, n_eval=args.n_eval,
                            overrides=parse_assignments(args.set or []), data_dir=args.data_dir,
                            cache_dir=args.cache_dir)
            res = resolve(cfg)
            rec = find_record(out_dir, res.task_name, res.recipe_name, seed, res.key)
            if rec is not None:
                records.append(rec)
        plot_dir = Path(args.plot_dir).expanduser() if args.plot_dir else out_dir / "figures"
        paths = plots.plot_evaluation(records, out_dir=plot_dir)
        human = sys.stderr if args.json else out
        human.write("figures: " + ", ".join(str(p) for p in paths) + "\n")
    return 0


def add_publish_commands(sub: Any) -> None:
    """The ``leaderboard`` and ``plot`` subcommands."""
    lb = sub.add_parser(
        "leaderboard", help="tables (and figures) of all result records",
        description="One table per task, one row per recipe configuration (records that share their "
                    "configuration except the seed): clean accuracy, worst-case robust accuracy at the "
                    "task's headline L2 radii, median minimal distance, feature-averaging score, as mean "
                    "± std over seeds. With --out: README.md (embedding the figures), leaderboard.csv, "
                    "leaderboard.json and figures/; the same records always give the same bytes.")
    lb.add_argument("--results", help="directory of result records (default: $FABENCH_RESULTS or "
                                      "~/.local/share/fabench/results)")
    lb.add_argument("--out", help="write the tables and figures here (e.g. leaderboard/); default: print")
    lb.add_argument("--format", help="markdown, csv or json, or a comma-separated list (default: markdown "
                                     "on stdout; with --out all three, the markdown embedding the figures)")
    lb.add_argument("--no-figures", action="store_true", help="with --out: tables only")
    lb.set_defaults(func=cmd_leaderboard)

    pl = sub.add_parser(
        "plot", help="robustness curves and cosine heatmaps of all result records",
        description="Robust accuracy against L2 radius (one panel per task, one line per recipe, mean and "
                    "± std band over seeds) and one cosine-similarity heatmap (units x features) per "
                    "recipe configuration, as PNG and SVG.")
    pl.add_argument("--results", help="directory of result records (default: $FABENCH_RESULTS or "
                                      "~/.local/share/fabench/results)")
    pl.add_argument("--out", help="where to write PNG and SVG figures (default: <results>/figures)")
    pl.set_defaults(func=cmd_plot)


def _results_dir(args: argparse.Namespace) -> Path:
    results = Path(args.results).expanduser() if args.results else default_results_dir()
    if not results.is_dir():
        raise ConfigError(f"no results directory {str(results)!r} (run `fabench evaluate` first, or give --results)")
    return results


def cmd_leaderboard(args: argparse.Namespace, out: TextIO) -> int:
    from fabench import leaderboard

    formats = [f.strip() for f in (args.format or "").split(",") if f.strip()]
    unknown = [f for f in formats if f not in leaderboard.FORMATS]
    if unknown:
        raise ConfigError(f"--format {args.format!r}: unknown {', '.join(unknown)}; "
                          f"known: {', '.join(leaderboard.FORMATS)}")
    results = _results_dir(args)
    board = leaderboard.load(results)
    if board.empty:
        raise ConfigError(f"no result records below {str(results)!r}")
    if args.out:
        written = leaderboard.publish(board, Path(args.out).expanduser(),
                                      formats=formats or leaderboard.FORMATS, figures=not args.no_figures)
        for path in written:
            out.write(f"wrote {path}\n")
    else:
        for fmt in formats or ["markdown"]:
            out.write(leaderboard.render(board, fmt=fmt))
    return 0


def cmd_plot(args: argparse.Namespace, out: TextIO) -> int:
    from fabench import plots
    from fabench.records import iter_records

    results = _results_dir(args)
    records = [rec for _, rec in iter_records(results)]
    if not records:
        raise ConfigError(f"no result records below {str(results)!r}")
    target = Path(args.out).expanduser() if args.out else results / "figures"
    for path in plots.plot_all(records, out_dir=target):
        out.write(f"wrote {path}\n")
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
    ev.add_argument("--attacks", default="analytic,pairwise,pgd,deepfool", help="comma-separated attack names (default: all four built-ins)")
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
    add_sweep_options(ev)
    add_publish_commands(sub)
    return p


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    """fabench's own warnings (a plugin that failed to load) as one line; others as usual."""
    from fabench.registry import PluginWarning

    text = str(message)
    if issubclass(category, PluginWarning):
        sys.stderr.write(f"fabench: warning: {text.removeprefix('fabench: ')}\n")
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    with warnings.catch_warnings():  # restored on return (main is also called in-process)
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # foolbox's scipy import
        warnings.showwarning = _show_warning
        return _main(argv, out=out)


def _main(argv: Sequence[str] | None, *, out: TextIO | None) -> int:
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
