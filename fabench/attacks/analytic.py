"""Analytic feature attacks: line searches along directions built from the features ``mu_j``.

``analytic`` is the paper's averaged-feature attack: ``rho = -y * eps * u`` with
``u = unit(sum_{J+} mu_j - sum_{J-} mu_j)``, a step of every point away from its class's average
feature and towards the other class's. On a network whose neurons are the class averages it flips
the decision at ``eps`` about ``sqrt(d/k)`` (synthetic task); on a feature-decoupled network it
needs about ``sqrt(k/2)`` times more.

``pairwise`` moves a point of cluster ``j`` towards each other-class feature along
``unit(mu_j' - mu_j)`` and keeps the nearest flip: the perturbation that bounds the robustness of
feature-decoupled networks (about ``sqrt(d/2)`` on the synthetic task). Gradient attacks can miss
it when the other class's units are inactive at ``x`` (zero gradient), e.g. on ``f_robust``.

Both are exact line searches: a scan of ``scan_points`` radii up to ``max_radius`` (default: twice
the largest radius asked for), refined by bisection, gives every point's smallest flipping
distance along the line (after clipping to the input bounds).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Sequence

from fabench._lazy import lazy
from fabench import registry
from fabench.attacks.base import clip, outcome_from_distances
from fabench.types import AttackOutcome, Meta, Params, TaskData

if TYPE_CHECKING:  # pragma: no cover - heavy imports are lazy (see fabench._lazy)
    import torch
else:
    torch = lazy("torch")

if TYPE_CHECKING:  # pragma: no cover
    from fabench.models import Classifier

LINE_SEARCH_PARAMS = {"scan_points": 64, "bisect_steps": 20, "max_radius": 0.0}
#: ``max_radius`` 0 means "twice the largest radius asked"; a scan needs at least 2 points.
LINE_SEARCH_BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "scan_points": (2, 100_000), "bisect_steps": (0, 200), "max_radius": (0.0, 1e9),
}


def averaged_feature_direction(data: TaskData) -> torch.Tensor:
    """``u = unit(sum_{J+} mu_j - sum_{J-} mu_j)`` in input space, shaped like one input."""
    mu = data.features.flatten(1).double()
    sign = data.positive_mask.double() * 2 - 1
    v = sign @ mu
    return (v / v.norm().clamp_min(1e-300)).float().reshape(data.input_shape)


#: Floats of the points one line search works on at a time (whole scan and bisection): a chunk
#: small enough to stay in cache (about 340 points at d = 3072); one pass holds at most 4x this.
LINE_SEARCH_BUDGET = 1 << 20


def _along(x: torch.Tensor, d: torch.Tensor, t: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    """``clip(x + t * d)`` (``t`` broadcast over the leading dimensions; :func:`~fabench.attacks.base.clip`)."""
    return clip(torch.addcmul(x, t.reshape(t.shape + (1,) * (x.dim() - t.dim())), d), bounds, inplace=True)


def line_search(
    model: "Classifier", x: torch.Tensor, y: torch.Tensor, directions: torch.Tensor, *,
    bounds: tuple[float, float], t_max: float, scan_points: int = 64, bisect_steps: int = 20,
    budget: int = LINE_SEARCH_BUDGET,
) -> torch.Tensor:
    """Smallest L2 distance at which ``clip(x + t * direction)`` is misclassified (``inf``: none).

    ``directions`` are unit vectors, one per point. Points misclassified at ``t = 0`` get 0.
    (:func:`line_search_steps` gives the steps ``t`` as well.)"""
    return line_search_steps(model, x, y, directions, bounds=bounds, t_max=t_max, scan_points=scan_points,
                             bisect_steps=bisect_steps, budget=budget)[1]


def line_search_steps(
    model: "Classifier", x: torch.Tensor, y: torch.Tensor, directions: torch.Tensor, *,
    bounds: tuple[float, float], t_max: float, scan_points: int = 64, bisect_steps: int = 20,
    budget: int = LINE_SEARCH_BUDGET,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(t, distance)`` per point: the smallest step ``t`` found at which ``clip(x + t * direction)``
    is misclassified, and that point's L2 distance from ``x`` (both ``inf``: none found; both 0:
    ``x`` itself is misclassified).

    The scan ``t_i = i * t_max / scan_points`` finds every point's first flipping ``t_i``, only for
    points not yet flipped; each batched forward pass evaluates several consecutive ``t_i`` per
    point (as many as keep the pass within ``4 * budget`` floats, so a few points left get many
    radii at once). Points are searched in chunks of ``budget`` floats (cache-sized). Bisection
    on ``[t_{i-1}, t_i]`` (``bisect_steps`` halvings, all points in one pass per step) then
    refines it. The result is that of a radius-by-radius scan (up to float32 round-off).
    """
    n = len(x)
    dim = max(1, x[0].numel()) if n else 1
    chunk = max(1, budget // dim)
    if n > chunk:
        parts = [
            line_search_steps(model, x[c:c + chunk], y[c:c + chunk], directions[c:c + chunk], bounds=bounds,
                              t_max=t_max, scan_points=scan_points, bisect_steps=bisect_steps, budget=budget)
            for c in range(0, n, chunk)
        ]
        return torch.cat([t for t, _ in parts]), torch.cat([d for _, d in parts])
    dev = x.device  # the search runs where the points are
    everyone = torch.arange(n, device=dev)
    lo = torch.zeros(n, device=dev)
    hi = torch.full((n,), float("inf"), device=dev)
    hi[~model.correct(_along(x, directions, torch.zeros(n, device=dev), bounds), y)] = 0.0
    ts = torch.linspace(0, t_max, scan_points + 1, device=dev)[1:]
    s0 = 0
    while s0 < len(ts):
        todo = everyone[torch.isinf(hi)]  # only points not yet flipped are evaluated
        if len(todo) == 0:
            break
        tb = ts[s0 : s0 + max(1, 4 * budget // (len(todo) * dim))]
        pts = _along(x[todo][:, None], directions[todo][:, None], tb[None, :].expand(len(todo), -1), bounds)
        flips = ~model.correct(pts.reshape((-1,) + tuple(x.shape[1:])), y[todo].repeat_interleave(len(tb)))
        flips = flips.reshape(len(todo), len(tb))
        first, any_flip = flips.int().argmax(dim=1), flips.any(dim=1)
        hit = todo[any_flip]
        pos = first[any_flip] + s0  # index into ts of the first flip
        hi[hit] = ts[pos]
        lo[hit] = torch.where(pos > 0, ts[(pos - 1).clamp_min(0)], torch.zeros((), device=dev))
        lo[todo[~any_flip]] = tb[-1]
        s0 += len(tb)
    hit = everyone[torch.isfinite(hi) & (hi > 0)]
    if len(hit) and bisect_steps:
        xh, dh, yh, lh, hh = x[hit], directions[hit], y[hit], lo[hit], hi[hit]
        for _ in range(bisect_steps):
            mid = (lh + hh) / 2
            b = ~model.correct(_along(xh, dh, mid, bounds), yh)
            hh = torch.where(b, mid, hh)
            lh = torch.where(b, lh, mid)
        hi[hit] = hh
    ok = everyone[torch.isfinite(hi)]
    dist = torch.full((n,), float("inf"), device=dev)
    dist[ok] = (_along(x[ok], directions[ok], hi[ok], bounds) - x[ok]).flatten(1).norm(dim=1)
    return hi, dist


#: Relative nudges of a step ``t`` tried, in order, when the model classifies the point
#: ``clip(x + t * direction)`` found by a search correctly after all (a float32 tie at the
#: decision boundary: the search judged it in another batch). Up to 1e-3 of ``t``.
CONFIRM_NUDGES = tuple(1e-6 * 2.0**j for j in range(11))


def line_adversarials(
    model: "Classifier", x: torch.Tensor, y: torch.Tensor, directions: torch.Tensor, steps: torch.Tensor, *,
    bounds: tuple[float, float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(adversarials, distances)``: the points ``clip(x + t * direction)`` at the steps a line
    search found, checked on the model in one batch, so that the attack claims only examples the
    model misclassifies (:func:`fabench.validation.validate_outcome` checks them again). A point
    the model classifies correctly after all (a tie at the boundary, judged in another batch)
    is moved out by :data:`CONFIRM_NUDGES` of its step; if none flips it, its claim is dropped
    (distance ``inf``, adversarial NaN). Points with ``t = inf`` get NaN and ``inf``."""
    n, dev = len(x), x.device
    adv = torch.full_like(x, float("nan"))
    dist = torch.full((n,), float("inf"), device=dev)
    todo = torch.isfinite(steps).nonzero().squeeze(1)
    for nudge in (0.0,) + CONFIRM_NUDGES:
        if len(todo) == 0:
            break
        pts = _along(x[todo], directions[todo], steps[todo] * (1 + nudge), bounds)
        flipped = ~model.correct(pts, y[todo])
        done = todo[flipped]
        adv[done] = pts[flipped]
        dist[done] = (pts[flipped] - x[done]).flatten(1).norm(dim=1)
        todo = todo[~flipped]
    return adv, dist


def _t_max(params: Params, radii: Sequence[float]) -> float:
    return float(params["max_radius"]) or 2 * max(max(radii), 1e-6)


@registry.attacks.register
class AnalyticAttack:
    meta: ClassVar[Meta] = Meta(
        name="analytic",
        description="averaged-feature attack: -y * eps * unit(sum_J+ mu - sum_J- mu), line search",
        reference="Li, Pan, Lyu, Li (ICLR 2025): non-robustness of feature-averaging networks",
        params=dict(LINE_SEARCH_PARAMS),
        bounds=LINE_SEARCH_BOUNDS,
    )
    minimization: ClassVar[bool] = True

    def run(
        self, model: "Classifier", x: torch.Tensor, y: torch.Tensor, radii: Sequence[float], *,
        data: TaskData, params: Params, seed: int,
    ) -> AttackOutcome:
        u = averaged_feature_direction(data).to(x)
        sign = (1 - 2 * y.float()).reshape((-1,) + (1,) * (x.dim() - 1))  # -y in {+1, -1}
        directions = sign * u  # one direction per point, shaped like x
        steps, _ = line_search_steps(
            model, x, y, directions, bounds=data.bounds, t_max=_t_max(params, radii),
            scan_points=int(params["scan_points"]), bisect_steps=int(params["bisect_steps"]),
        )
        return _verified_outcome(model, x, y, directions, steps, radii, bounds=data.bounds)


@registry.attacks.register
class PairwiseFeatureAttack:
    meta: ClassVar[Meta] = Meta(
        name="pairwise",
        description="line search from each point towards every other-class feature, unit(mu_j' - mu_j)",
        reference="Li, Pan, Lyu, Li (ICLR 2025): robustness bound of feature-decoupled networks",
        params={**LINE_SEARCH_PARAMS, "scan_points": 32},
        bounds=LINE_SEARCH_BOUNDS,
    )
    minimization: ClassVar[bool] = True

    def run(
        self, model: "Classifier", x: torch.Tensor, y: torch.Tensor, radii: Sequence[float], *,
        data: TaskData, params: Params, seed: int,
    ) -> AttackOutcome:
        # The cluster of each point is not an input of the protocol; take the nearest feature
        # of the point's own binary class (its true cluster for well-separated data).
        mu = data.features.flatten(1).to(x)
        pos = data.positive_mask.to(x.device)
        flat = x.flatten(1)
        d2 = torch.cdist(flat, mu)
        own_class = pos[None, :] == y.bool()[:, None]
        own = torch.where(own_class, d2, torch.full_like(d2, float("inf"))).argmin(dim=1)
        # every (point, other-class feature) pair is one line, all searched together
        pt, feat = (~own_class).nonzero(as_tuple=True)
        v = mu[feat] - mu[own[pt]]
        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
        v = v.reshape((-1,) + tuple(x.shape[1:]))
        steps, dist = line_search_steps(
            model, x[pt], y[pt], v, bounds=data.bounds, t_max=_t_max(params, radii),
            scan_points=int(params["scan_points"]), bisect_steps=int(params["bisect_steps"]),
        )
        n = len(x)
        best = torch.full((n,), float("inf"), device=x.device).scatter_reduce(0, pt, dist, reduce="amin")
        # per point, the first of its lines reaching that distance: its direction and step
        lines = torch.arange(len(pt), device=x.device)
        first = torch.where(torch.isfinite(dist) & (dist == best[pt]), lines, torch.full_like(lines, len(pt)))
        line = torch.full((n,), len(pt), device=x.device).scatter_reduce(0, pt, first, reduce="amin")
        found = line < len(pt)
        directions = torch.zeros_like(x)
        directions[found] = v[line[found]]
        point_steps = torch.full((n,), float("inf"), device=x.device)
        point_steps[found] = steps[line[found]]
        return _verified_outcome(model, x, y, directions, point_steps, radii, bounds=data.bounds)


def _verified_outcome(
    model: "Classifier", x: torch.Tensor, y: torch.Tensor, directions: torch.Tensor, steps: torch.Tensor,
    radii: Sequence[float], *, bounds: tuple[float, float],
) -> AttackOutcome:
    """A line search's outcome with its adversarial examples (:func:`line_adversarials`)."""
    adv, dist = line_adversarials(model, x, y, directions, steps, bounds=bounds)
    out = outcome_from_distances(radii, dist)
    return AttackOutcome(out.radii, out.broken, out.distances, adversarials=adv)
