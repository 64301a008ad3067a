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

It reports every radius where the strong worst case (protocol and strong suite together) is below
the protocol's, by how much (robust accuracy, same points; the gap is never negative).
``strong[name]`` is the robust accuracy after the protocol and the strong attacks up to and
including ``name`` in run order (minimisation attacks first; the report's columns follow it, so
they never increase left to right, and the last one equals ``strong["worst"]``), not the attack's
own curve.
The result is written atomically next to the record as ``<record>.audit`` with the record's key
and a digest of the numbers it vouches for (:func:`record_digest`), so the leaderboard can show
whether a row was audited and the largest gap found; once the record is recomputed with other
numbers (other code, another backbone), its audit no longer applies and is not shown.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from fabench import params as P
from fabench import registry
from fabench.certify import certified_robust
from fabench.errors import ConfigError
import torch

from fabench.protocol import AttackSpec, attack_seed, run_protocol
from fabench.records import Record, radius_key, write_atomic
from fabench.types import FitContext, ProgressFn, TaskData, no_progress
from fabench.validation import check_outcome

if TYPE_CHECKING:  # pragma: no cover
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


@dataclass
class AuditResult:
    """What an audit found; ``gaps[r]`` = record protocol's robust accuracy minus the strong
    suite's worst case at radius ``r`` on the audited points (positive: the record overstated)."""

    record_key: str
    record_digest: str
    """:func:`record_digest` of the audited record: the audit applies to a record with these numbers."""
    n_eval: int
    radii: list[float]
    protocol: dict[str, float]
    strong: dict[str, dict[str, float]]
    gaps: dict[str, float]
    max_gap: float
    config: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    created: str = ""

    @property
    def beaten(self) -> dict[str, float]:
        """The radii where the strong suite beat the protocol, with the gap."""
        return {r: g for r, g in self.gaps.items() if g > 0}

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def audit_path(record_path: Path) -> Path:
    """``<record>.audit`` (JSON) beside the record: not ``*.json``, so readers of records never take it for one."""
    return record_path.with_name(record_path.stem + ".audit")


#: The fields of a record that an audit vouches for (its results and the model they describe).
AUDITED_FIELDS = ("n_eval", "radii", "clean_accuracy", "robust_accuracy", "median_min_distance", "median_distance",
                  "fa_score", "cosine_matrix", "certified", "feature_space")


def record_digest(record: Record) -> str:
    """SHA-256 of the record's :data:`AUDITED_FIELDS` (as JSON; the feature space without its
    timings): the same configuration recomputed with the same numbers keeps its digest (timings,
    provenance, versions and runtime do not count), other numbers change it."""
    data = record.to_json()
    fields = {k: data.get(k) for k in AUDITED_FIELDS}
    if isinstance(fields["feature_space"], dict):  # its stage timings are not numbers it vouches for
        fields["feature_space"] = {k: v for k, v in fields["feature_space"].items() if k != "timings"}
    payload = json.dumps(fields, sort_keys=True, allow_nan=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def read_audit(record_path: Path, record: Record) -> dict[str, Any] | None:
    """The audit written for this record: ``None`` when absent, unreadable, for another key, or
    for other numbers (its ``record_digest`` is not :func:`record_digest` of ``record``, or it has
    none: an audit written before fabench recorded it cannot be matched to the numbers)."""
    path = audit_path(record_path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(obj, dict) or obj.get("record_key") != record.key:
        return None
    return obj if obj.get("record_digest") == record_digest(record) else None


def audit(
    record: Record, *, n_eval: int = 0, attacks: Sequence[str] = STRONG_ATTACKS,
    overrides: Mapping[str, Mapping[str, Any]] | None = None, data_dir: str | None = None,
    cache_dir: str | None = None, progress: ProgressFn = no_progress, batch_size: int = AUDIT_BATCH,
) -> AuditResult:
    """Rebuild the record's model, run its protocol, then the strong suite below each point's distance.

    ``n_eval = 0`` audits the record's own test points (all of them, or its seeded subset);
    ``n_eval > 0`` a seeded subset of that size. See the module docstring for how the strong suite
    is run (only where it can beat the protocol, ``batch_size`` points per attack call)."""
    import time

    from fabench.evaluation import get_task

    cfg = record.config
    task, _ = get_task(record.task)
    recipe = registry.recipes.get(record.recipe)
    seed = int(record.seed)
    n_eval = int(n_eval) if n_eval > 0 else int(cfg.get("n_eval", 0) or 0)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data = task.load(dict(cfg["task_params"]), seed=seed, data_dir=data_dir, progress=progress)
    model = recipe.fit(data, dict(cfg["recipe_params"]),
                       context=FitContext(seed=seed, progress=progress, cache_dir=cache_dir, data_dir=data_dir))
    model.eval()
    timings["data + train"] = time.perf_counter() - t0
    radii = [float(r) for r in record.radii]
    over = {k: dict(v) for k, v in (overrides or {}).items()}
    own = [AttackSpec(n, registry.attacks.get(n), dict(p)) for n, p in cfg["attacks"].items()]
    strong = []
    for name in attacks:
        entry = registry.attacks.entry(name)
        unknown = set(over.get(name, {})) - set(entry.meta.params)
        if unknown:
            raise ConfigError(f"audit: attack {name} has no parameter {', '.join(sorted(unknown))}")
        strong.append(AttackSpec(name, entry.obj, P.resolve(entry.meta.params, STRONG_PARAMS.get(name, {}),
                                                            over.get(name, {}), owner=f"attack {name}")))
    t0 = time.perf_counter()
    # the record's own protocol as evaluate ran it (its mode, its batches: the same attack seeds)
    base = run_protocol(model, data, own, radii=radii, n_eval=n_eval, seed=seed,
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
    skipped: list[str] = []
    strong = sorted(strong, key=lambda s: not getattr(s.attack, "minimization", False))  # run order
    for spec in strong:
        t0 = time.perf_counter()
        if ran.get(spec.name) == {k: v for k, v in spec.params.items() if k != "strict"}:
            # the record's protocol already ran it with these parameters (e.g. exact): nothing new
            skipped.append(spec.name)
            curves[spec.name] = {radius_key(r): float(a) for r, a in zip(radii, (~worst).float().mean(1))}
            continue
        found, calls[spec.name] = strong_breaks(model, data, spec, x, y, base.clean_correct, radii,
                                                worst | certified, seed=seed, batch_size=batch_size,
                                                progress=progress)
        worst = torch.cummax((worst | found).int(), dim=0).values.bool()
        curves[spec.name] = {radius_key(r): float(a) for r, a in zip(radii, (~worst).float().mean(1))}
        timings[f"strong {spec.name}"] = time.perf_counter() - t0
    base_acc = base.robust_accuracy()
    hard_acc = {r: float(a) for r, a in zip(radii, (~worst).float().mean(1))}
    gaps = {radius_key(r): round(base_acc[r] - hard_acc[r], 6) for r in radii}
    return AuditResult(
        record_key=record.key, record_digest=record_digest(record), n_eval=len(base.indices), radii=radii,
        protocol={radius_key(r): v for r, v in base_acc.items()},
        strong={**{s.name: curves[s.name] for s in strong}, "worst": {radius_key(r): v for r, v in hard_acc.items()}},
        gaps=gaps, max_gap=max(gaps.values()) if gaps else 0.0,
        config={"attacks": {s.name: dict(s.params) for s in strong}, "n_eval": n_eval, "seed": seed,
                "attack_calls": calls, "skipped": skipped,
                "certified_open": int((~worst & ~certified).any(0).sum())},
        timings=timings,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )


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
    path = audit_path(record_path)
    write_atomic(path, json.dumps(result.to_json(), indent=1) + "\n")
    return path


def format_audit(result: AuditResult) -> str:
    """The audit's report: per radius the record protocol, each strong attack and the gap."""
    from tabulate import tabulate

    names = [n for n in result.strong if n != "worst"]
    rows = [[f"{r:g}", result.protocol[radius_key(r)]] + [result.strong[n][radius_key(r)] for n in names]
            + [result.strong["worst"][radius_key(r)], result.gaps[radius_key(r)]] for r in result.radii]
    lines = [f"audit of record {result.record_key[:12]} on {result.n_eval} test points "
             f"(robust accuracy; each strong column: the protocol and the strong attacks up to it; "
             f"gap = protocol - strong worst case, > 0: the record overstated robustness)",
             tabulate(rows, headers=["radius", "protocol"] + names + ["strong worst", "gap"], floatfmt=".3f",
                      tablefmt="github")]
    beaten = result.beaten
    if beaten:
        lines.append("strong suite beat the protocol at " + ", ".join(f"r={r} by {g:.3f}" for r, g in beaten.items()))
    else:
        lines.append("the strong suite never beat the protocol")
    return "\n".join(lines)
