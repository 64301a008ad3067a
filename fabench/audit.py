"""``fabench audit``: re-check a finished record with the strong (expensive) attack suite.

The default protocol is tuned to be affordable; an audit asks whether it overstates robustness.
It rebuilds the record's data and model deterministically (same task and recipe parameters, same
seed), picks a seeded subset of the test points (``n_eval``), runs both the record's own attacks
and the strong suite on it, and reports every radius where the strong suite's worst case is
below the record protocol's, by how much (robust accuracy, same points). The result is written
atomically next to the record as ``<record>.audit`` with the record's key, so the
leaderboard can show whether a row was audited and the largest gap found.

The strong suite (:data:`STRONG_ATTACKS`): AutoAttack's APGD-CE (100 iterations x 5 restarts),
FAB-L2 and Square-L2 (5000 queries), foolbox's C&W-L2, and ``exact`` where it applies (two-layer
heads on the input with at most 16 units; skipped otherwise).
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from fabench import params as P
from fabench import registry
from fabench.errors import ConfigError
from fabench.protocol import AttackSpec, run_protocol
from fabench.records import Record, radius_key, write_atomic
from fabench.types import FitContext, ProgressFn, no_progress

STRONG_ATTACKS = ("apgd", "fab", "square", "cw", "exact")
STRONG_PARAMS: dict[str, dict[str, Any]] = {
    "apgd": {"steps": 100, "restarts": 5},
    "square": {"queries": 5000},
    "exact": {"strict": False},
}


@dataclass
class AuditResult:
    """What an audit found; ``gaps[r]`` = record protocol's robust accuracy minus the strong
    suite's worst case at radius ``r`` on the audited points (positive: the record overstated)."""

    record_key: str
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


def read_audit(record_path: Path, key: str) -> dict[str, Any] | None:
    """The audit written for this record (``None`` when absent, unreadable or for another key)."""
    path = audit_path(record_path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return obj if isinstance(obj, dict) and obj.get("record_key") == key else None


def audit(
    record: Record, *, n_eval: int = 500, attacks: Sequence[str] = STRONG_ATTACKS,
    overrides: Mapping[str, Mapping[str, Any]] | None = None, data_dir: str | None = None,
    cache_dir: str | None = None, progress: ProgressFn = no_progress,
) -> AuditResult:
    """Rebuild the record's model and run its protocol and the strong suite on ``n_eval`` points."""
    import time

    from fabench.evaluation import get_task

    cfg = record.config
    task, _ = get_task(record.task)
    recipe = registry.recipes.get(record.recipe)
    seed = int(record.seed)
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
    base = run_protocol(model, data, own, radii=radii, n_eval=n_eval, seed=seed, progress=progress)
    timings["record protocol"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    hard = run_protocol(model, data, strong, radii=radii, n_eval=n_eval, seed=seed, progress=progress)
    timings.update({f"strong {k}": v for k, v in hard.timings.items()})
    base_acc = base.robust_accuracy()
    hard_acc = hard.robust_accuracy()
    gaps = {radius_key(r): round(base_acc[r] - hard_acc[r], 6) for r in radii}
    return AuditResult(
        record_key=record.key, n_eval=len(base.indices), radii=radii,
        protocol={radius_key(r): v for r, v in base_acc.items()},
        strong={**{s.name: {radius_key(r): v for r, v in hard.robust_accuracy(s.name).items()} for s in strong},
                "worst": {radius_key(r): v for r, v in hard_acc.items()}},
        gaps=gaps, max_gap=max(gaps.values()) if gaps else 0.0,
        config={"attacks": {s.name: dict(s.params) for s in strong}, "n_eval": n_eval, "seed": seed},
        timings=timings,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )


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
             f"(robust accuracy; gap = protocol - strong worst case, > 0: the record overstated robustness)",
             tabulate(rows, headers=["radius", "protocol"] + names + ["strong worst", "gap"], floatfmt=".3f",
                      tablefmt="github")]
    beaten = result.beaten
    if beaten:
        lines.append("strong suite beat the protocol at " + ", ".join(f"r={r} by {g:.3f}" for r, g in beaten.items()))
    else:
        lines.append("the strong suite never beat the protocol")
    return "\n".join(lines)
