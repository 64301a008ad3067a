"""The ``fabench`` command line: parses, calls the library, prints. No maths here.

Every error of input or data is one line on stderr and exit status 2; never a traceback.
"""

from __future__ import annotations

import sys

try:  # Ctrl-C while the command line is still being imported: one line and 130, no traceback
    import argparse
    import json
    import math
    import os
    import traceback
    import warnings
    from pathlib import Path
    from typing import Any, Callable, NoReturn, Sequence, TextIO

    from tabulate import tabulate

    from fabench.errors import ConfigError, FabenchError, RecordWriteError, user_path
    from fabench.params import parse_assignments, parse_value
    from fabench.records import Record, default_results_dir, radius_key
except KeyboardInterrupt:  # pragma: no cover - timing-dependent
    sys.stderr.write("fabench: interrupted\n")
    raise SystemExit(130) from None

EXIT_USAGE = 2
REGISTRY_KINDS = ("tasks", "recipes", "attacks")
"""The registries ``fabench list`` shows (:data:`fabench.registry.REGISTRIES`; torch is not imported to
parse a command line)."""
EXIT_INTERNAL = 1
EXIT_CLOSED_PIPE = 141
"""A reader closed standard output (``fabench ... | head -1``): stop quietly with the shell's status for
SIGPIPE (128 + 13), as Unix tools do."""
DEBUG_ENV = "FABENCH_DEBUG"


def parse_radii(text: str) -> list[float]:
    """``0,10,20`` or ``start:stop:step`` (inclusive) -> radii; negative or non-numeric is an error."""
    from fabench.taskfiles import radius_grid

    from fabench.validation import MAX_RADII, MAX_RADIUS

    text = text.strip()
    if not text:
        raise ConfigError("--epsilons is empty: give radii like 0,10,20 or start:stop:step, or leave "
                          "--epsilons out for the task's own grid")
    if ":" not in text and any(not p.strip() for p in text.split(",")):
        raise ConfigError(f"--epsilons {text!r}: an empty item (two commas, or one at an end)")
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) != 3:
                raise ValueError
        else:
            values = [float(p) for p in text.split(",")]
    except ValueError:
        raise ConfigError(f"--epsilons {text!r}: expected numbers like 0,10,20 or start:stop:step") from None
    if ":" in text:
        try:
            values = list(radius_grid(*parts))  # its size is checked before it is built
        except ConfigError as exc:
            raise ConfigError(f"--epsilons {text!r}: {str(exc).removeprefix('radius grid: ')}") from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise ConfigError(f"--epsilons {text!r}: radii must be finite and non-negative")
    if max(values) > MAX_RADIUS or len(values) > MAX_RADII:
        raise ConfigError(f"--epsilons {text!r}: at most {MAX_RADII} radii, each at most {MAX_RADIUS:g}")
    return [v + 0.0 for v in values]  # -0.0 + 0.0 is 0.0: "-0" is radius 0, one key, not two


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
    inherited = getattr(rec, "task_recipe_defaults", {}) or {}
    if inherited:
        lines.append("recipe parameters from the task file: "
                     + ", ".join(f"{k}={v!r}" for k, v in sorted(inherited.items())))
    if getattr(rec, "verified_attacks", None):
        lines.append("claims verified on the model: " + ", ".join(rec.verified_attacks))
    if rec.data_info.get("data_subset"):
        lines.append(f"NOTE: data subset ({rec.data_info.get('n_train')} train / {rec.data_info.get('n_test')} test)")
    lines.append(
        f"clean accuracy {_fmt(rec.clean_accuracy)} · median minimal adversarial distance "
        f"{_fmt(rec.median_min_distance, 2)} · feature-averaging score {_fmt(rec.fa_score)}"
    )
    cols = rec.attacks + ["worst"]
    cert = rec.certified.get("robust_accuracy") if rec.certified.get("space") == "input" else None
    rows: list[list[Any]] = [[f"{r:g}"] + [rec.robust_accuracy[a].get(radius_key(r)) for a in cols]
                             + ([cert.get(radius_key(r))] if cert else []) for r in rec.radii]
    rows.append(["median dist"] + [rec.median_distance.get(a) for a in cols]
                + ([rec.certified.get("median_radius")] if cert else []))
    lines.append("robust accuracy (L2; worst = per-point worst case over all attacks"
                 + ("; certified = sound lower bound: the truth lies in [certified, worst]" if cert else "") + "):")
    lines.append(tabulate(rows, headers=["radius"] + cols + (["certified"] if cert else []), floatfmt=".3f",
                          tablefmt="github"))
    if rec.certified and not cert:
        lines.append(f"certified (head in feature space, not pixels): median radius {_fmt(rec.certified.get('median_radius'), 2)}")
    from fabench.flags import describe

    lines.extend(f"flag: {line}" for line in describe(rec.flags))
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


def _allowed(meta: Any, key: str) -> str:
    """`` in [lo, hi]`` or `` in {a|b}`` for ``fabench list -v`` (the declared range of a parameter)."""
    if key in meta.choices:
        return " {" + "|".join(str(c) for c in meta.choices[key]) + "}"
    if key in meta.bounds:
        lo, hi = meta.bounds[key]
        return f" [{'-inf' if lo is None else format(lo, 'g')}..{'inf' if hi is None else format(hi, 'g')}]"
    return ""


# -- commands --------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    from fabench import registry

    kinds = [args.kind] if args.kind else list(registry.REGISTRIES)
    for kind in kinds:
        reg = registry.REGISTRIES[kind]
        rows = [[e.name, e.source, e.meta.description,
                 ", ".join(f"{k}={v!r}{_allowed(e.meta, k)}" for k, v in e.meta.params.items()) if args.verbose else ""]
                for e in reg.entries(args.pattern)]
        out.write(f"{kind}:\n")
        hdr = ["name", "from", "description"] + (["parameters (defaults)"] if args.verbose else [])
        out.write(tabulate([r[: len(hdr)] for r in rows], headers=hdr, tablefmt="simple") + "\n\n")
    return 0


def attack_names(text: str | None) -> list[str]:
    """``--attacks a,b,c``, or the default protocol (:data:`fabench.evaluation.DEFAULT_ATTACKS`)."""
    if text is None:
        from fabench.evaluation import DEFAULT_ATTACKS

        return list(DEFAULT_ATTACKS)
    return [a.strip() for a in text.split(",") if a.strip()]


def cmd_evaluate(args: argparse.Namespace, out: TextIO) -> int:
    from fabench.evaluation import RunConfig, evaluate
    from fabench.progress import ProgressBar

    human = sys.stderr if args.json else out
    attacks = attack_names(args.attacks)
    radii = parse_radii(args.epsilons) if args.epsilons is not None else None
    overrides = parse_assignments(args.set or [])
    check_runtime_options(args)
    out_dir = user_path(args.out, "--out") if args.out else default_results_dir()
    bar = ProgressBar(sys.stderr, enabled=not args.quiet)
    cfg = RunConfig(task=args.task, recipe=args.recipe, seed=args.seed, attacks=attacks, radii=radii,
                    n_eval=args.n_eval, overrides=overrides, data_dir=args.data_dir, cache_dir=args.cache_dir,
                    protocol=args.protocol, device=args.device, threads=args.threads, batch_size=args.batch_size)
    try:
        rec, path, reused = evaluate(cfg, out_dir=out_dir, force=args.force, progress=bar,
                                     notice=_notice)
    except RecordWriteError as exc:
        if exc.fallback is None and isinstance(exc.record, Record):  # nowhere to keep it: print it
            out.write(json.dumps(exc.record.to_json(), default=str) + "\n")
        raise
    if not args.quiet or not args.json:
        human.write(format_record(rec, reused=reused, path=path) + "\n")
    if args.json:
        out.write(json.dumps(rec.to_json()) + "\n")
    return 0


def check_runtime_options(args: argparse.Namespace) -> None:
    """``--device`` (or ``$FABENCH_DEVICE``), ``--threads``, ``--batch-size`` and ``--cache-dir``,
    checked before a finished record is looked up: a bad value is an error even where nothing is computed."""
    from fabench.device import check_batch_size, check_threads, device_spec

    device_spec(args.device)
    check_threads(args.threads)
    check_batch_size(args.batch_size)
    if args.cache_dir:
        _check_cache_dir(user_path(args.cache_dir, "--cache-dir"))


def _check_cache_dir(path: Path) -> None:
    """``--cache-dir`` that is a file, or below one, or that cannot be created: a ConfigError (the
    directory itself is created only when something is cached)."""
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"--cache-dir {str(path)!r} is a file, not a directory")
        if not os.access(path, os.W_OK):
            raise ConfigError(f"--cache-dir {str(path)!r} is not writable")
        return
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--cache-dir {str(path)!r} cannot be created: {str(parent)!r} is not a writable directory")


def threads_option(text: str) -> int:
    """``--threads``: an integer from 0 (torch's default) to 4 x the CPUs here, checked as it is parsed."""
    from fabench.device import check_threads

    try:
        value = int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    try:
        return check_threads(value, what="--threads")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--threads ")) from None


def _notice(text: str) -> None:
    sys.stderr.write(f"fabench: {text}\n")


def parse_seeds(text: str) -> list[int]:
    """``0,1,2`` or ``0:3`` (half-open, like ``range``) -> distinct seeds in the given order."""
    text = text.strip()
    if text and ":" not in text and any(not p.strip() for p in text.split(",")):
        raise ConfigError(f"--seeds {text!r}: an empty item (two commas, or one at an end)")
    try:
        if ":" in text:
            lo, _, hi = text.partition(":")
            lo_i, hi_i = int(lo), int(hi)
            if hi_i - lo_i > 100_000:
                raise ConfigError(f"--seeds {text!r}: {hi_i - lo_i} seeds; at most 100000 at once")
            seeds = list(range(lo_i, hi_i))
        else:
            seeds = [int(p) for p in text.split(",")] if text else []
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected integers like 0,1,2 or a range like 0:3") from None
    if not seeds:
        raise ConfigError(f"--seeds {text!r}: no seeds given")
    if len(seeds) > 100_000:
        raise ConfigError(f"--seeds {text!r}: {len(seeds)} seeds; at most 100000 at once")
    from fabench.validation import check_seed

    for s in seeds:  # every seed checked before the first one runs
        check_seed(s, what="--seeds: seed")
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

    if args.seeds is not None and args.seed is not None:  # an explicit --seed 0 too
        raise ConfigError("give either --seed or --seeds, not both")
    seeds = parse_seeds(args.seeds) if args.seeds is not None else [0 if args.seed is None else args.seed]
    out_dir = user_path(args.out, "--out") if args.out else default_results_dir()
    if args.plot_dir and not args.plot:
        raise ConfigError("--plot-dir needs --plot")
    if args.plot and args.plot_dir:  # before any work: a record written, then no figures, is a surprise
        _check_out_dir(user_path(args.plot_dir, "--plot-dir"), "--plot-dir")
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
                            attacks=attack_names(args.attacks),
                            radii=parse_radii(args.epsilons) if args.epsilons is not None else None,
                            n_eval=args.n_eval,
                            overrides=parse_assignments(args.set or []), data_dir=args.data_dir,
                            cache_dir=args.cache_dir, protocol=args.protocol)
            res = resolve(cfg)
            rec = find_record(out_dir, res.task_name, res.recipe_name, seed, res.key)
            if rec is not None:
                records.append(rec)
        plot_dir = user_path(args.plot_dir, "--plot-dir") if args.plot_dir else out_dir / "figures"
        _check_out_dir(plot_dir, "--plot-dir" if args.plot_dir else "figures directory")
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
    results = user_path(args.results, "--results") if args.results else default_results_dir()
    if not results.is_dir():
        raise ConfigError(f"no results directory {str(results)!r} (run `fabench evaluate` first, or give --results)")
    return results


def _check_out_dir(path: Path, what: str) -> None:
    """A directory that is (or can be made) writable, or one line saying why not."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {str(path)!r} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{what} {str(path)!r} cannot be created: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK):
        raise ConfigError(f"{what} {str(path)!r} is not writable")


def cmd_leaderboard(args: argparse.Namespace, out: TextIO) -> int:
    from fabench import leaderboard

    formats = leaderboard.parse_formats(args.format, to_files=bool(args.out))
    if args.no_figures and not args.out:
        raise ConfigError("--no-figures needs --out (figures are written only with --out)")
    results = _results_dir(args)
    if args.out:
        target = user_path(args.out, "--out")
        if "json" in formats and results.resolve() in (target.resolve(), *target.resolve().parents):
            raise ConfigError(f"--out {str(target)!r} is inside --results {str(results)!r}: its "
                              f"{leaderboard.TABLE_FILES['json']} would be read back as a record; write the "
                              "leaderboard outside the results (as --results leaderboard/records --out leaderboard)")
        _check_out_dir(target, "--out")
    board = leaderboard.load(results)
    if board.empty:
        raise ConfigError(f"no result records below {str(results)!r}")
    if args.out:
        from fabench.sweep import sweep_producing

        target = user_path(args.out, "--out")
        written = leaderboard.publish(board, target, formats=formats,
                                      figures=not args.no_figures, sweep_file=sweep_producing(results, target),
                                      records_dir=results)
        for path in written:
            out.write(f"wrote {path}\n")
    else:
        for fmt in formats:
            out.write(leaderboard.render(board, fmt=fmt))
    return 0


def cmd_plot(args: argparse.Namespace, out: TextIO) -> int:
    from fabench import leaderboard, plots

    results = _results_dir(args)
    records = [rec for _, rec in leaderboard.iter_trusted(results)]
    if not records:
        raise ConfigError(f"no result records below {str(results)!r}")
    target = user_path(args.out, "--out") if args.out else results / "figures"
    _check_out_dir(target, "--out" if args.out else "figures directory")
    for path in plots.plot_all(records, out_dir=target):
        out.write(f"wrote {path}\n")
    return 0


def add_sweep_command(sub: Any) -> None:
    """The ``sweep`` subcommand (:mod:`fabench.sweep`)."""
    sw = sub.add_parser(
        "sweep", help="run a grid of evaluations from a sweep file (locally or on a Ray cluster), resumably",
        description="Expand a sweep file (TOML: tasks x recipes x --set variants x seeds, with attacks, "
                    "radii, n_eval and per-task overrides; records go where the file says, relative to "
                    "it), reuse every finished record and run the rest, one line per job. Jobs run on a "
                    "local Ray (--jobs at a time; in this process for --jobs 1) or on a Ray cluster "
                    "(--ray-address or RAY_ADDRESS). A failing job is retried once, then reported; exit "
                    "status 0 only if every job succeeded, 1 otherwise, 2 for a bad sweep file.")
    sw.add_argument("file", help="the sweep file (*.toml)")
    sw.add_argument("--dry-run", action="store_true", help="list the jobs (finished or not) and run nothing")
    sw.add_argument("--jobs", type=int, help="at most this many jobs at once (default: the local CPUs; "
                                             "all for a cluster); 1 = in this process, without Ray; at most "
                                             "4 x the local CPUs, or 100,000 on a cluster")
    sw.add_argument("--ray-address", help="run on this Ray cluster (default: $RAY_ADDRESS; none = local)")
    sw.add_argument("--device", help="cpu or cuda (each job then asks Ray for one GPU); replaces the file's")
    sw.add_argument("--data-dir", help="where real datasets live on every node (default: $FABENCH_DATA or the "
                                       "worker's user cache)")
    sw.add_argument("--cache-dir", help="where trained backbones and features are cached (default: each "
                                        "worker's own cache)")
    sw.add_argument("-q", "--quiet", action="store_true", help="no progress bar; still one line per job")
    sw.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace, out: TextIO) -> int:
    import os

    from fabench import sweep as S
    from fabench.progress import ProgressBar

    address = args.ray_address or os.environ.get("RAY_ADDRESS") or None
    S.check_jobs(args.jobs, ray_address=address)  # even where nothing runs (--dry-run, all finished)
    sw = S.load_sweep(args.file, data_dir=args.data_dir, cache_dir=args.cache_dir, device=args.device)
    done = S.finished(sw)
    n, n_done = len(sw.jobs), sum(done)
    head = f"sweep {sw.path.name}: {n} jobs, {n_done} finished, {n - n_done} to run; records in {sw.out_dir}"
    if sw.duplicates:
        head += f" ({sw.duplicates} duplicate configurations run once)"
    if args.dry_run:
        out.write(head + "\n")
        for job, f in zip(sw.jobs, done):
            out.write(f"{'finished' if f else 'to run':<9} {job.key[:8]}  {job.label}\n")
        return 0
    out.write(head + "\n")
    out.flush()
    bar = ProgressBar(sys.stderr, enabled=not args.quiet and sys.stderr.isatty())

    def on_event(ev: S.JobEvent) -> None:
        if ev.kind == "start":
            return
        where = f" on {ev.host}" if ev.host else ""
        if ev.kind == "done":
            line = f"[{ev.finished}/{ev.total}] done   {ev.job.key[:8]}  {ev.job.label}  ({ev.seconds:.1f}s{where})"
        else:
            line = f"[{ev.finished}/{ev.total}] FAILED {ev.job.key[:8]}  {ev.job.label}: {ev.error}"
        if bar.tty and bar.enabled:
            sys.stderr.write("\r\033[K")
        out.write(line + "\n")
        out.flush()
        bar("sweep", ev.finished, ev.total)

    if n_done < n:
        bar("sweep", n_done, n)  # the overall bar (on a terminal) counts from here
    res = S.run_sweep(sw, jobs=args.jobs, ray_address=address, on_event=on_event)
    ran = len(res.done) + len(res.failed)
    startup = f", Ray start {res.ray_start_seconds:.1f}s" if res.mode != "in-process" and ran else ""
    how = f" ({res.mode}{startup})" if ran else ""
    out.write(f"sweep {sw.path.name}: {len(res.done)} ran, {len(res.reused)} reused, {len(res.failed)} failed "
              f"of {res.total} jobs in {res.wall_seconds:.1f}s{how}\n")
    for job, error in res.failed:
        out.write(f"failed: {job.key[:8]}  {job.label}: {error}\n")
    return 0 if res.ok else 1

class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (a ConfigError) instead of usage text and exit."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="fabench",
        description="Feature averaging and its cost in L2 robustness (Li, Pan, Lyu, Li, ICLR 2025).",
        epilog="Every error is one line (exit 2: bad input, 1: internal). --traceback (anywhere on the "
               "command line) or FABENCH_DEBUG=1 also prints the full trace.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    ls = sub.add_parser("list", help="list registered tasks, recipes and attacks")
    ls.add_argument("kind", nargs="?", choices=REGISTRY_KINDS, help="only this registry")
    ls.add_argument("pattern", nargs="?", default="*", help="shell wildcard on names, e.g. 'mnist*'")
    ls.add_argument("-v", "--verbose", action="store_true", help="show parameters and defaults")
    ls.set_defaults(func=cmd_list)

    ev = sub.add_parser("evaluate", help="train a recipe on a task and run the attack protocol")
    ev.add_argument("--task", required=True, help="registered task name, or a task file (*.toml)")
    ev.add_argument("--recipe", required=True, help="registered recipe (name or name@distribution)")
    ev.add_argument("--seed", type=int, help="seed of data, init and attacks (default 0)")
    ev.add_argument("--attacks",
                    help="comma-separated attack names (default: the default protocol, "
                         "analytic,pairwise,pgd,apgd,deepfool,exact; exact claims nothing where it does not "
                         "apply, apgd nothing where exact solves the model)")
    ev.add_argument("--epsilons", help="radii: 0,10,20 or start:stop:step (default: the task's grid)")
    ev.add_argument("--n-eval", type=int, default=0, help="test points to attack (0 = all; else a seeded subset)")
    ev.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a parameter: d=512, task.k=6, recipe.lr=0.01, pgd.steps=100")
    ev.add_argument("--out", help="directory of result records (default: $FABENCH_RESULTS or ~/.local/share/fabench/results)")
    ev.add_argument("--data-dir", help="where real datasets live (default: $FABENCH_DATA or the user cache)")
    ev.add_argument("--cache-dir", help="where trained backbones and features are cached")
    ev.add_argument("--force", action="store_true", help="recompute even if a finished record exists")
    ev.add_argument("--protocol", default="full", choices=("full", "fast"),
                    help="full (default): every attack's own curve; fast: each attack only on the points "
                         "the earlier ones left unbroken (the same or a stronger worst case, cheaper)")
    ev.add_argument("--device", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps "
                                     "(default: $FABENCH_DEVICE, else auto); recorded, not part of the key")
    ev.add_argument("--threads", type=threads_option, default=0,
                    help="torch CPU threads (default 0: torch's default; at most 4 x the CPUs here)")
    ev.add_argument("--batch-size", type=int, default=0,
                    help="points attacked together (default 0: on a CPU 500, fewer where the model's "
                         "largest activation would exceed 16 MiB; on a GPU from free memory)")
    ev.add_argument("--json", action="store_true", help="print exactly one JSON record on stdout")
    ev.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=cmd_evaluate)
    add_sweep_options(ev)
    add_publish_commands(sub)
    add_sweep_command(sub)
    add_audit_command(sub)
    return p


def add_audit_command(sub: Any) -> None:
    au = sub.add_parser("audit", help="re-check a finished record with the strong attack suite")
    au.add_argument("record", nargs="?", help="a record file (else --task/--recipe/--seed/--set as for evaluate)")
    au.add_argument("--task")
    au.add_argument("--recipe")
    # the options that describe a record default to None here (audit.RECORD_OPTIONS has their
    # defaults): with a record file, any of them given is refused, even at its default (--seed 0)
    au.add_argument("--seed", type=int, help="the record's seed (default 0)")
    au.add_argument("--attacks", help="the record's attacks as given to evaluate (default: the default protocol)")
    au.add_argument("--epsilons", help="the record's radii as given to evaluate")
    au.add_argument("--record-n-eval", type=int, help="the record's --n-eval (default 0 = all)")
    au.add_argument("--set", action="append", metavar="KEY=VALUE", help="the record's overrides, as for evaluate")
    au.add_argument("--strong", default=None, help="the strong suite (comma-separated; default: all of it)")
    au.add_argument("--strong-set", action="append", metavar="ATTACK.KEY=VALUE",
                    help="override a strong attack's parameter, e.g. apgd.restarts=1")
    au.add_argument("--n-eval", type=int, default=0, help="audited test points (0 = the record's own points; else a seeded subset)")
    au.add_argument("--out", help="directory of result records (default: as for evaluate)")
    au.add_argument("--data-dir")
    au.add_argument("--cache-dir")
    au.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    au.set_defaults(func=cmd_audit)


def cmd_audit(args: argparse.Namespace, out: TextIO) -> int:
    from fabench import audit
    from fabench.evaluation import DEFAULT_ATTACKS, RunConfig, resolve
    from fabench.progress import ProgressBar
    from fabench import leaderboard
    from fabench.records import find_record, record_path

    if args.record:
        path = user_path(args.record, "record")
        rec = leaderboard.load_record(path)
        audit.refuse_record_options(vars(args))
    else:
        args = argparse.Namespace(**{**vars(args), **{k: default for k, default in audit.RECORD_OPTIONS.items()
                                                     if getattr(args, k) is None}})
        if not args.task or not args.recipe:
            raise ConfigError("audit: give a record file, or --task and --recipe (as for evaluate)")
        attacks = attack_names(args.attacks)
        cfg = RunConfig(task=args.task, recipe=args.recipe, seed=args.seed,
                        attacks=tuple(attacks) if tuple(attacks) == DEFAULT_ATTACKS else attacks,
                        radii=parse_radii(args.epsilons) if args.epsilons is not None else None,
                        n_eval=args.record_n_eval,
                        overrides=parse_assignments(args.set or []))
        res = resolve(cfg)
        out_dir = user_path(args.out, "--out") if args.out else default_results_dir()
        found = find_record(out_dir, res.task_name, res.recipe_name, args.seed, res.key)
        if found is None:
            raise ConfigError(f"audit: no finished record of this configuration below {str(out_dir)!r}; "
                              "run fabench evaluate first")
        rec, path = found, record_path(out_dir, res.task_name, res.recipe_name, args.seed, res.key)
    from fabench import registry

    over: dict[str, dict[str, Any]] = {}
    strong_defaults = {n: registry.attacks.entry(n).meta.params for n in (args.strong or ",".join(audit.STRONG_ATTACKS)).split(",") if n}
    for key, text in parse_assignments(args.strong_set or []):
        name, dot, param = key.partition(".")
        if not dot or name not in strong_defaults or param not in strong_defaults[name]:
            raise ConfigError(f"--strong-set {key}: expected <strong attack>.<parameter>")
        over.setdefault(name, {})[param] = parse_value(text, strong_defaults[name][param], key=key)
    audit.check_writable(path)  # before any work: an audit that cannot be saved is wasted
    bar = ProgressBar(sys.stderr, enabled=not args.quiet)
    result = audit.audit(rec, n_eval=args.n_eval, attacks=list(strong_defaults), overrides=over,
                         data_dir=args.data_dir, cache_dir=args.cache_dir, progress=bar)
    written = audit.write_audit(result, path)
    out.write(audit.format_audit(result) + f"\naudit: {written}\n")
    return 0


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    """fabench's own warnings (a plugin that failed to load) as one line; others as usual."""
    from fabench.cache import CacheWarning
    from fabench.records import RecordWarning
    from fabench.registry import PluginWarning

    text = str(message)
    if issubclass(category, (PluginWarning, RecordWarning, CacheWarning)):
        sys.stderr.write(f"fabench: warning: {printable(text.removeprefix('fabench: '))}\n")
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    with warnings.catch_warnings():  # restored on return (main is also called in-process)
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # foolbox's scipy import
        warnings.showwarning = _show_warning
        return _main(argv, out=out)


def _main(argv: Sequence[str] | None, *, out: TextIO | None) -> int:
    stream = out if out is not None else sys.stdout
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--traceback" in argv or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0", "false", "no")
    argv = [a for a in argv if a != "--traceback"]
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        func: Callable[[argparse.Namespace, TextIO], int] = args.func
        code = func(args, stream)
        stream.flush()  # here, not at interpreter exit, where a closed pipe would print a warning
        return code
    except SystemExit as exc:  # argparse's own usage errors and --help
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USAGE)
        return code
    except KeyboardInterrupt:
        sys.stderr.write("fabench: interrupted; finished records are kept, nothing partial was written\n")
        return 130
    except BaseException as exc:  # every error is one line; --traceback / FABENCH_DEBUG=1 show the trace
        if isinstance(exc, BrokenPipeError) and stream is sys.stdout and _reader_gone(stream):
            _discard_output(stream)  # the reader of stdout is gone; any other broken pipe is an error
            return EXIT_CLOSED_PIPE
        if debug:
            traceback.print_exc()
        sys.stderr.write(one_line(exc) + "\n")
        return EXIT_USAGE if isinstance(exc, FabenchError) else EXIT_INTERNAL


def _reader_gone(stream: TextIO) -> bool:
    """Whether ``stream`` is a pipe (or socket) whose reading end is closed (``poll`` reports an error
    on its writing end): only then is a BrokenPipeError the reader's doing, not fabench's."""
    import select

    try:
        poller = select.poll()
        poller.register(stream.fileno(), select.POLLOUT)
        return any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or no file descriptor
        return False


def _discard_output(stream: TextIO) -> None:
    """Point ``stream``'s file descriptor at the null device, so that the interpreter's final flush of
    what is still buffered does not fail again (and print "Exception ignored ...")."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, stream.fileno())
        os.close(null)
    except (AttributeError, OSError, ValueError):  # pragma: no cover - nothing left to protect
        pass


def printable(text: str) -> str:
    """``text`` as one line that is safe on a terminal: runs of whitespace (line breaks included) become
    one space, any other control character is escaped as in a repr (a NUL is ``\\x00``)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in " ".join(text.split()))


def one_line(exc: BaseException) -> str:
    """The one stderr line of an error: the message, or for an internal error its type and origin."""
    if isinstance(exc, FabenchError):
        return f"fabench: error: {printable(str(exc))}"
    if isinstance(exc, MemoryError):
        return "fabench: error: out of memory (use smaller sizes; --traceback shows where)"
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    text = printable(str(exc))[:300]
    return (f"fabench: internal error: {type(exc).__name__}{': ' + text if text else ''}{where} "
            f"(rerun with --traceback, or FABENCH_DEBUG=1, for the full trace)")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
