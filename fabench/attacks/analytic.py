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

import torch

from fabench import registry
from fabench.attacks.base import outcome_from_distances
from fabench.types import AttackOutcome, Meta, Params, TaskData

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


def line_search(
    model: "Classifier", x: torch.Tensor, y: torch.Tensor, directions: torch.Tensor, *,
    bounds: tuple[float, float], t_max: float, scan_points: int = 64, bisect_steps: int = 20,
) -> torch.Tensor:
    """Smallest L2 distance at which ``clip(x + t * direction)`` is misclassified (``inf``: none).

    ``directions`` are unit vectors, one per point. Points misclassified at ``t = 0`` get 0.
    """
    n = len(x)
    shape = (-1,) + (1,) * (x.dim() - 1)

    def point(idx: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (x[idx] + t.reshape(shape) * directions[idx]).clamp(*bounds)

    def broken(idx: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return ~model.correct(point(idx, t), y[idx])

    everyone = torch.arange(n)
    lo = torch.zeros(n)
    hi = torch.full((n,), float("inf"))
    hi[broken(everyone, torch.zeros(n))] = 0.0
    for t in torch.linspace(0, t_max, scan_points + 1)[1:]:
        todo = torch.isinf(hi).nonzero().squeeze(1)  # only points not yet flipped are evaluated
        if len(todo) == 0:
            break
        b = broken(todo, torch.full((len(todo),), float(t)))
        hi[todo[b]] = float(t)
        lo[todo[~b]] = float(t)
    hit = (torch.isfinite(hi) & (hi > 0)).nonzero().squeeze(1)
    for _ in range(bisect_steps if len(hit) else 0):
        mid = (lo[hit] + hi[hit]) / 2
        b = broken(hit, mid)
        hi[hit[b]] = mid[b]
        lo[hit[~b]] = mid[~b]
    ok = torch.isfinite(hi).nonzero().squeeze(1)
    dist = torch.full((n,), float("inf"))
    dist[ok] = (point(ok, hi[ok]) - x[ok]).flatten(1).norm(dim=1)
    return dist


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
        dist = line_search(
            model, x, y, sign * u, bounds=data.bounds, t_max=_t_max(params, radii),
            scan_points=int(params["scan_points"]), bisect_steps=int(params["bisect_steps"]),
        )
        return outcome_from_distances(radii, dist)


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
        pos = data.positive_mask
        flat = x.flatten(1)
        d2 = torch.cdist(flat, mu)
        own_class = pos[None, :] == y.bool()[:, None]
        own = torch.where(own_class, d2, torch.full_like(d2, float("inf"))).argmin(dim=1)
        best = torch.full((len(x),), float("inf"))
        for j in range(data.num_classes):
            target = own_class[:, j].logical_not()
            if not target.any():
                continue
            v = mu[j][None, :] - mu[own]
            v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
            dist = line_search(
                model, x[target], y[target], v[target].reshape((-1,) + tuple(x.shape[1:])),
                bounds=data.bounds, t_max=_t_max(params, radii),
                scan_points=int(params["scan_points"]), bisect_steps=int(params["bisect_steps"]),
            )
            best[target] = torch.minimum(best[target], dist)
        return outcome_from_distances(radii, best)
