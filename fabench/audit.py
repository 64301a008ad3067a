"""``fabench audit``: re-check a finished record with the strong (expensive) attack suite.

The default protocol is tuned to be affordable; an audit asks whether it overstates robustness.
It rebuilds the record's data and model deterministically (same task and recipe parameters, same
seed), reruns the record's own protocol on the record's test points (or a seeded subset,
``n_eval``), and then asks the strong suite only what the protocol may have missed: a point the
protocol broke at radius ``r`` cannot be "more broken" there, so the strong attacks only work on
the radii below each point's minimal distance found so far (:func:`strong_breaks`):

* a minimisation attack (FAB, C&W, exact) runs once on the points not broken at every radius;
* a fixed-epsilon attack (APGD, Square, surrogate) walks down: point ``i`` is attacked at the
  largest radius below its current minimal distance, then one radius lower only where that
  succeeded, and so on (about one call per point instead of one per point and radius);
* a strong attack the record's protocol already ran with the same parameters (``exact``, up to
  ``strict``) is skipped (it would find the same);
* where :mod:`fabench.certify` has an input-space certificate, a point is never attacked at a
  radius it is certified robust at (nothing can break it there);
* the attacks run one after the other (minimisation first), each below what the protocol and the
  earlier strong attacks found, ``AUDIT_BATCH`` points per call (the memory of the library attacks
  grows with the batch).

It compares the strong worst case (protocol re-run and strong suite together, per point) with the
**record's own numbers**, the worst-case robust accuracy the record reports at each radius: the
gap is ``record - strong worst`` (never negative), so an audit vouches only for numbers it checked.
It also says whether the re-run reproduced the record (``reproduced``: its worst-case curve equals
the record's at every radius, on as many points; ``max_difference`` is the largest difference):
a record whose numbers the re-run does not give back (edited by hand, another model) is not
vouched for, whatever the gaps. ``strong[name]`` is the robust accuracy after the protocol re-run
and the strong attacks up to and including ``name`` in run order (minimisation attacks first; the
report's columns follow it, so they never increase left to right, and the last one equals
``strong["worst"]``), not the attack's own curve. ``suite`` says which strong attacks ran, which
were skipped and why (:data:`SKIP_ALREADY_RUN`, :data:`SKIP_INAPPLICABLE`,
:data:`SKIP_NOT_REQUESTED`), which ran with parameters other than the suite's, and whether that
is the full suite (:func:`is_full_suite`); the leaderboard counts only full audits as audited.
The result is written atomically next to the record as ``<record>.audit`` (format
:data:`AUDIT_FORMAT`) with the record's key and a digest of everything that identifies what the
record measured (:func:`record_digest`: its configuration, key, numbers, data and model, without
:data:`VOLATILE_FIELDS`), so the leaderboard can show whether a row was audited and the largest
gap found; once the record is recomputed with other numbers (other code, another backbone) or
relabelled, its audit no longer applies and is not shown.

The strong suite (:data:`STRONG_ATTACKS`): AutoAttack's APGD-CE (100 iterations x 5 restarts,
one run per radius: ``search=grid``; the default protocol's ``apgd`` is cheaper: 100 x 4, bisection),
FAB-L2 (100 iterations, 1 restart) and Square-L2 (5000 queries), foolbox's C&W-L2 (5 x 100 steps), ``surrogate`` (PGD through a smoothed
copy of the network, :mod:`fabench.attacks.surrogate`) and ``exact`` where it applies (two-layer
heads on the input with at most 16 units; skipped otherwise).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence, TypeGuard

from fabench import params as P
from fabench import registry
from fabench.certify import certified_robust
from fabench.errors import ConfigError, UnknownNameError
import torch

from fabench.protocol import AttackSpec, attack_seed, check_n_eval, run_protocol
from fabench.records import Record, config_key, radius_key, read_record_text, write_atomic
from fabench.types import FitContext, ProgressFn, TaskData, no_progress
from fabench.validation import check_outcome

if TYPE_CHECKING:  # pragma: no cover
    from fabench.evaluation import Resolved
    from fabench.models import Classifier

STRONG_ATTACKS = ("apgd", "fab", "square", "cw", "surrogate", "exact")
#: Points per strong-attack call: bounds the memory of the library attacks (FAB, Square, C&W).
AUDIT_BATCH = 100
STRONG_PARAMS: dict[str, dict[str, Any]] = {
    "apgd": {"steps": 100, "restarts": 5, "search": "grid"},
    "square": {"queries": 5000},
    "exact": {"strict": False},
    # the audit's budgets for the two minimisation attacks (every open point, every radius at once):
    # C&W 5 x 100 instead of foolbox's 9 x 1000, FAB one restart instead of five (10x cheaper)
    "cw": {"steps": 100, "binary_search_steps": 5},
    "fab": {"restarts": 1},
}
AUDIT_FORMAT = 2
"""The ``format`` of an ``.audit`` file. 2: gaps against the record's own numbers, ``reproduced``,
``suite``, and the digest of the whole record less :data:`VOLATILE_FIELDS`. Audits without a
``format`` (version 1: gaps against the re-run, a digest of the numbers alone) are not read;
``scripts/migrate_audits.py`` upgrades those that still match their record."""
#: Why a strong attack did not run: the record's protocol ran it with the same parameters (the
#: re-run of the protocol, part of the strong worst case, already holds what it finds).
SKIP_ALREADY_RUN = "already run by the record's protocol with the same parameters"
#: ``exact`` (not strict) on a model it cannot solve would claim nothing.
SKIP_INAPPLICABLE = "inapplicable: exact solves only two-layer heads on the input (at most 16 units)"
#: A strong attack left out of ``--strong``.
SKIP_NOT_REQUESTED = "not requested (--strong)"

VOLATILE_FIELDS = (
    "timings", "created", "runtime", "provenance", "versions.platform",
    "feature_space.timings", "model_info.timings",
    "data_info.data_dir", "model_info.backbone.path", "model_info.backbone.cache",
    "model_info.backbone.features_cache", "flags.audit",
)
"""The fields of a record (dotted paths into its JSON) that :func:`record_digest` leaves out: how,
when and where it was computed, not what was measured. Stage timings (the record's, the feature
space's, the model's), the ``created`` timestamp, the ``runtime`` (device, threads, batch sizes),
the provenance (versions and code hashes: a rerun under new code with the same numbers keeps its
audit), the machine (``versions.platform``), where the data and the backbone's cache files are
(``data_info.data_dir``, ``model_info.backbone.path``) and whether the caches hit
(``model_info.backbone.cache``, ``...features_cache``), and the audit summary the leaderboard
keeps in memory (``flags.audit``). Everything else is digested: the configuration (task, recipe,
seed, attacks and their parameters, radii, ``n_eval``, protocol mode), the key, every number, and
``data_info``/``model_info``."""


@dataclass
class AuditResult:
    """What an audit found; ``gaps[r]`` = the record's worst-case robust accuracy minus the strong
    worst case at radius ``r`` on the audited points, never negative (positive: the record
    overstated robustness)."""

    record_key: str
    record_digest: str
    """:func:`record_digest` of the audited record: the audit applies to this record only."""
    n_eval: int
    radii: list[float]
    record: dict[str, float]
    """The record's worst-case robust accuracy per radius: the numbers the gaps are taken from."""
    protocol: dict[str, float]
    """The re-run protocol's worst-case robust accuracy per radius."""
    reproduced: bool
    """Whether the re-run gave the record's worst-case curve back, exactly, on as many points."""
    max_difference: float
    """The largest difference between the re-run's worst-case curve and the record's."""
    strong: dict[str, dict[str, float]]
    gaps: dict[str, float]
    max_gap: float
    suite: dict[str, Any]
    """``ran`` (names), ``skipped`` (name: reason), ``modified`` (ran with parameters other than
    the suite's) and ``full`` (:func:`is_full_suite`)."""
    config: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    created: str = ""
    format: int = AUDIT_FORMAT

    @property
    def beaten(self) -> dict[str, float]:
        """The radii where the strong suite found the record's robust accuracy too high, with the gap."""
        return {r: g for r, g in self.gaps.items() if g > 0}

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def audit_path(record_path: Path) -> Path:
    """``<record>.audit`` (JSON) beside the record: not ``*.json``, so readers of records never take it for one."""
    return record_path.with_name(record_path.stem + ".audit")


def _drop(obj: Any, path: Sequence[str]) -> None:
    """Remove the field at ``path`` (keys) from nested dicts, if it is there."""
    for key in path[:-1]:
        obj = obj.get(key) if isinstance(obj, dict) else None
    if isinstance(obj, dict):
        obj.pop(path[-1], None)


def record_digest(record: Record) -> str:
    """SHA-256 of the record's JSON less :data:`VOLATILE_FIELDS` (canonical: sorted keys).

    It covers everything that identifies what was measured (configuration, key, numbers,
    ``data_info``, ``model_info``, certificate, flags): the same configuration recomputed with the
    same numbers keeps its digest; other numbers, or a record relabelled by hand (another recipe,
    other task parameters, more attacks), change it."""
    data = record.to_json()
    for name in VOLATILE_FIELDS:
        _drop(data, name.split("."))
    payload = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def record_curve(record: Record) -> dict[str, float]:
    """The record's worst-case robust accuracy per radius (JSON radius keys), or a ConfigError."""
    worst = record.robust_accuracy.get("worst")
    out: dict[str, float] = {}
    for r in record.radii:
        v = worst.get(radius_key(r)) if isinstance(worst, dict) else None
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise ConfigError(f"audit: the record has no worst-case robust accuracy at radius {radius_key(r)}")
        out[radius_key(r)] = float(v)
    return out


def reproduction(record: Mapping[str, float], rerun: Mapping[str, float], *, same_points: bool) -> tuple[bool, float]:
    """``(reproduced, max_difference)``: whether the re-run's curve equals the record's at every
    radius (and was run on as many points: ``same_points``), and the largest difference."""
    diffs = [abs(float(rerun[r]) - float(v)) if r in rerun else math.inf for r, v in record.items()]
    worst = max(diffs, default=0.0)
    return same_points and worst == 0.0, round(worst, 6) if math.isfinite(worst) else worst


def gaps_against(record: Mapping[str, float], strong_worst: Mapping[str, float]) -> dict[str, float]:
    """``record - strong worst`` per radius, rounded to 6 decimals, never negative."""
    return {r: round(max(0.0, float(v) - float(strong_worst[r])), 6) for r, v in record.items()}


def is_full_suite(suite: Mapping[str, Any]) -> bool:
    """Whether ``suite`` (an audit's ``suite``) is the whole strong suite with its parameters:
    every attack of :data:`STRONG_ATTACKS` ran, or was skipped because the record's protocol
    already ran it with the same parameters, or (``exact`` only) as inapplicable; none ran with
    parameters other than the suite's."""
    ran = suite.get("ran")
    skipped = suite.get("skipped")
    modified = suite.get("modified")
    if not isinstance(ran, list) or not isinstance(skipped, dict) or not isinstance(modified, list) or modified:
        return False
    for name in STRONG_ATTACKS:
        why = skipped.get(name)
        if name in ran or why == SKIP_ALREADY_RUN or (name == "exact" and why == SKIP_INAPPLICABLE):
            continue
        return False
    return True


def suite_summary(ran: Sequence[str], skipped: Mapping[str, str], modified: Sequence[str]) -> dict[str, Any]:
    """An audit's ``suite``: what ran, what was skipped and why, what ran with other parameters;
    ``full`` as :func:`is_full_suite`. Strong attacks that were not requested count as skipped."""
    skips = {**dict(skipped), **{n: SKIP_NOT_REQUESTED for n in STRONG_ATTACKS if n not in ran and n not in skipped}}
    out: dict[str, Any] = {"ran": list(ran), "skipped": skips, "modified": list(modified)}
    out["full"] = is_full_suite(out)
    return out


def check_audit(record_path: Path, record: Record) -> tuple[dict[str, Any] | None, str | None]:
    """``(audit, None)`` when ``<record>.audit`` applies to ``record``; ``(None, why not)`` when it
    is unreadable, of an older format, for another key, or for another record (its
    ``record_digest`` is not :func:`record_digest` of ``record``); ``(None, None)`` without one."""
    path = audit_path(record_path)
    if not path.exists():
        return None, None
    try:
        obj = json.loads(read_record_text(path))  # never a FIFO, a device or a huge file
    except (ConfigError, json.JSONDecodeError, RecursionError):
        return None, "not a readable audit"
    if not isinstance(obj, dict):
        return None, "not a readable audit"
    if obj.get("format") != AUDIT_FORMAT:
        return None, ("written by an older fabench (its gaps are not against the record's numbers); "
                      "scripts/migrate_audits.py upgrades it if it still matches the record")
    if obj.get("record_key") != record.key:
        return None, "an audit of another record (its key)"
    if obj.get("record_digest") != record_digest(record):
        return None, "not an audit of this record (recomputed with other numbers, or relabelled, since)"
    problem = audit_problem(obj, record)
    if problem:
        return None, f"not a well-formed audit ({problem})"
    return obj, None


def _fraction(v: Any) -> TypeGuard[float]:
    """A number (not a boolean) in [0, 1]."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0.0 <= v <= 1.0


def audit_problem(obj: Mapping[str, Any], record: Record) -> str | None:
    """Why the fields of an audit of ``record`` that readers use are not what :func:`audit_record`
    writes, or ``None``: ``n_eval`` a positive integer (the record's own count when
    ``reproduced``), ``reproduced`` a boolean, ``gaps`` a fraction in [0, 1] at every radius of
    the record, ``max_gap`` their largest, ``suite`` a mapping. The digest binds an audit to its
    record, not its numbers to a run: this keeps a hand-edited or truncated audit from being shown
    as something it cannot be (or from crashing a reader)."""
    n_eval, reproduced, gaps = obj.get("n_eval"), obj.get("reproduced"), obj.get("gaps")
    if not isinstance(n_eval, int) or isinstance(n_eval, bool) or n_eval < 1:
        return f"n_eval {n_eval!r} is not a positive integer"
    if not isinstance(reproduced, bool):
        return f"reproduced {reproduced!r} is not true or false"
    if reproduced and n_eval != record.n_eval:
        return f"a reproduction on {n_eval} points of a record of {record.n_eval}"
    if not isinstance(gaps, dict) or set(gaps) != {radius_key(r) for r in record.radii}:
        return "its gaps are not one per radius of the record"
    if not all(_fraction(g) for g in gaps.values()):
        return "a gap is not a number in [0, 1]"
    max_gap = obj.get("max_gap")
    largest = max(gaps.values(), default=0.0)
    if not _fraction(max_gap) or abs(max_gap - largest) > 1e-6:
        return f"max_gap {max_gap!r} is not the largest of its gaps"
    if not isinstance(obj.get("suite"), dict):
        return "its suite is not a mapping"
    return None


def read_audit(record_path: Path, record: Record) -> dict[str, Any] | None:
    """The audit written for this record: ``None`` when absent, unreadable, of an older format, for
    another key, or for another record (see :func:`check_audit`)."""
    return check_audit(record_path, record)[0]


def resolve_record(record: Record) -> "Resolved":
    """The record's configuration resolved as ``fabench evaluate`` resolves one
    (:func:`fabench.evaluation.resolve`: names, parameter types, ranges and choices, seed, radii,
    ``n_eval``, protocol), or a one-line ConfigError before any work: a record is audited only if
    evaluate would run its configuration, and only if resolving it gives the record's configuration
    back (the same parameters, sources and key), so the audit re-runs what the record measured.

    The record's fields are checked first (:func:`fabench.leaderboard.shape_problem`,
    :func:`~fabench.leaderboard.identity_problem` without the file name,
    :func:`~fabench.leaderboard.impossible_numbers`): a record the leaderboard would not show is
    not audited either."""
    from fabench.evaluation import RunConfig, resolve
    from fabench.leaderboard import record_problem

    problem = record_problem(record)
    if problem:
        raise ConfigError(f"audit: the record cannot be audited: {problem}")
    cfg = record.config
    overrides: list[tuple[str, Any]] = [(f"task.{k}", v) for k, v in cfg["task_params"].items()]
    overrides += [(f"recipe.{k}", v) for k, v in cfg["recipe_params"].items()]
    overrides += [(f"{a}.{k}", v) for a, params in cfg["attacks"].items() for k, v in params.items()]
    run = RunConfig(task=cfg["task"], recipe=cfg["recipe"], seed=cfg["seed"], attacks=list(cfg["attacks"]),
                    radii=[float(r) for r in cfg["radii"]], n_eval=cfg["n_eval"], overrides=overrides,
                    protocol=cfg.get("protocol") or "full")
    try:
        res = resolve(run)
    except (ConfigError, UnknownNameError) as exc:  # its parameters travel as --set pairs: say which
        raise ConfigError("audit: the record's configuration is not one fabench evaluate runs: "
                          f"{str(exc).removeprefix('--set ')}") from None
    if res.key != record.key:
        resolved = res.config
        differ = sorted(k for k in set(resolved) | set(cfg) if config_key({k: resolved.get(k)}) != config_key({k: cfg.get(k)}))
        raise ConfigError(f"audit: resolving the record's configuration does not give it back (its "
                          f"{', '.join(differ) or 'key'} differ: another fabench or other plugins?); run fabench "
                          "evaluate again")
    return res


def check_writable(record_path: Path) -> Path:
    """``<record>.audit`` (:func:`audit_path`) can be written: a ConfigError naming why not, to be
    called before any work (an audit that cannot be saved is wasted). Returns the path."""
    import tempfile

    path = audit_path(record_path)
    if path.is_dir():
        raise ConfigError(f"audit: cannot write {str(path)!r}: it is a directory")
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise ConfigError(f"audit: cannot write {str(path)!r}: {exc.strerror or exc}") from None
    return path


#: ``fabench audit`` options that describe the record to find (as for evaluate), with the defaults
#: they take when not given (their command-line defaults are ``None``: see :func:`refuse_record_options`).
RECORD_OPTIONS = {"task": None, "recipe": None, "seed": 0, "attacks": None, "epsilons": None,
                  "record_n_eval": 0, "set": None, "out": None}


def refuse_record_options(given: Mapping[str, Any]) -> None:
    """With a record file, the options that describe a record (:data:`RECORD_OPTIONS`) must not be
    given (they would be ignored): a ConfigError naming them. ``given``: option name -> value as
    parsed, ``None`` (or absent) for an option not given (e.g. ``vars(args)``: the command line's
    defaults of these options are ``None``), so that one given at its default value (``--seed 0``)
    is refused too."""
    named = [f"--{k.replace('_', '-')}" for k in RECORD_OPTIONS if given.get(k) is not None]
    if named:
        raise ConfigError(f"audit: {', '.join(named)} {'describes' if len(named) == 1 else 'describe'} a record to "
                          "look up; with a record file give none of them")


def audit(
    record: Record, *, n_eval: int = 0, attacks: Sequence[str] = STRONG_ATTACKS,
    overrides: Mapping[str, Mapping[str, Any]] | None = None, data_dir: str | None = None,
    cache_dir: str | None = None, progress: ProgressFn = no_progress, batch_size: int = AUDIT_BATCH,
) -> AuditResult:
    """Rebuild the record's model, run its protocol, then the strong suite below each point's distance.

    Before any work it refuses (one-line ConfigError) a negative ``n_eval``, an empty ``attacks``,
    overrides out of their attack's range or for an attack not run, and a record that
    :func:`resolve_record` refuses (malformed, impossible, or a configuration evaluate would not run).

    ``n_eval = 0`` audits the record's own test points (all of them, or its seeded subset);
    ``n_eval > 0`` a seeded subset of that size. See the module docstring for how the strong suite
    is run (only where it can beat the protocol, ``batch_size`` points per attack call)."""
    import time

    if isinstance(n_eval, bool) or not isinstance(n_eval, int) or n_eval < 0:
        raise ConfigError(f"audit: --n-eval must be >= 0 (0 = the record's own points), got {n_eval!r}")
    if not attacks:
        raise ConfigError(f"audit: no strong attacks (--strong names none; the suite: {', '.join(STRONG_ATTACKS)})")
    unknown_over = sorted(set(overrides or {}) - set(attacks))
    if unknown_over:
        raise ConfigError(f"audit: --strong-set for {', '.join(unknown_over)}, which is not among the strong attacks run")
    cfg = record.config
    if not isinstance(record.key, str) or not isinstance(cfg, dict) or record.key != config_key(cfg):
        raise ConfigError("audit: the record's key is not the key of its configuration (edited by hand?); "
                          "run fabench evaluate again")
    resolved = resolve_record(record)  # what evaluate refuses, refused here (before any work)
    task, recipe = resolved.task, resolved.recipe
    seed = int(record.seed)
    n_eval = int(n_eval) if n_eval > 0 else int(cfg.get("n_eval", 0) or 0)
    reported = record_curve(record)  # the numbers the audit checks (a ConfigError before any work)
    radii = [float(r) for r in record.radii]
    over = {k: dict(v) for k, v in (overrides or {}).items()}
    own = [AttackSpec(n, registry.attacks.get(n), dict(p)) for n, p in cfg["attacks"].items()]
    strong = []
    modified: list[str] = []
    for name in attacks:
        entry = registry.attacks.entry(name)
        unknown = set(over.get(name, {})) - set(entry.meta.params)
        if unknown:
            raise ConfigError(f"audit: attack {name} has no parameter {', '.join(sorted(unknown))}")
        suite_params = P.resolve(entry.meta.params, STRONG_PARAMS.get(name, {}), owner=f"attack {name}")
        # --strong-set values are checked as evaluate's --set are: types, ranges, choices
        params = P.resolve(entry.meta.params, STRONG_PARAMS.get(name, {}), over.get(name, {}),
                           owner=f"audit: --strong-set {name}", bounds=entry.meta.bounds,
                           choices=entry.meta.choices)
        if params != suite_params:
            modified.append(name)
        strong.append(AttackSpec(name, entry.obj, params))
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data = task.load(dict(resolved.task_params), seed=seed, data_dir=data_dir, progress=progress)
    check_n_eval(n_eval, n_test=len(data.x_test))  # before any training
    model = recipe.fit(data, dict(resolved.recipe_params),
                       context=FitContext(seed=seed, progress=progress, cache_dir=cache_dir, data_dir=data_dir))
    model.eval()
    timings["data + train"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    # the record's own protocol as evaluate ran it (its mode, its batches: the same attack seeds)
    batch = record.runtime.get("batch_size") if isinstance(record.runtime, dict) else None
    base = run_protocol(model, data, own, radii=radii, n_eval=n_eval, seed=seed,
                        batch_size=batch if isinstance(batch, int) and batch > 0 else 500,
                        mode=str(cfg.get("protocol", "full") or "full"), progress=progress)
    timings["record protocol"] = time.perf_counter() - t0
    x, y = data.x_test[base.indices], data.y_test[base.indices]
    worst = base.worst_broken.clone()
    t0 = time.perf_counter()
    certified = certified_robust(model, x, y, radii)
    timings["certificate"] = time.perf_counter() - t0
    curves: dict[str, dict[str, float]] = {}
    calls: dict[str, int] = {}
    ran = {s.name: {k: v for k, v in s.params.items() if k != "strict"} for s in own}
    skipped: dict[str, str] = {}
    strong = sorted(strong, key=lambda s: not getattr(s.attack, "minimization", False))  # run order
    for spec in strong:
        t0 = time.perf_counter()
        if ran.get(spec.name) == {k: v for k, v in spec.params.items() if k != "strict"}:
            # the record's protocol already ran it with these parameters (e.g. exact): nothing new
            skipped[spec.name] = SKIP_ALREADY_RUN
        elif _exact_inapplicable(spec, model):
            skipped[spec.name] = SKIP_INAPPLICABLE  # it would claim nothing
        if spec.name in skipped:
            curves[spec.name] = {radius_key(r): float(a) for r, a in zip(radii, (~worst).float().mean(1))}
            continue
        found, calls[spec.name] = strong_breaks(model, data, spec, x, y, base.clean_correct, radii,
                                                worst | certified, seed=seed, batch_size=batch_size,
                                                progress=progress)
        worst = torch.cummax((worst | found).int(), dim=0).values.bool()
        curves[spec.name] = {radius_key(r): float(a) for r, a in zip(radii, (~worst).float().mean(1))}
        timings[f"strong {spec.name}"] = time.perf_counter() - t0
    rerun = {radius_key(r): v for r, v in base.robust_accuracy().items()}
    hard_acc = {radius_key(r): float(a) for r, a in zip(radii, (~worst).float().mean(1))}
    own_points = len(base.indices) == int(record.n_eval)
    reproduced, difference = reproduction(reported, rerun, same_points=own_points)
    # On the record's own points the gaps are against its numbers; on a subset (--n-eval) the record's
    # numbers are of other points, so against the re-run on the subset (such an audit vouches for nothing).
    gaps = gaps_against(reported if own_points else rerun, hard_acc)
    return AuditResult(
        record_key=record.key, record_digest=record_digest(record), n_eval=len(base.indices), radii=radii,
        record=reported, protocol=rerun, reproduced=reproduced, max_difference=difference,
        strong={**{s.name: curves[s.name] for s in strong}, "worst": hard_acc},
        gaps=gaps, max_gap=max(gaps.values()) if gaps else 0.0,
        suite=suite_summary([s.name for s in strong if s.name not in skipped], skipped, modified),
        config={"attacks": {s.name: dict(s.params) for s in strong}, "n_eval": n_eval,
                "record_n_eval": int(record.n_eval), "seed": seed,
                "attack_calls": calls, "skipped": [s.name for s in strong if s.name in skipped],
                "certified_open": int((~worst & ~certified).any(0).sum())},
        timings=timings,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )


def _exact_inapplicable(spec: AttackSpec, model: "Classifier") -> bool:
    """Whether ``spec`` is fabench's ``exact`` (not strict) on a model it cannot solve."""
    from fabench.attacks.exact import ExactAttack, solves

    return isinstance(spec.attack, ExactAttack) and not bool(spec.params.get("strict", True)) and not solves(model)


def strong_breaks(
    model: "Classifier", data: TaskData, spec: AttackSpec, x: torch.Tensor, y: torch.Tensor,
    clean_correct: torch.Tensor, radii: Sequence[float], done: torch.Tensor, *, seed: int,
    batch_size: int = AUDIT_BATCH, progress: ProgressFn = no_progress,
) -> tuple[torch.Tensor, int]:
    """Where ``spec`` breaks points where ``done`` (``R x N``: broken by what ran before, or
    certified robust) leaves them open; ``done`` is a band: certified below, broken above.

    A minimisation attack runs once on the points not broken at every radius. A fixed-epsilon
    attack walks down: point ``i`` is attacked first at the largest radius below its current
    minimal distance, and again one radius lower only where that succeeded. Every outcome is
    checked by fabench's validation (adversarial examples on the model). Returns the ``R x N``
    breaks and the number of attack calls."""
    n_r, n = done.shape
    found = torch.zeros(n_r, n, dtype=torch.bool)
    is_open = ~done
    # the largest open radius of each point (-1: none): below its minimal distance found so far
    top = torch.where(is_open.any(0), n_r - 1 - is_open.flip(0).int().argmax(0), torch.full((n,), -1))
    minimization = bool(getattr(spec.attack, "minimization", False))
    calls = 0
    run_seed = attack_seed(seed, spec.name)

    def call(sel: torch.Tensor, rad: tuple[float, ...]) -> torch.Tensor:
        nonlocal calls
        calls += 1
        out = spec.attack.run(model, x[sel], y[sel], rad, data=data, params=spec.params, seed=run_seed + calls)
        check_outcome(out, spec, model, x[sel], y[sel], clean_correct[sel], rad, data)
        return out.broken.cpu()

    if minimization:
        pts = ((top >= 0) & clean_correct).nonzero().squeeze(1)
        progress(f"audit {spec.name}", 0, len(pts))
        for b0 in range(0, len(pts), batch_size):
            sel = pts[b0:b0 + batch_size]
            found[:, sel] = call(sel, tuple(radii))
            progress(f"audit {spec.name}", min(b0 + batch_size, len(pts)), len(pts))
        return found, calls
    target = top.clone()
    positive = torch.tensor([float(r) > 0 for r in radii])
    active = clean_correct & (target >= 0)
    active &= positive[target.clamp_min(0)] & is_open[target.clamp_min(0), torch.arange(n)]
    total = int(active.sum())
    progress(f"audit {spec.name}", 0, total)
    while bool(active.any()):
        for t in target[active].unique().tolist():
            pts = (active & (target == t)).nonzero().squeeze(1)
            for b0 in range(0, len(pts), batch_size):
                sel = pts[b0:b0 + batch_size]
                ok = call(sel, (float(radii[t]),))[0]
                found[t, sel[ok]] = True
                target[sel[ok]] -= 1
                active[sel[~ok]] = False
        active &= target >= 0
        active &= positive[target.clamp_min(0)] & is_open[target.clamp_min(0), torch.arange(n)]
        progress(f"audit {spec.name}", total - int(active.sum()), total)
    return found, calls


def write_audit(result: AuditResult, record_path: Path) -> Path:
    """Write ``<record>.audit`` atomically; a failure is a one-line ConfigError (see also
    :func:`check_writable`, to be called before the work)."""
    path = audit_path(record_path)
    try:
        write_atomic(path, json.dumps(result.to_json(), indent=1) + "\n")
    except OSError as exc:
        raise ConfigError(f"audit: cannot write {str(path)!r}: {exc.strerror or exc}") from None
    return path


def format_audit(result: AuditResult) -> str:
    """The audit's report: per radius the record's number, the re-run protocol's, each strong
    attack's (cumulative) and the gap; then whether the re-run reproduced the record and which
    strong attacks ran."""
    from tabulate import tabulate

    names = [n for n in result.strong if n != "worst"]
    rows = [[f"{r:g}", result.record[radius_key(r)], result.protocol[radius_key(r)]]
            + [result.strong[n][radius_key(r)] for n in names]
            + [result.strong["worst"][radius_key(r)], result.gaps[radius_key(r)]] for r in result.radii]
    lines = [f"audit of record {result.record_key[:12]} on {result.n_eval} test points "
             f"(robust accuracy; re-run: the record's protocol run again; each strong column: the re-run and the "
             f"strong attacks up to it; gap = record - strong worst case (on a --n-eval subset: re-run - strong worst case), "
             f"> 0: the record overstated robustness)",
             tabulate(rows, headers=["radius", "record", "re-run"] + names + ["strong worst", "gap"], floatfmt=".3f",
                      tablefmt="github")]
    record_n = result.config.get("record_n_eval", result.n_eval)
    if result.reproduced:
        lines.append("the re-run reproduced the record's numbers")
    elif record_n != result.n_eval:
        lines.append(f"a --n-eval subset ({result.n_eval} of the record's {record_n} points) cannot reproduce the "
                     "record's numbers, which are of other points: the gaps are against the re-run on the subset, "
                     "and the leaderboard shows this audit as not reproduced")
    else:
        lines.append(f"WARNING: the re-run did not reproduce the record's numbers (largest difference "
                     f"{result.max_difference:.3f}, {result.n_eval} audited points): the gaps are against the "
                     "record's numbers, and the leaderboard shows this audit as not reproduced")
    skipped = result.suite.get("skipped", {})
    lines.append("strong attacks run: " + (", ".join(result.suite.get("ran", [])) or "none")
                 + "".join(f"; {n} skipped ({why})" for n, why in skipped.items()))
    if not result.suite.get("full"):
        modified = result.suite.get("modified", [])
        lines.append("a partial audit (not the whole strong suite" + (f"; other parameters for {', '.join(modified)}"
                                                                      if modified else "") + ")")
    beaten = result.beaten
    if beaten:
        lines.append("the strong suite found the record's robust accuracy too high at "
                     + ", ".join(f"r={r} by {g:.3f}" for r, g in beaten.items()))
    else:
        lines.append("the strong suite never beat the record's numbers")
    return "\n".join(lines)
