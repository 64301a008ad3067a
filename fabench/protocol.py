"""The common evaluation protocol: every attack at every radius, and the worst case per point.

For ``N`` test points and radii ``r_1 < ... < r_R``:

* robust accuracy of an attack at ``r`` = fraction of points that are classified correctly and
  for which the attack found no adversarial example within L2 distance ``r``;
* the **worst case** counts a point as broken at ``r`` if *any* attack broke it there, so it is never
  above any single attack;
* the minimal distance of a point is the smallest distance any attack found (``0`` when the point
  is misclassified clean, ``inf`` when no attack broke it); the report gives its median.

Points misclassified clean count as broken at every radius, for every attack.

Two modes (``run_protocol(..., mode=...)``, recorded in :attr:`ProtocolResult.mode`):

* ``full`` (default): every attack runs on every point at every radius; each attack's curve is
  its own.
* ``fast`` (worst case only): minimisation attacks run first (in the order given), then the
  fixed-epsilon ones; each attack only works on what the earlier ones left. A minimisation attack
  gets every point not yet broken at every radius, and every radius (its cost does not depend on
  them). A fixed-epsilon attack gets a point no earlier attack broke at any radius on all its open
  radii (its own search over them, e.g. PGD's bisection); a point first broken at radius ``r_i``
  is given only ``r_{i-1}`` (the largest open ball, so the likeliest to break; whether it breaks
  there is all that can still change the worst case) and ``r_i`` (what the attack finds there
  warm-starts its search at ``r_{i-1}``), and, where it broke the point lower, the same again
  below its new first broken radius (a walk down: about two attack runs per point where the
  earlier attacks were right, instead of a search over the whole band). An attack that takes
  per-point bands (``searches_bands(params)``: pgd's and apgd's bisection; see
  :class:`fabench.attacks.base.Bands`) gets all its points in one call per batch, each with its
  band, and walks down inside that call; any other fixed-epsilon attack is called per group of
  points with the same radii (and per step of the walk). A point broken at every radius is skipped.
  Before the first fixed-epsilon attack, points are also closed at the radii
  :func:`fabench.certify.certified_robust` proves them robust at (with a margin above the
  attacks' radius tolerance), where no attack can break them: on two-layer heads on the input
  whose exact distance is tight (binary, robust) nothing is left for the fixed-epsilon attacks.
  The worst case is never above ``full``'s for the same attacks (up to their randomness), but
  ``outcomes[name]`` is then **not the attack's own curve**: it is the worst case of that attack
  and every attack run before it (so the last one's equals the worst case), and
  ``min_distance`` is the smallest distance found on the points each attack was given.
"""

from __future__ import annotations

import math
import numbers
import time
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from fabench._lazy import lazy
from fabench.device import module_device
from fabench.errors import ConfigError
from fabench.types import Attack, AttackOutcome, ProgressFn, TaskData, no_progress
from fabench.validation import MAX_RADII, MAX_RADIUS, check_outcome

if TYPE_CHECKING:  # pragma: no cover - heavy imports are lazy (see fabench._lazy)
    import numpy as np
    import torch

    from fabench.models import Classifier
else:
    np = lazy("numpy")
    torch = lazy("torch")

@dataclass(frozen=True)
class AttackSpec:
    """An attack to run, its resolved parameters, and its registered name."""

    name: str
    attack: Attack
    params: Mapping[str, Any]


@dataclass
class ProtocolResult:
    radii: tuple[float, ...]
    indices: torch.Tensor
    clean_correct: torch.Tensor
    outcomes: dict[str, AttackOutcome]
    worst_broken: torch.Tensor
    min_distance: torch.Tensor
    timings: dict[str, float] = field(default_factory=dict)
    verified: dict[str, bool] = field(default_factory=dict)
    """Per attack: True when every claim it made came with an adversarial example checked on the model."""
    mode: str = "full"
    """``full`` (every attack's own curve) or ``fast`` (worst case only; see the module docstring)."""

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean_correct.float().mean())

    def robust_accuracy(self, attack: str = "worst") -> dict[float, float]:
        broken = self.worst_broken if attack == "worst" else self.outcomes[attack].broken
        acc = (~broken).float().mean(dim=1)
        return {r: float(a) for r, a in zip(self.radii, acc)}

    def median_distance(self, attack: str = "worst") -> float:
        d = self.min_distance if attack == "worst" else self.outcomes[attack].distances
        return float(np.median(d.double().numpy())) if len(d) else float("nan")


def check_radii(radii: Sequence[float]) -> tuple[float, ...]:
    """Sorted, de-duplicated, non-negative finite radii, or a ConfigError (also for radii that are
    not a sequence of real numbers: text such as ``"0,1,2"``, ``None`` or a bool among them)."""
    if isinstance(radii, (str, bytes)) or not isinstance(radii, Iterable):
        raise ConfigError(f"radii must be a sequence of numbers, got {radii!r}")
    out: list[float] = []
    for r in radii:
        if isinstance(r, bool) or not isinstance(r, numbers.Real):
            raise ConfigError(f"radii must be numbers, got {r!r}")
        try:
            v = float(r) + 0.0  # -0.0 is radius 0 (one key for one computation)
        except OverflowError:  # an integer such as 10**400
            v = math.inf
        if not np.isfinite(v) or v < 0 or v > MAX_RADIUS:
            raise ConfigError(f"radii must be finite, non-negative and at most {MAX_RADIUS:g}, got {r!r}")
        out.append(v)
    if not out:
        raise ConfigError("need at least one radius")
    if len(out) > MAX_RADII:
        raise ConfigError(f"{len(out)} radii; at most {MAX_RADII} are accepted")
    return tuple(sorted(set(out)))


def attack_seed(seed: int, name: str) -> int:
    """A per-attack seed derived from the run's seed and the attack's name."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**31)


#: The most test points ``--n-eval`` may ask for: the most a built-in task has (the bound of its
#: ``n_test``, :data:`fabench.data.store.MAX_IMAGES`); the test set's own size bounds it further.
MAX_N_EVAL = 100_000_000


def check_n_eval(n_eval: object, *, n_test: int | None = None, what: str = "--n-eval") -> int:
    """``n_eval`` if it is an integer from 0 (all test points) to :data:`MAX_N_EVAL` and, once the
    test set's size ``n_test`` is known, at most that; else a ConfigError. More points than the test
    set holds would attack all of them under another configuration key than 0."""
    if isinstance(n_eval, bool) or not isinstance(n_eval, int) or not 0 <= n_eval <= MAX_N_EVAL:
        raise ConfigError(f"{what} {n_eval!r}: expected an integer from 0 (all test points) to {MAX_N_EVAL:,}")
    if n_test is not None and n_eval > n_test:
        raise ConfigError(f"{what} {n_eval} but the test set holds {n_test} points (0 = all of them)")
    return n_eval


def select_points(n_test: int, n_eval: int, seed: int) -> torch.Tensor:
    """The test points to attack: all of them, or a seeded random subset of ``n_eval``
    (:func:`check_n_eval`: more than ``n_test`` is a ConfigError)."""
    check_n_eval(n_eval, n_test=n_test)
    if n_eval == 0 or n_eval == n_test:
        return torch.arange(n_test)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_test, generator=g)[:n_eval].sort().values


PROTOCOL_MODES = ("full", "fast")


def run_protocol(
    model: Classifier,
    data: TaskData,
    attacks: Sequence[AttackSpec],
    *,
    radii: Sequence[float],
    n_eval: int = 0,
    seed: int = 0,
    batch_size: int = 500,
    device: "torch.device | str | None" = None,
    progress: ProgressFn = no_progress,
    mode: str = "full",
) -> ProtocolResult:
    """Run every attack on the selected test points, batch by batch, and combine them.

    The points are attacked on ``device`` (default: where the model is); the outcomes are combined
    on the CPU. ``mode`` is ``"full"`` (every attack everywhere) or ``"fast"`` (each attack only where
    the earlier ones left points unbroken; see the module docstring)."""
    if mode not in PROTOCOL_MODES:
        raise ConfigError(f"protocol mode {mode!r} is not one of {', '.join(PROTOCOL_MODES)}")
    radii = check_radii(radii)
    if mode == "fast":
        return _run_fast(model, data, attacks, radii=radii, n_eval=n_eval, seed=seed, batch_size=batch_size,
                         device=device, progress=progress)
    idx = select_points(len(data.x_test), n_eval, seed)
    dev = torch.device(device) if device is not None else module_device(model)
    x, y = data.x_test[idx].to(dev), data.y_test[idx].to(dev)
    model.eval()
    clean_on_device = model.correct(x, y)
    clean_correct = clean_on_device.cpu()
    n, timings = len(x), {}
    outcomes: dict[str, AttackOutcome] = {}
    verified: dict[str, bool] = {}
    for spec in attacks:
        start = time.perf_counter()
        broken, dists = [], []
        progress(f"attack {spec.name}", 0, n)
        for b0 in range(0, n, batch_size):
            sl = slice(b0, b0 + batch_size)
            out = spec.attack.run(
                model, x[sl], y[sl], radii, data=data, params=spec.params,
                seed=attack_seed(seed, spec.name) + b0,
            )
            verified[spec.name] = check_outcome(out, spec, model, x[sl], y[sl], clean_on_device[sl], radii,
                                                data) and verified.get(spec.name, True)
            broken.append(out.broken.cpu())
            dists.append(out.distances.cpu())
            progress(f"attack {spec.name}", min(b0 + batch_size, n), n)
        b = torch.cat(broken, dim=1) | ~clean_correct[None, :]
        b = torch.cummax(b.int(), dim=0).values.bool()  # an adversarial within r is within r' > r
        d = torch.where(clean_correct, torch.cat(dists), torch.zeros(n))
        outcomes[spec.name] = AttackOutcome(radii, b, d)
        timings[f"attack {spec.name}"] = time.perf_counter() - start
    worst = ~clean_correct[None, :].expand(len(radii), n).clone()
    min_d = torch.where(clean_correct, torch.full((n,), float("inf")), torch.zeros(n))
    for o in outcomes.values():
        worst |= o.broken
        min_d = torch.minimum(min_d, o.distances)
    return ProtocolResult(radii, idx, clean_correct, outcomes, worst, min_d, timings, verified)


def _run_fast(
    model: Classifier, data: TaskData, attacks: Sequence[AttackSpec], *, radii: tuple[float, ...], n_eval: int,
    seed: int, batch_size: int, device: "torch.device | str | None", progress: ProgressFn,
) -> ProtocolResult:
    """The ``fast`` mode of :func:`run_protocol`: the worst case, each attack on what is left."""
    from fabench.attacks.base import outcome_from_distances

    idx = select_points(len(data.x_test), n_eval, seed)
    dev = torch.device(device) if device is not None else module_device(model)
    x, y = data.x_test[idx].to(dev), data.y_test[idx].to(dev)
    model.eval()
    clean_on_device = model.correct(x, y)
    clean_correct = clean_on_device.cpu()
    n, n_r, timings = len(x), len(radii), {}
    outcomes: dict[str, AttackOutcome] = {}
    verified: dict[str, bool] = {}
    worst = ~clean_correct[None, :].expand(n_r, n).clone()
    min_d = torch.where(clean_correct, torch.full((n,), float("inf")), torch.zeros(n))

    def run_batch(spec: AttackSpec, sel: torch.Tensor, n_0: int, n_c: int, **extra: Any) -> int:
        """Run ``spec`` on the points ``sel`` at ``radii[n_0:n_c]`` and merge its outcome into the
        worst case: the cells it broke, and every radius above a distance it found (also below the
        radii asked). Gives the number of points run."""
        rad = radii[n_0:n_c]
        out = spec.attack.run(model, x[sel], y[sel], rad, data=data, params=spec.params,
                              seed=attack_seed(seed, spec.name) + int(sel[0]), **extra)
        ok = check_outcome(out, spec, model, x[sel], y[sel], clean_on_device[sel], rad, data)
        verified[spec.name] = ok and verified.get(spec.name, True)
        d = torch.where(clean_correct[sel], out.distances.float().cpu(), torch.zeros(len(sel)))
        worst[n_0:n_c, sel] |= out.broken.cpu()
        worst[:, sel] |= outcome_from_distances(radii, d).broken
        min_d[sel] = torch.minimum(min_d[sel], d)
        return len(sel)

    order = [s for s in attacks if getattr(s.attack, "minimization", False)]
    order += [s for s in attacks if not getattr(s.attack, "minimization", False)]
    closed: torch.Tensor | None = None  # R x N certified robust, once the minimisation attacks ran
    given = torch.arange(n)  # the points the last minimisation attack was given
    for spec in order:
        minimization = bool(getattr(spec.attack, "minimization", False))
        if not minimization and closed is None:
            start = time.perf_counter()
            closed = _certified_cells(model, x, y, radii, given, batch_size)
            timings["certify (closure)"] = time.perf_counter() - start
        start = time.perf_counter()
        left = n_r - worst.sum(dim=0)  # radii below the first one an earlier attack broke the point at
        # (point indices, first radius, end radius) jobs, run per batch of points.
        if minimization:
            given = (left > 0).nonzero().squeeze(1)
            jobs, low = [(given, 0, n_r)], torch.zeros(n, dtype=torch.long)
        else:  # skipping the radii each point is certified robust at (a prefix below its radius)
            assert closed is not None
            low = torch.minimum(closed.sum(dim=0), left)
            fresh = (left == n_r) & (left > low)  # broken nowhere yet: the attack's own search
            jobs = [((fresh & (low == lo)).nonzero().squeeze(1), int(lo), n_r) for lo in low[fresh].unique().tolist()]
        # The walk down: a point first broken at r_i is given r_{i-1} and r_i only (a success at
        # r_i, where an earlier attack succeeded, warm-starts the search at r_{i-1}), and the same
        # again below wherever it broke the point lower.
        walk = (torch.zeros(0, dtype=torch.long) if minimization
                else ((left < n_r) & (left > low)).nonzero().squeeze(1))
        total, done = sum(len(p) for p, _, _ in jobs) + len(walk), 0
        progress(f"attack {spec.name}", 0, total)
        searches_bands = getattr(spec.attack, "searches_bands", None)
        if not minimization and callable(searches_bands) and searches_bands(spec.params):
            # One call per batch for every point, each with its own band (the attack's own
            # bisection over it, walking down to the certified prefix): the same probes as the
            # groups below, in batches instead of a call per group and walk step.
            from fabench.attacks.base import Bands

            first_b = n_r - worst.sum(dim=0)
            pts = torch.cat([p for p, _, _ in jobs] + [walk]).sort().values
            bands = Bands(torch.where(first_b < n_r, first_b - 1, low), torch.where(first_b < n_r, first_b + 1, n_r),
                          low)
            for b0 in range(0, len(pts), batch_size):
                sel = pts[b0 : b0 + batch_size]
                done += run_batch(spec, sel, 0, n_r, bands=bands[sel])
                progress(f"attack {spec.name}", done, total)
            jobs, walk = [], walk[:0]
        while len(jobs) or len(walk):
            first = n_r - worst[:, walk].sum(dim=0)
            jobs += [(walk[first == c], int(c) - 1, int(c) + 1) for c in first.unique().tolist()]
            for pts, n_0, n_c in jobs:
                for b0 in range(0, len(pts), batch_size):
                    sel = pts[b0 : b0 + batch_size]
                    done += run_batch(spec, sel, n_0, n_c)
                    progress(f"attack {spec.name}", done, total)
            worst = torch.cummax(worst.int(), dim=0).values.bool()
            now = n_r - worst[:, walk].sum(dim=0)
            walk, jobs = walk[(now < first) & (now > low[walk])], []
            if len(walk) == 0:
                break
            total += len(walk)
        worst = torch.cummax(worst.int(), dim=0).values.bool()
        outcomes[spec.name] = AttackOutcome(radii, worst.clone(), min_d.clone())
        verified.setdefault(spec.name, False)  # given no point: it verified nothing
        timings[f"attack {spec.name}"] = time.perf_counter() - start
    outcomes = {s.name: outcomes[s.name] for s in attacks}
    return ProtocolResult(radii, idx, clean_correct, outcomes, worst, min_d, timings, verified, mode="fast")


#: Margin of the fast mode's certificate closure: a point is closed at ``r`` only where it is
#: certified robust at ``r * (1 + CERTIFIED_RTOL)``, well above the attacks' ``RADIUS_RTOL``.
CERTIFIED_RTOL = 1e-4


def _certified_cells(model: Classifier, x: torch.Tensor, y: torch.Tensor, radii: tuple[float, ...],
                     given: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``R x N`` (on the CPU): where :func:`fabench.certify.certified_robust` proves the points in
    ``given`` robust (certified on the same batches the exact attack had, so its work is reused)."""
    out = torch.zeros(len(radii), len(x), dtype=torch.bool)
    if not getattr(model, "identity_backbone", False) or len(given) == 0:
        return out  # with a backbone the certificate holds in feature space only: nothing to close
    from fabench.certify import certified_robust

    from fabench.models.classifier import cpu_twin

    try:  # on the CPU, as the exact attack (a copy of the model there: small heads; the same twin)
        out[:, given] = certified_robust(cpu_twin(model), x[given].cpu(), y[given].cpu(), radii, rtol=CERTIFIED_RTOL,
                                         batch_size=batch_size)
    except ConfigError:  # a head the certificate does not cover (e.g. a fine head with |J+| != |J-|)
        pass
    return out
