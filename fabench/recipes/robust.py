"""Recipe ``robust``: the handcrafted ``f_robust`` that shows what robustness is reachable.

One ReLU unit per feature, ``ReLU(<mu_j, z - c> / ||mu_j|| - t_j)``, summed with sign ``+`` for
``J+`` and ``-`` for ``J-``. The threshold ``t_j = bias_fraction * ||mu_j - c||`` filters the noise
(for the synthetic task ``<mu_j, xi> / ||mu_j|| ~ N(0, sigma^2)`` while the signal is ``sqrt(d)``).
The default ``bias_fraction = 0.25`` is the robust choice on the synthetic task (``s = sqrt(d)``):
switching every unit off (``g = 0``, an error) costs ``(1 - f) s``, flipping to one other unit
``s / sqrt(2)``, to ``m`` others ``(1 + (m - 1) f) s / sqrt(m + 1)``; for ``0.22 <= f <= 0.29`` the
cheapest is ``s / sqrt(2) = sqrt(d/2)``, the radius of the decoupled network.
No training. ``centre = "mean"`` centres on the mean of the features (real data, whose class means
share a large common part); ``"none"`` uses ``c = 0``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from fabench import registry
from fabench.errors import ConfigError
from fabench.models.backbones import BACKBONE_CHOICES, BACKBONE_PARAMS
from fabench.recipes.binary import BOUNDED_BACKBONE
from fabench.recipes.common import setup_head

#: The largest ``bias_fraction`` accepted (a finite bound: the bias is this fraction of a scale of
#: the features, and 1e308 of it overflows float32).
MAX_BIAS_FRACTION = 1e6
from fabench.types import FitContext, Meta, Params, TaskData

if TYPE_CHECKING:  # pragma: no cover - models import torch: imported in fit
    from fabench.models import Classifier


@registry.recipes.register
class RobustRecipe:
    meta: ClassVar[Meta] = Meta(
        name="robust",
        description="handcrafted f_robust: one ReLU unit per feature with a noise-filtering bias",
        reference="Li, Pan, Lyu, Li (ICLR 2025), the robust network f_robust",
        params={"bias_fraction": 0.25, "centre": "none", **BACKBONE_PARAMS},
        bounds={"bias_fraction": (0.0, MAX_BIAS_FRACTION), **BOUNDED_BACKBONE},
        choices={"centre": ("none", "mean"), **BACKBONE_CHOICES},
    )

    def fit(self, data: TaskData, params: Params, *, context: FitContext) -> Classifier:
        from fabench.models import Classifier, RobustHead

        frac = float(params["bias_fraction"])
        if not 0.0 <= frac < 1.0:
            raise ConfigError(f"robust.bias_fraction must be in [0, 1), got {frac}")
        s = setup_head(data, params, context=context)  # the backbone and its (cached) training features
        mu = s.feature_means(data)
        if params["centre"] == "mean":
            centre = mu.mean(dim=0)
        elif params["centre"] == "none":
            centre = mu.new_zeros(mu.shape[1])
        else:
            raise ConfigError(f"robust.centre must be 'none' or 'mean', got {params['centre']!r}")
        thresholds = frac * (mu - centre).norm(dim=1)
        head = RobustHead(mu - centre, data.positive_mask, thresholds, centre).to(s.device)
        return Classifier(head, s.backbone, features=mu, info=s.info)
