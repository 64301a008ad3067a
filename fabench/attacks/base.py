"""Helpers every attack shares: turning what it found into a monotone :class:`AttackOutcome`."""

from __future__ import annotations

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
