"""Sweeps: a grid of evaluations from a TOML file, run locally or on a Ray cluster, resumable.

A sweep file names a grid (tasks x recipes x ``--set`` variants x seeds, with attacks, radii,
``n_eval`` and per-task / per-recipe overrides) and where the records go (relative to the sweep
file). :func:`load_sweep` expands and resolves every job up front (a bad file or name raises a
:class:`~fabench.errors.FabenchError` before anything runs); :func:`finished` says which jobs
already have a record (the same lookup by configuration key as ``fabench evaluate``), without
importing Ray or training anything; :func:`run_sweep` runs the rest.

Execution: with ``jobs=1`` and no Ray address, in this process; otherwise every job is a Ray task
(a local Ray started and stopped here, or an existing cluster via ``ray_address``) asking for the
CPUs and GPUs of its device. A worker only calls :func:`fabench.evaluation.compute` and returns
the finished record as JSON; the driver writes it atomically with
:func:`fabench.records.write_record`. Workers therefore need no shared filesystem, and a crash of
a worker or of the driver loses only the jobs in flight: a rerun resumes. A failing job is retried
once (resubmitted by the driver; in-process the same), then reported; the other jobs still run.
Nothing here prints: progress goes to the ``on_event`` callback.

File format (every key optional except ``tasks`` and ``recipes``)::

    out = "records"                    # record directory, relative to this file
    tasks = ["synthetic", "mnist5v5"]  # names, or task files (*.toml, relative to this file)
    recipes = ["binary", "fine"]
    seeds = [0, 1, 2]                  # or "0:3" (half-open), or one integer; default [0]
    attacks = ["analytic", "pairwise"] # default: the default protocol (as evaluate)
    epsilons = "0:20:2"                # or [0, 10, 20]; default: each task's own grid
    n_eval = 0                         # test points attacked (0 = all)
    set = ["d=64", "recipe.lr=0.01"]   # --set for every job (or a table: { d = 64 })
    variants = [["d=64"], ["d=128"]]   # one more grid axis: each entry is a list of --set
    device = "cpu"                     # or "cuda": each job asks Ray for one GPU
    cpus = 1                           # CPUs each job asks for

    [task.mnist5v5]                    # overrides for one task's jobs
    n_eval = 500                       # (attacks, epsilons, n_eval, set, device, cpus)

    [recipe.fine]                      # overrides for one recipe's jobs (same keys)
    set = ["recipe.steps=200"]

    [[grid]]                           # several grids: each inherits the top-level keys
    tasks = ["cifar5v5"]               # and overrides any of them (not out, task, recipe)

``set`` precedence (later wins): top level or grid, the variant, ``[task.X]``, ``[recipe.X]``.
Jobs with the same configuration key are run once.
"""

from __future__ import annotations

import difflib
import os
import socket
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from fabench.errors import ConfigError, FabenchError, UnknownNameError, user_path

GRID_KEYS = ("tasks", "recipes", "seeds", "attacks", "epsilons", "n_eval", "protocol", "set", "variants", "device",
             "cpus")
OVERRIDE_KEYS = ("attacks", "epsilons", "n_eval", "protocol", "set", "device", "cpus")
TOP_KEYS = ("out", "description", "grid", "task", "recipe") + GRID_KEYS
DEVICES = ("cpu", "cuda")
DEFAULT_OUT = "records"
RETRIES = 1
#: The most jobs one sweep file may expand to (counted before anything is expanded or resolved).
MAX_JOBS = 100_000
#: The most CPUs one job may ask Ray for.
MAX_CPUS_PER_JOB = 1024


@dataclass(frozen=True)
class Job:
    """One evaluation of a sweep, resolved: its configuration, key and record path."""

    index: int
    label: str
    config: Any  # fabench.evaluation.RunConfig
    key: str
    task: str
    recipe: str
    seed: int
    device: str
    cpus: float
    path: Path
    resolved: Any = None  # fabench.evaluation.Resolved: decides reuse (key and provenance)


@dataclass
class Sweep:
    """A sweep file expanded into resolved jobs (in file order, duplicates removed)."""

    path: Path
    out_dir: Path
    jobs: list[Job]
    duplicates: int = 0


@dataclass
class JobEvent:
    """What :func:`run_sweep` reports: ``kind`` is ``"start"``, ``"done"`` or ``"failed"``."""

    kind: str
    job: Job
    finished: int  # jobs settled so far (done, failed, or reused before the run)
    total: int
    seconds: float = 0.0
    host: str = ""
    error: str = ""
    record_path: Path | None = None


@dataclass
class SweepResult:
    """The outcome of :func:`run_sweep`."""

    total: int
    reused: list[Job] = field(default_factory=list)
    done: list[Job] = field(default_factory=list)
    failed: list[tuple[Job, str]] = field(default_factory=list)
    wall_seconds: float = 0.0
    ray_start_seconds: float = 0.0
    mode: str = "in-process"

    @property
    def ok(self) -> bool:
        return not self.failed


EventFn = Callable[[JobEvent], None]


class RayStartError(FabenchError):
    """Ray could not be started, or the cluster could not be reached (before any job ran)."""


def _no_event(event: JobEvent) -> None:
    return None


# -- reading and validating the file ----------------------------------------------------------
def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_keys(table: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise UnknownNameError(f"{where}: unknown key {key!r}{_suggest(key, allowed)}; "
                                   f"known: {', '.join(allowed)}")


def _names(value: Any, key: str, where: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) and v.strip() for v in items):
        raise ConfigError(f"{where}: {key} must be a non-empty list of names, got {value!r}")
    return [v.strip() for v in items]


def _seeds(value: Any, where: str) -> list[int]:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: seeds must be integers, got {value!r}")
    if isinstance(value, int):
        return [value]
    if isinstance(value, str) and ":" in value:
        lo, _, hi = value.partition(":")
        try:
            span = range(int(lo), int(hi))
        except ValueError:
            span = range(0)
        if len(span) > MAX_JOBS:  # refused before the list is built (0:100000000000 filled the memory)
            raise ConfigError(f"{where}: seeds {value!r} are {len(span):,} seeds; a sweep may have at most "
                              f"{MAX_JOBS:,} jobs")
        seeds = list(span)
    elif isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        seeds = list(value)
    else:
        seeds = []
    if not seeds:
        raise ConfigError(f"{where}: seeds must be a non-empty list of integers or a range like \"0:3\", "
                          f"got {value!r}")
    return list(dict.fromkeys(seeds))


def _epsilons(value: Any, where: str) -> list[float] | None:
    from fabench.taskfiles import radius_grid

    if value is None:
        return None
    bad = ConfigError(f"{where}: epsilons must be a list of non-negative numbers, \"0,10,20\" or "
                      f"\"start:stop:step\", got {value!r}")
    try:
        if isinstance(value, str) and ":" in value:
            parts = [float(p) for p in value.split(":")]
            if len(parts) != 3:
                raise bad
            try:
                radii = list(radius_grid(*parts))
            except ConfigError as exc:  # why the grid is refused, not only what epsilons may be
                raise ConfigError(f"{where}: epsilons {value!r}: {str(exc).removeprefix('radius grid: ')}") from None
        elif isinstance(value, str):
            radii = [float(p) for p in value.split(",")]  # an empty item ("0,,1") is an error
        elif isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                             for v in value):
            radii = [float(v) for v in value]
        else:
            raise bad
    except ConfigError:
        raise
    except ValueError:
        raise bad from None
    if not radii or any(r != r or r in (float("inf"),) or r < 0 for r in radii):
        raise bad
    return [r + 0.0 for r in radii]  # -0.0 + 0.0 is 0.0: one radius 0, one configuration key


def _int(value: Any, key: str, where: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: {key} must be an integer >= {minimum}, got {value!r}")
    return value


def _cpus(value: Any, where: str) -> float:
    """The CPUs a job asks Ray for: a number in (0, :data:`MAX_CPUS_PER_JOB`] (``inf`` or ``1e308``
    would pass as "positive" and then fail inside Ray)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_CPUS_PER_JOB:
        raise ConfigError(f"{where}: cpus must be a number above 0 and at most {MAX_CPUS_PER_JOB}, got {value!r}")
    return float(value)


def _device(value: Any, where: str) -> str:
    if value not in DEVICES:
        raise ConfigError(f"{where}: device must be one of {', '.join(DEVICES)}, got {value!r}"
                          + (_suggest(value, DEVICES) if isinstance(value, str) else ""))
    return str(value)


def _flatten(table: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in table.items():
        if isinstance(v, dict):
            out.extend(_flatten(v, f"{prefix}{k}."))
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return ",".join(_text(x) for x in v)
    return str(v)


def _assignments(value: Any, where: str) -> list[tuple[str, str]]:
    """``["d=64", ...]`` or ``{ d = 64, recipe.lr = 0.01 }`` -> ``[(key, text), ...]``."""
    from fabench.params import parse_assignments

    if isinstance(value, dict):
        return [(k, _text(v)) for k, v in _flatten(value)]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        try:
            return parse_assignments(list(value))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    raise ConfigError(f"{where}: set must be a list of \"key=value\" strings or a table, got {value!r}")


def _variants(value: Any, where: str) -> list[list[tuple[str, str]]]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: variants must be a non-empty list of --set lists (or tables), got {value!r}")
    return [_assignments(v, f"{where}: variants[{i}]") for i, v in enumerate(value)]


def read_sweep_file(path: Path) -> dict[str, Any]:
    """The TOML table of a sweep file; every reading problem is one :class:`ConfigError` line."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"no sweep file {str(path)!r}") from None
    except IsADirectoryError:
        raise ConfigError(f"sweep file {str(path)!r} is a directory") from None
    except OSError as exc:
        raise ConfigError(f"cannot read sweep file {str(path)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"sweep file {str(path)!r} is not UTF-8 text (byte {exc.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"sweep file {str(path)!r} is not valid TOML: {exc}") from None


def load_sweep(
    path: str | Path,
    *,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    device: str | None = None,
) -> Sweep:
    """Read, expand and resolve a sweep file; raises a :class:`FabenchError` before any job runs.

    ``device`` (the command line's ``--device``) replaces the file's ``device`` everywhere.
    """
    from fabench.evaluation import DEFAULT_ATTACKS, RunConfig, resolve
    from fabench.records import record_path

    path = Path(path).expanduser().resolve()
    name = path.name
    doc = read_sweep_file(path)
    _check_keys(doc, TOP_KEYS, name)
    base = path.parent
    out = doc.get("out", DEFAULT_OUT)
    if not isinstance(out, str) or not out.strip():
        raise ConfigError(f"{name}: out must be a directory path, got {out!r}")
    out_dir = user_path(out, f"{name}: out", base=base)
    if device is not None:
        device = _device(device, "--device")

    grids_raw = doc.get("grid", [{}])
    if isinstance(grids_raw, dict) or not isinstance(grids_raw, list) or not all(isinstance(g, dict) for g in grids_raw):
        raise ConfigError(f"{name}: grid must be an array of tables ([[grid]])")
    if not grids_raw:
        raise ConfigError(f"{name}: grid = [] has no grids; give [[grid]] tables, or leave grid out to run "
                          "the top-level tasks and recipes")
    top = {k: v for k, v in doc.items() if k in GRID_KEYS}
    grids = []
    for i, g in enumerate(grids_raw):
        where = f"{name}: [[grid]] #{i + 1}" if "grid" in doc else name
        _check_keys(g, GRID_KEYS, where)
        merged = {**top, **g}
        for req in ("tasks", "recipes"):
            if req not in merged:
                raise ConfigError(f"{where}: missing {req} (a list of names)")
        grids.append((where, merged))

    overrides: dict[str, dict[str, dict[str, Any]]] = {}
    for scope in ("task", "recipe"):
        tables = doc.get(scope, {})
        if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
            raise ConfigError(f"{name}: [{scope}.NAME] must be tables of overrides")
        known = sorted({n for _, g in grids for n in _names(g[scope + "s"], scope + "s", name)})
        for key, table in tables.items():
            if key not in known:
                raise UnknownNameError(f"{name}: [{scope}.{key}]: {key!r} is not in any grid's {scope}s"
                                       f"{_suggest(key, known)}")
            _check_keys(table, OVERRIDE_KEYS, f"{name}: [{scope}.{key}]")
        overrides[scope] = tables

    def task_ref(t: str) -> str:  # a task file is relative to the sweep file
        return str(user_path(t, f"{name}: task file", base=base)) if t.endswith(".toml") else t

    count_jobs(grids, overrides)
    jobs: list[Job] = []
    seen: set[str] = set()
    duplicates = 0
    for where, g in grids:
        tasks = _names(g["tasks"], "tasks", where)
        recipes = _names(g["recipes"], "recipes", where)
        seeds = _seeds(g.get("seeds", [0]), where)
        variants = _variants(g["variants"], where) if "variants" in g else [[]]
        for task in tasks:
            for recipe in recipes:
                opts = dict(g)
                for scope, nm in (("task", task), ("recipe", recipe)):
                    opts.update({k: v for k, v in overrides[scope].get(nm, {}).items() if k != "set"})
                scoped = f"{where} ({task}/{recipe})"
                attacks = _names(opts.get("attacks", list(DEFAULT_ATTACKS)), "attacks", scoped)
                radii = _epsilons(opts.get("epsilons"), scoped)
                n_eval = _int(opts.get("n_eval", 0), "n_eval", scoped, minimum=0)
                dev = device or _device(opts.get("device", "cpu"), scoped)
                protocol = opts.get("protocol", "full")
                if not isinstance(protocol, str):
                    raise ConfigError(f"{scoped}: protocol must be \"full\" or \"fast\", got {protocol!r}")
                cpus = _cpus(opts.get("cpus", 1), scoped)
                common = _assignments(g.get("set", []), where)
                specific = [_assignments(overrides[s][n]["set"], f"{name}: [{s}.{n}]")
                            for s, n in (("task", task), ("recipe", recipe)) if "set" in overrides[s].get(n, {})]
                for variant in variants:
                    sets = common + variant + [p for s in specific for p in s]
                    for seed in seeds:
                        cfg = RunConfig(task=task_ref(task), recipe=recipe, seed=seed, attacks=tuple(attacks),
                                        radii=radii, n_eval=n_eval, protocol=protocol, overrides=tuple(sets),
                                        data_dir=data_dir, cache_dir=cache_dir, device=dev)
                        try:
                            res = resolve(cfg)
                        except FabenchError as exc:
                            raise type(exc)(f"{scoped}, seed {seed}: {exc}") from None
                        if res.key in seen:
                            duplicates += 1
                            continue
                        seen.add(res.key)
                        label = f"{res.task_name}/{res.recipe_name} seed {seed}"
                        if sets:
                            label += " [" + " ".join(f"{k}={v}" for k, v in sets) + "]"
                        jobs.append(Job(len(jobs), label, cfg, res.key, res.task_name, res.recipe_name, seed,
                                        dev, cpus, record_path(out_dir, res.task_name, res.recipe_name, seed,
                                                               res.key), res))
    return Sweep(path, out_dir, jobs, duplicates)


def count_jobs(grids: Sequence[tuple[str, Mapping[str, Any]]],
               overrides: Mapping[str, Mapping[str, Any]] | None = None) -> int:
    """The jobs the grids expand to (duplicates included), or a ConfigError above :data:`MAX_JOBS`:
    counted from the axes' lengths before any job is built or resolved."""
    total = 0
    for where, g in grids:
        n = (len(_names(g["tasks"], "tasks", where)) * len(_names(g["recipes"], "recipes", where))
             * len(_seeds(g.get("seeds", [0]), where)) * (len(_variants(g["variants"], where)) if "variants" in g else 1))
        total += n
        if total > MAX_JOBS:
            raise ConfigError(f"{where}: the sweep expands to more than {MAX_JOBS:,} jobs (tasks x recipes x "
                              f"variants x seeds); split it into several sweep files")
    return total


def finished(sweep: Sweep) -> list[bool]:
    """For each job, whether a reusable record exists (the rule of ``fabench evaluate``: same key,
    same provenance, see :func:`fabench.evaluation.reusable_record`)."""
    from fabench.evaluation import reusable_record

    return [reusable_record(sweep.out_dir, j.resolved, seed=j.seed)[0] is not None for j in sweep.jobs]


def sweep_producing(results: Path, directory: Path, *, name: str = "sweep.toml") -> Path | None:
    """``directory/sweep.toml`` if it is a readable sweep file whose records go to ``results``."""
    path = directory / name
    if not path.is_file():
        return None
    try:
        out = read_sweep_file(path).get("out", DEFAULT_OUT)
    except ConfigError:
        return None
    if not isinstance(out, str) or (path.parent / out).resolve() != results.resolve():
        return None
    return path


# -- running ------------------------------------------------------------------------------------
def execute(cfg: Any) -> dict[str, Any]:
    """Run one job (in a Ray worker or in-process): resolve, compute; the record as JSON, no I/O."""
    from fabench.evaluation import compute, resolve

    t0 = time.perf_counter()
    res = resolve(cfg)
    record = compute(cfg, res)
    return {"record": record.to_json(), "host": socket.gethostname(), "seconds": time.perf_counter() - t0}


def one_line(exc: BaseException) -> str:
    """An exception (a Ray task error unwrapped to its cause) as one line."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _store(sweep: Sweep, job: Job, out: Mapping[str, Any]) -> Path:
    from fabench.provenance import describe_change
    from fabench.records import Record, write_record_or_keep

    record = Record.from_json(out["record"])
    if record.key != job.key:
        raise ConfigError(f"worker returned a record with key {record.key[:16]}, expected {job.key[:16]} "
                          f"(different fabench version or plugins on the worker?)")
    why = describe_change(job.resolved.provenance, record.provenance)
    if why:
        raise ConfigError(f"worker on {out.get('host', '?')} runs other code than the driver ({why})")
    return write_record_or_keep(record, sweep.out_dir)


def _check_reachable(address: str, *, timeout: float = 10.0) -> None:
    """Fail fast (one line) if a ``host:port`` Ray address has nothing listening: ``ray.init``
    itself would wait a long time. Other forms (``auto``, ``ray://...``) are left to Ray."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or "/" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise RayStartError(f"no Ray cluster reachable at {address}: {exc.strerror or exc}") from None


def _sigterm_as_interrupt() -> Callable[[], None] | None:
    """While Ray runs, treat SIGTERM (a batch system's stop) and SIGINT like Ctrl-C, so that the jobs in
    flight are cancelled and Ray is shut down (Ray's own handler aborts the driver and leaves
    its agent processes behind). Returns the function that restores the previous handler."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    # Ctrl-C as well, even where the parent started us with SIGINT ignored (a background job of a
    # non-interactive shell, nohup): Python then installs no KeyboardInterrupt handler of its own
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)

    return restore


def _forwarded_env() -> dict[str, str]:
    """fabench's settings that a remote worker needs to resolve the same configuration."""
    names = ("FABENCH_NO_PLUGINS", "FABENCH_TASKS_PATH", "FABENCH_OFFLINE")
    return {n: os.environ[n] for n in names if n in os.environ}


def check_jobs(jobs: object, *, ray_address: str | None = None) -> int | None:
    """``jobs`` (``--jobs``; ``None``: the default) if it is an integer from 1 to its cap, else a
    ConfigError naming the cap. Without ``ray_address`` the jobs are worker processes on this
    machine (the local Ray gets ``jobs`` CPUs): at most :func:`fabench.device.max_threads`, 4 x the
    CPUs here, as for ``--threads``. On a cluster, whose size is not known here: at most
    :data:`MAX_JOBS`, the most jobs a sweep has (more in flight is the same as all of them)."""
    from fabench.device import THREADS_PER_CPU, max_threads

    if jobs is None:
        return None
    if isinstance(jobs, bool) or not isinstance(jobs, int):
        raise ConfigError(f"--jobs must be an integer, got {jobs!r}")
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    if ray_address and jobs > MAX_JOBS:
        raise ConfigError(f"--jobs {jobs}: at most {MAX_JOBS:,} on a cluster (the most jobs a sweep has)")
    if not ray_address and jobs > max_threads():
        raise ConfigError(f"--jobs {jobs}: at most {max_threads()} on this machine ({THREADS_PER_CPU} x the "
                          f"{os.cpu_count() or 1} CPUs here; a cluster, --ray-address, may take more)")
    return jobs


def run_sweep(
    sweep: Sweep,
    *,
    jobs: int | None = None,
    ray_address: str | None = None,
    on_event: EventFn = _no_event,
    retries: int = RETRIES,
) -> SweepResult:
    """Run every unfinished job of ``sweep``; finished records are reused, never recomputed.

    ``jobs`` bounds how many jobs run at once (default: this machine's CPUs for a local Ray, all
    of them for a cluster; at most the cap of :func:`check_jobs`). ``jobs=1`` without
    ``ray_address`` runs in this process, without Ray. If Ray is already initialised in this
    process it is used as it is (and left running); otherwise a local Ray (or a connection to
    ``ray_address``) is started and shut down here.
    """
    from fabench.records import check_writable

    check_jobs(jobs, ray_address=ray_address)
    t_start = time.perf_counter()
    done_before = finished(sweep)
    result = SweepResult(total=len(sweep.jobs))
    result.reused = [j for j, f in zip(sweep.jobs, done_before) if f]
    todo = [j for j, f in zip(sweep.jobs, done_before) if not f]
    if todo:  # reusing finished records writes nothing: a read-only results directory is fine then
        check_writable(sweep.out_dir)
    settled = len(result.reused)

    def settle(job: Job, out: Mapping[str, Any] | None, error: str) -> None:
        nonlocal settled
        path = None
        if out is not None:
            try:
                path = _store(sweep, job, out)
            except (FabenchError, OSError) as exc:
                error = one_line(exc)
        settled += 1
        if path is not None and out is not None:
            result.done.append(job)
            on_event(JobEvent("done", job, settled, result.total, float(out.get("seconds", 0.0)),
                              str(out.get("host", "")), record_path=path))
        else:
            result.failed.append((job, error))
            on_event(JobEvent("failed", job, settled, result.total, error=error))

    if todo and jobs == 1 and not ray_address:
        for job in todo:
            on_event(JobEvent("start", job, settled, result.total))
            out, error = None, ""
            for _attempt in range(retries + 1):
                try:
                    out = execute(job.config)
                    break
                except Exception as exc:  # contained: reported, the other jobs go on
                    error = one_line(exc)
            settle(job, out, error)
    elif todo:
        _run_on_ray(todo, jobs=jobs, ray_address=ray_address, retries=retries, result=result,
                    on_event=on_event, settle=settle, settled=lambda: settled)
    result.wall_seconds = time.perf_counter() - t_start
    return result


def _run_on_ray(
    todo: list[Job], *, jobs: int | None, ray_address: str | None, retries: int, result: SweepResult,
    on_event: EventFn, settle: Callable[[Job, Mapping[str, Any] | None, str], None],
    settled: Callable[[], int],
) -> None:
    import logging

    import ray

    started_here = not ray.is_initialized()
    t0 = time.perf_counter()
    if started_here and ray_address:
        _check_reachable(ray_address)
    if started_here:
        try:
            if ray_address:
                ray.init(address=ray_address, runtime_env={"env_vars": _forwarded_env()},
                         logging_level=logging.ERROR, log_to_driver=False)
            else:
                ray.init(address="local", num_cpus=jobs or os.cpu_count() or 1, include_dashboard=False,
                         logging_level=logging.ERROR, log_to_driver=False)
        except Exception as exc:  # no cluster there, refused, not authorised: one line, nothing ran
            where = f"the Ray cluster at {ray_address}" if ray_address else "a local Ray"
            raise RayStartError(f"could not start or connect to {where}: {one_line(exc)}") from None
    result.ray_start_seconds = time.perf_counter() - t0
    restore = _sigterm_as_interrupt() if started_here else None
    result.mode = f"ray ({'cluster ' + ray_address if ray_address else 'local'})"
    remote = ray.remote(execute)
    window = jobs or len(todo)
    pending = list(todo)
    inflight: dict[Any, Job] = {}
    attempts: dict[int, int] = {}
    try:
        while pending or inflight:
            while pending and len(inflight) < window:
                job = pending.pop(0)
                # Ray's own retries are off: they log each retry's traceback on the driver's
                # stdout. A failed job is submitted once more below instead (same effect).
                ref = remote.options(num_cpus=job.cpus, num_gpus=1 if job.device == "cuda" else 0,
                                     max_retries=0, retry_exceptions=False).remote(job.config)
                inflight[ref] = job
                attempts[job.index] = attempts.get(job.index, 0) + 1
                if attempts[job.index] == 1:
                    on_event(JobEvent("start", job, settled(), result.total))
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                job = inflight.pop(ref)
                try:
                    out = ray.get(ref)
                except Exception as exc:  # a task error, a killed worker, OOM: contained
                    if attempts[job.index] <= retries:
                        pending.insert(0, job)
                    else:
                        settle(job, None, one_line(exc))
                else:
                    settle(job, out, "")
    finally:
        if started_here:
            # shutting down stops the jobs in flight (a driver's tasks die with it). No ray.cancel
            # first: in Ray 2.60 a cancel that races with a task's reply aborts the driver
            # ("Tried to complete task that was not pending", ray-project/ray#54798)
            ray.shutdown()
        else:  # a Ray this process did not start is left running: cancel only our own tasks
            for ref in inflight:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # best effort: the task may have finished meanwhile
                    pass
        if restore is not None:
            restore()
