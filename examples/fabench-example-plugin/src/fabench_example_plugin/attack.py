"""Attack ``fgm``: the fast-gradient-method direction, followed by an exact line search.

An attack receives the trained classifier, the points ``x`` to attack with their binary labels
``y`` (class index: 1 = positive class), the radii, the task data, its resolved parameters and a
seed, and returns a :class:`fabench.types.AttackOutcome`: for every radius which points it broke,
and every point's smallest adversarial L2 distance (``inf`` where it found none).
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import torch

from fabench.attacks.analytic import line_search
from fabench.attacks.base import outcome_from_distances
from fabench.models import Classifier
from fabench.types import AttackOutcome, Meta, Params, TaskData


class FGMAttack:
    meta: ClassVar[Meta] = Meta(
        name="fgm",
        description="L2 fast gradient method direction (unit gradient of the margin) + exact line search",
        reference="example plugin; Goodfellow et al. (2015), L2 variant",
        params={"scan_points": 64, "bisect_steps": 20},
    )
    # True: one run gives every point's minimal distance along its direction (a whole curve).
    minimization: ClassVar[bool] = True

    def run(
        self, model: Classifier, x: torch.Tensor, y: torch.Tensor, radii: Sequence[float], *,
        data: TaskData, params: Params, seed: int,
    ) -> AttackOutcome:
        x = x.detach().clone().requires_grad_(True)
        margin = model.margin(x)  # > 0 means "positive class"
        # Move positive points down the margin and negative points up: gradient of -y*g.
        sign = (y.float() * 2 - 1).to(margin.dtype)
        (grad,) = torch.autograd.grad((-sign * margin).sum(), x)
        norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
        directions = grad / norms.reshape((-1,) + (1,) * (x.dim() - 1))
        t_max = 2 * max([float(r) for r in radii] + [1e-6])
        distances = line_search(
            model, x.detach(), y, directions, bounds=data.bounds, t_max=t_max,
            scan_points=int(params["scan_points"]), bisect_steps=int(params["bisect_steps"]),
        )
        return outcome_from_distances(radii, distances)
