"""Attack ``fgm``: the fast-gradient-method direction, followed by an exact line search.

An attack receives the trained classifier, the points ``x`` to attack with their binary labels
``y`` (class index: 1 = positive class), the radii, the task data, its resolved parameters and a
seed, and returns a :class:`fabench.types.AttackOutcome`: for every radius which points it broke,
every point's smallest adversarial L2 distance (``inf`` where it found none) and, preferably, the
adversarial examples themselves, which fabench checks on the model.
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
        found = line_search(
            model, x.detach(), y, directions, bounds=data.bounds, t_max=t_max,
            scan_points=int(params["scan_points"]), bisect_steps=int(params["bisect_steps"]),
        )
        # The preferred contract: also return the adversarial examples, so that fabench verifies every
        # claim on the model (the record then lists this attack in `verified_attacks`). Step just past
        # the boundary the line search found, and claim the distance of the example actually returned.
        ok = torch.isfinite(found) & (found > 0)
        adversarials = torch.full_like(x, float("nan"))
        step = (found[ok] * (1 + 1e-3)).reshape((-1,) + (1,) * (x.dim() - 1))
        adversarials[ok] = (x.detach()[ok] + step * directions[ok]).clamp(*data.bounds)
        distances = torch.where(found == 0, found, torch.full_like(found, float("inf")))
        distances[ok] = (adversarials[ok] - x.detach()[ok]).flatten(1).norm(dim=1)
        out = outcome_from_distances(radii, distances)
        return AttackOutcome(out.radii, out.broken, out.distances, adversarials=adversarials)
