"""Feature-averaging metrics: the cosine matrix and the feature-averaging score.

**Cosine matrix.** ``C[u, j] = cos(w_u, mu_j)`` for every hidden unit ``u`` (for the ``fine``
head: every group's mean weight) and every feature ``mu_j`` (Figure 2 of the paper).

**Feature-averaging score.** For a unit ``u`` assigned to binary class ``s`` (``J_s`` = that
class's clusters), let ``c_j = max(0, cos(w_u, mu_j))`` for ``j in J_s``. Its participation ratio is
``PR = (sum_j c_j)^2 / (|J_s| sum_j c_j^2)`` (``1/|J_s|`` when one ``c_j`` is positive, ``1`` when
all are equal) and its score is ``(|J_s| PR - 1) / (|J_s| - 1)``: **1** = equally aligned with all
own-class features (feature averaging), **0** = aligned with one only (decoupled). The model's
score is the mean over units with some positive alignment (``sum_j c_j > 0``); ``nan`` if none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fabench._lazy import lazy

if TYPE_CHECKING:  # pragma: no cover - heavy imports are lazy (see fabench._lazy)
    import torch
else:
    torch = lazy("torch")


def class_means(x: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class means ``mu_j`` of ``x`` (rows or images; the result has ``x``'s trailing shape).

    The features of real data: class-mean inputs for the analytic attacks, class-mean head inputs
    for the cosine matrix and the score (the paper's definition for CIFAR-10).
    """
    flat = x.flatten(1).double()
    sums = torch.zeros(num_classes, flat.shape[1], dtype=torch.float64).index_add_(0, labels, flat)
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).unsqueeze(1)
    return (sums / counts).float().reshape(num_classes, *x.shape[1:])


def cosine_matrix(weights: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """``U x k`` cosines between the rows of ``weights`` and the rows of ``features``."""
    w = weights.double()
    f = features.double()
    wn = w / w.norm(dim=1, keepdim=True).clamp_min(1e-300)
    fn = f / f.norm(dim=1, keepdim=True).clamp_min(1e-300)
    return (wn @ fn.T).float()


def unit_scores(cosines: torch.Tensor, unit_positive: torch.Tensor, positive_mask: torch.Tensor) -> torch.Tensor:
    """Per-unit feature-averaging score (``nan`` for units with no positive own-class alignment)."""
    out = torch.full((cosines.shape[0],), math.nan)
    for u in range(cosines.shape[0]):
        own = positive_mask if bool(unit_positive[u]) else ~positive_mask
        c = cosines[u, own].double().clamp_min(0)
        n = int(own.sum())
        total = float(c.sum())
        if total <= 0 or n < 2:
            continue
        pr = total**2 / (n * float((c**2).sum()))
        out[u] = (n * pr - 1) / (n - 1)
    return out


def _mean_aligned(scores: torch.Tensor) -> float:
    aligned = scores[~torch.isnan(scores)]
    return float(aligned.mean()) if len(aligned) else math.nan


def fa_score(cosines: torch.Tensor, unit_positive: torch.Tensor, positive_mask: torch.Tensor) -> float:
    """The model's feature-averaging score: mean of :func:`unit_scores` over aligned units."""
    return _mean_aligned(unit_scores(cosines, unit_positive, positive_mask))


@dataclass(frozen=True)
class FeatureReport:
    cosines: torch.Tensor
    unit_labels: list[str]
    unit_positive: torch.Tensor
    unit_scores: torch.Tensor
    score: float

    def own_other(self, positive_mask: torch.Tensor) -> tuple[float, float]:
        """Mean cosine of units with their own-class features and with the other class's."""
        own = torch.where(self.unit_positive[:, None], positive_mask[None, :], ~positive_mask[None, :])
        return float(self.cosines[own].mean()), float(self.cosines[~own].mean())


def feature_report(weights: torch.Tensor, unit_positive: torch.Tensor, unit_labels: list[str],
                   features: torch.Tensor, positive_mask: torch.Tensor) -> FeatureReport:
    """Cosine matrix, per-unit and model feature-averaging scores of a head's units."""
    cos = cosine_matrix(weights, features)
    scores = unit_scores(cos, unit_positive, positive_mask)
    return FeatureReport(cos, unit_labels, unit_positive, scores, _mean_aligned(scores))
