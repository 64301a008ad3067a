"""Helpers every attack shares: turning what it found into a monotone :class:`AttackOutcome`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

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


def outcome_from_distances(radii: Sequence[float], distances: torch.Tensor) -> AttackOutcome:
    """For minimisation attacks: point ``n`` is broken at radius ``r`` iff ``distances[n] <= r``."""
    r = torch.tensor([float(v) for v in radii], dtype=torch.float64)[:, None]
    d = distances.double()[None, :]
    broken = d <= r * (1 + RADIUS_RTOL) + 1e-12
    return AttackOutcome(tuple(float(v) for v in radii), broken, distances.float())


def perturbation_norms(x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (x_adv - x).flatten(1).norm(dim=1)


def is_adversarial(model: "Classifier", x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """True where ``x_adv`` is not classified correctly (see :meth:`Classifier.correct`)."""
    return ~model.correct(x_adv, y)
