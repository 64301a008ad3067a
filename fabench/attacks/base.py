"""Helpers every attack shares: turning what it found into a monotone :class:`AttackOutcome`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from fabench._lazy import lazy
from fabench.types import AttackOutcome

if TYPE_CHECKING:  # pragma: no cover - heavy imports are lazy (see fabench._lazy)
    import torch
else:
    torch = lazy("torch")

if TYPE_CHECKING:  # pragma: no cover
    from fabench.models import Classifier

#: Relative slack when comparing a found distance with a radius (float32 round-off).
RADIUS_RTOL = 1e-5

#: Upper ends of the built-in attacks' declared ranges (:attr:`fabench.types.Meta.bounds`): far
#: above any budget in use (the audit's C&W runs 1000 steps at most, APGD 5 restarts), finite so
#: that a mistyped value is refused before any work instead of starting a run that never ends.
#: ``MAX_STEPS`` bounds iteration and query counts, ``MAX_RESTARTS`` restarts.
MAX_STEPS = 1_000_000
MAX_RESTARTS = 10_000
#: The largest step-size-like factor accepted: a PGD step relative to the radius (``rel_stepsize``;
#: a step of 10 radii is projected back onto the sphere from far outside it), the step past the boundary as a
#: fraction of the step to it (DeepFool's ``overshoot``, FAB's ``eta - 1``), C&W's ``stepsize``
#: (Adam's, in tanh space, where a step of 10 saturates every coordinate).
MAX_STEP_FACTOR = 10.0
#: The largest value accepted for a constant with no natural upper end: C&W's ``initial_const``
#: and ``confidence`` (a logit margin; the models here have margins of order 10), the surrogate's
#: softplus ``beta_start``/``beta_end`` (at 1e6 the softplus is the ReLU to float32 precision at
#: any input scale) and ``exact``'s ``polish_band`` (a band of 1e6 polishes every radius below a
#: distance). Far above any use, and finite so that float32 arithmetic cannot overflow (C&W's margin and
#: the softplus's ``beta`` are float32: ``confidence=1e308`` used to end in an internal error).
MAX_CONSTANT = 1e6


def nothing_broken(x: torch.Tensor, radii: Sequence[float]) -> AttackOutcome:
    """The outcome of an attack that claims nothing (it does not apply to the model): no point
    broken at any radius, every distance infinite (reported as ``silent``, see :mod:`fabench.flags`)."""
    n = len(x)
    return AttackOutcome(tuple(float(r) for r in radii), torch.zeros(len(radii), n, dtype=torch.bool),
                         torch.full((n,), math.inf), adversarials=torch.full_like(x, float("nan")))


def outcome_from_distances(radii: Sequence[float], distances: torch.Tensor) -> AttackOutcome:
    """For minimisation attacks: point ``n`` is broken at radius ``r`` iff ``distances[n] <= r``.

    The outcome lives on the CPU, wherever ``distances`` were computed."""
    distances = distances.detach().cpu()
    r = torch.tensor([float(v) for v in radii], dtype=torch.float64)[:, None]
    d = distances.double()[None, :]
    broken = d <= r * (1 + RADIUS_RTOL) + 1e-12
    return AttackOutcome(tuple(float(v) for v in radii), broken, distances.float())


def boxed(bounds: tuple[float, float]) -> bool:
    """Whether the input bounds ``(lo, hi)`` (:attr:`fabench.types.TaskData.bounds`) are a box
    with a finite side (pixels in ``[0, 1]``); ``(-inf, inf)`` (the synthetic task's ``R^d``) is
    no box: nothing is clipped and attacks may leave the input space's coordinates."""
    lo, hi = bounds
    return math.isfinite(lo) or math.isfinite(hi)


def clip(x: torch.Tensor, bounds: tuple[float, float], *, inplace: bool = False) -> torch.Tensor:
    """``x`` clipped to the input bounds (``x`` itself where they are no box, :func:`boxed`; in
    place if ``inplace``)."""
    if not boxed(bounds):
        return x
    lo, hi = bounds
    return x.clamp_(lo, hi) if inplace else x.clamp(lo, hi)


def perturbation_norms(x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (x_adv - x).flatten(1).norm(dim=1)


def per_point(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``v`` (one value per point) shaped to broadcast against ``like``'s points."""
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


def candidates_outcome(
    model: "Classifier", x: torch.Tensor, y: torch.Tensor, adv: torch.Tensor, radii: Sequence[float],
) -> AttackOutcome:
    """The outcome of a minimisation attack that returns one candidate ``adv`` per point: each
    point's distance where the model misclassifies its candidate (``inf`` elsewhere) and the
    candidates themselves, for fabench to verify (NaN where none)."""
    ok = is_adversarial(model, adv, y)
    norms = perturbation_norms(adv, x)
    out = outcome_from_distances(radii, torch.where(ok, norms, torch.full_like(norms, math.inf)))
    adversarials = torch.where(per_point(ok, adv), adv, torch.full_like(adv, math.nan))
    return AttackOutcome(out.radii, out.broken, out.distances, adversarials=adversarials)


def random_in_ball(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Uniform perturbations in the L2 balls of radii ``eps`` (foolbox's ``uniform_l2_n_balls``)."""
    b, n = x.flatten(1).shape
    z = torch.randn(b, n + 2)
    z = z / z.norm(dim=1, keepdim=True)
    # drawn on the CPU (its generator): the same starts on every device
    return (z[:, :n] * eps.cpu()[:, None]).reshape(x.shape).to(x)


def into_ball(delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``delta`` scaled down (never up) to L2 norm at most ``eps`` per point."""
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    return delta * per_point(torch.clamp(eps / norms, max=1.0), delta)


def is_adversarial(model: "Classifier", x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """True where ``x_adv`` is not classified correctly (see :meth:`Classifier.correct`)."""
    return ~model.correct(x_adv, y)


def fixed_radius_outcome(
    model: "Classifier", x: torch.Tensor, y: torch.Tensor, radii: Sequence[float], *,
    attempt: Callable[[torch.Tensor, float, int], torch.Tensor], attempts: int = 1, seed: int = 0,
) -> AttackOutcome:
    """A fixed-epsilon attack's curve: per radius (increasing), on the points not yet broken, up to
    ``attempts`` calls ``attempt(idx, eps, k)`` (``k`` = 0, 1, ...: the try) returning candidates
    for ``x[idx]``; a candidate counts only if the model misclassifies it and it lies in the ball
    (each later try only on the points the earlier ones left). Seeded with ``seed``."""
    n, dev = len(x), x.device
    distances = torch.full((n,), float("inf"))  # bookkeeping on the CPU, examples on x's device
    broken = torch.zeros(len(radii), n, dtype=torch.bool)
    adversarials = torch.full_like(x, float("nan"))
    clean_wrong = is_adversarial(model, x, y).cpu()
    distances[clean_wrong] = 0.0
    adversarials[clean_wrong.to(dev)] = x[clean_wrong.to(dev)]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for i, eps in enumerate(radii):
            todo = ~(broken[i - 1] if i else clean_wrong)
            broken[i] = ~todo
            if eps <= 0 or not todo.any():
                continue
            idx = todo.nonzero().squeeze(1)
            for k in range(attempts):
                adv = attempt(idx, float(eps), k).detach()
                norms = perturbation_norms(adv, x[idx.to(dev)]).cpu()
                ok = is_adversarial(model, adv, y[idx.to(dev)]).cpu() & (norms <= eps * (1 + RADIUS_RTOL) + 1e-6)
                hit = idx[ok]
                closer = norms[ok] < distances[hit]
                broken[i, hit] = True
                distances[hit[closer]] = norms[ok][closer]
                adversarials[hit[closer].to(dev)] = adv[ok.to(dev)][closer.to(dev)]
                idx = idx[~ok]
                if len(idx) == 0:
                    break
    return AttackOutcome(tuple(float(r) for r in radii), broken, distances, adversarials=adversarials)


@dataclass(frozen=True)
class Bands:
    """Per point, the part of the radius grid a fixed-epsilon search is asked about (long tensors
    on the CPU, one value per point): it probes indices ``first <= i < end`` (the radii from
    ``end`` up are already decided, e.g. broken by an earlier attack; those below ``first`` it
    takes as unbroken) and its walk down never goes below ``floor`` (e.g. the radii the point is
    certified robust at). The protocol's ``fast`` mode asks for them (:mod:`fabench.protocol`);
    an attack that takes them says so with ``searches_bands(params)``."""

    first: torch.Tensor
    end: torch.Tensor
    floor: torch.Tensor

    def __getitem__(self, idx: torch.Tensor) -> "Bands":
        return Bands(self.first[idx], self.end[idx], self.floor[idx])


#: ``attempt(idx, eps, start)`` for :func:`bisect_outcome`: candidates for ``x[idx]`` at per-point
#: radii ``eps`` (float32; ``idx`` and ``eps`` on the CPU), from a fresh start (``start is None``: the attack's own, e.g. random)
#: or warm-started from the perturbation ``start`` (inside the ball).
BisectAttempt = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor | None"], "torch.Tensor"]


def bisect_outcome(
    model: "Classifier", x: torch.Tensor, y: torch.Tensor, radii: Sequence[float], *,
    attempt: BisectAttempt, attempts: int = 1, warm_start: bool = False, bands: Bands | None = None,
) -> AttackOutcome:
    """A fixed-epsilon attack's curve by per-point bisection over the radius grid (about
    ``1 + log2 R`` batched probes instead of up to ``R`` runs), then a walk down.

    Each probe attacks the points whose fate is still open, each at its own radius: up to
    ``attempts`` fresh calls of ``attempt`` (each on the points the earlier ones left), then, if
    ``warm_start``, one call warm-started from each point's closest adversarial found so far,
    projected into the new ball. A candidate counts only if the model misclassifies it and it lies
    in the ball; each point keeps its closest one. The probes: the largest radius first (a success
    there warm-starts every later probe), then bisection between the largest radius known unbroken
    and the smallest broken one, then a walk down from the smallest broken radius while the attack
    keeps succeeding (what a fixed-epsilon attack finds is not monotone in the radius, so a point it
    breaks below a radius where it failed once is still found). Bisection is not guaranteed to find
    all that one run per radius (:func:`fixed_radius_outcome`) finds. Returns each point's closest
    adversarial as ``adversarials`` (NaN where none), so every claim is verified on the model. The
    caller seeds the RNG. With ``bands``, each point's search keeps to its band: its largest radius
    is ``end - 1``, the bisection starts above ``first - 1``, the walk stops at ``floor``.
    """
    r = torch.tensor([float(v) for v in radii], dtype=torch.float64)
    n, n_r, dev = len(x), len(r), x.device
    dist = torch.full((n,), float("inf"))  # bookkeeping on the CPU, examples on x's device
    clean_wrong = is_adversarial(model, x, y).cpu()
    dist[clean_wrong] = 0.0
    best = torch.full_like(x, float("nan"))  # each point's closest adversarial found
    best[clean_wrong.to(dev)] = x[clean_wrong.to(dev)]
    if bands is None:
        bands = Bands(torch.zeros(n, dtype=torch.long), torch.full((n,), n_r), torch.zeros(n, dtype=torch.long))
    end, floor = bands.end, bands.floor
    # largest radius index known (or taken as) unbroken
    lo = torch.maximum(torch.full((n,), int((r <= 0).sum()) - 1), bands.first - 1)

    def first_broken() -> torch.Tensor:  # index of the smallest radius >= each distance, at most end
        within = dist.double()[None, :] <= r[:, None] * (1 + RADIUS_RTOL) + 1e-12
        return torch.minimum((~within).sum(dim=0), end)

    def probe(idx: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """Attack points ``idx`` at radii ``r[at]``; which of them were broken there."""
        eps = r[at].float()
        found = torch.zeros(len(idx), dtype=torch.bool)
        for k in range(attempts + int(warm_start)):
            todo = (~found).nonzero().squeeze(1)
            warm = k == attempts
            if warm:  # only points with an adversarial found before
                todo = todo[torch.isfinite(dist[idx[todo]]) & (dist[idx[todo]] > 0)]
            if len(todo) == 0:
                continue
            i, e = idx[todo], eps[todo]
            start = into_ball(best[i.to(dev)] - x[i.to(dev)], e.to(dev)) if warm else None
            adv = attempt(i, e, start).detach()
            di = i.to(dev)
            norms = perturbation_norms(adv, x[di]).cpu()
            ok = is_adversarial(model, adv, y[di]).cpu() & (norms <= e * (1 + RADIUS_RTOL) + 1e-6)
            closer = ok & (norms < dist[i])
            best[di[closer.to(dev)]] = adv[closer.to(dev)]
            dist[i[closer]] = norms[closer]
            found[todo[ok]] = True
        return found

    hi = first_broken()
    idx = (hi - lo > 1).nonzero().squeeze(1)
    if len(idx):  # the largest radius first
        top = end[idx] - 1
        missed = ~probe(idx, top)
        lo[idx[missed]] = top[missed]
        hi = first_broken()
        lo = torch.minimum(lo, hi - 1)
    while True:  # bisection: one batched probe per round, each point at its own radius
        idx = ((hi - lo) > 1).nonzero().squeeze(1)
        if len(idx) == 0:
            break
        mid = (lo[idx] + hi[idx]) // 2
        found = probe(idx, mid)
        lo[idx[~found]] = mid[~found]
        hi = first_broken()
        lo = torch.minimum(lo, hi - 1)
    idx = ((hi < end) & (hi > floor) & (lo >= 0) & (r[lo.clamp_min(0)] > 0)).nonzero().squeeze(1)
    while len(idx):  # walk down from the smallest broken radius while the attack keeps succeeding
        below = (hi[idx] - 1).clamp_min(0)
        found = probe(idx, below)
        hi = first_broken()
        idx = idx[found]
        idx = idx[(hi[idx] > floor[idx]) & (r[(hi[idx] - 1).clamp_min(0)] > 0)]
    out = outcome_from_distances(radii, dist)
    return AttackOutcome(out.radii, out.broken, out.distances, adversarials=best)
