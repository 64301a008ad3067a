"""The analytic averaged-feature attack (the paper's attack on feature-averaging networks).

``rho = -y * eps * u`` with ``u = (sum_{J+} mu_j - sum_{J-} mu_j) / ||...||``: a step of every point
away from its class's average feature and towards the other class's. On a network whose neurons
are the class averages it flips the decision at ``eps`` about ``sqrt(d/k)`` (synthetic task).

The attack is a line search along that fixed direction: a scan of ``scan_points`` radii up to
``max_radius`` (default: twice the largest radius asked for), refined by bisection, gives every
point's smallest flipping distance along the line (clipped to the input bounds).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Sequence

import torch

from fabench import registry
from fabench.attacks.base import outcome_from_distances
from fabench.types import AttackOutcome, Meta, Params, TaskData

if TYPE_CHECKING:  # pragma: no cover
    from fabench.models import Classifier


def averaged_feature_direction(data: TaskData) -> torch.Tensor:
    """``u = unit(sum_{J+} mu_j - sum_{J-} mu_j)`` in input space, shaped like one input."""
    mu = data.features.flatten(1).double()
    sign = data.positive_mask.double() * 2 - 1
    v = sign @ mu
    return (v / v.norm().clamp_min(1e-300)).float().reshape(data.input_shape)


@registry.attacks.register
class AnalyticAttack:
    meta: ClassVar[Meta] = Meta(
        name="analytic",
        description="averaged-feature attack: -y * eps * unit(sum_J+ mu - sum_J- mu), line search",
        reference="Li, Pan, Lyu, Li (ICLR 2025), Theorem 4.x (non-robustness of feature averaging)",
        params={"scan_points": 64, "bisect_steps": 20, "max_radius": 0.0},
    )
    minimization: ClassVar[bool] = True

    def run(
        self, model: "Classifier", x: torch.Tensor, y: torch.Tensor, radii: Sequence[float], *,
        data: TaskData, params: Params, seed: int,
    ) -> AttackOutcome:
        lo_b, hi_b = data.bounds
        u = averaged_feature_direction(data).to(x)
        sign = (1 - 2 * y.float()).reshape(-1, *([1] * (x.dim() - 1)))  # -y in {+1,-1}
        step = sign * u  # per point, unit norm

        def point(t: torch.Tensor) -> torch.Tensor:
            return (x + t.reshape(-1, *([1] * (x.dim() - 1))) * step).clamp(lo_b, hi_b)

        def broken(t: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return (model.margin(point(t)) > 0).long() != y

        t_max = float(params["max_radius"]) or 2 * max(max(radii), 1e-6)
        n = len(x)
        found = torch.full((n,), float("inf"))
        lo = torch.zeros(n)
        hi = torch.full((n,), float("inf"))
        done = broken(torch.zeros(n))
        hi[done] = 0.0
        for t in torch.linspace(0, t_max, int(params["scan_points"]) + 1)[1:]:
            todo = ~done
            if not todo.any():
                break
            b = broken(torch.full((n,), float(t))) & todo
            hi[b] = float(t)
            lo[todo & ~b] = float(t)
            done |= b
        hit = torch.isfinite(hi) & (hi > 0)
        for _ in range(int(params["bisect_steps"])):
            mid = (lo + hi) / 2
            b = broken(torch.where(hit, mid, torch.zeros(n)))
            hi = torch.where(hit & b, mid, hi)
            lo = torch.where(hit & ~b, mid, lo)
        ok = torch.isfinite(hi)
        t_final = torch.where(ok, hi, torch.zeros(n))
        dist = (point(t_final) - x).flatten(1).norm(dim=1)
        found[ok] = dist[ok]
        return outcome_from_distances(radii, found)
