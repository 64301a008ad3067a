"""Recipe ``fine``: the feature-decoupled net trained on the fine (cluster) labels.

``k`` groups of ``h`` ReLU units, ``f_j(x) = 1/h sum_r ReLU(<w_{j,r}, x>)``, cross entropy on the
cluster labels with the same gradient-descent settings as ``binary``. The binary decision is
``sign(logsumexp_{J+} f - logsumexp_{J-} f)``. Each group learns its own feature, and the binary
decision survives radii about ``sqrt(k/2)`` times larger.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from fabench._lazy import lazy
from fabench import registry
from fabench.models.backbones import BACKBONE_CHOICES, BACKBONE_PARAMS
from fabench.recipes.binary import BOUNDED_BACKBONE, GD_BOUNDS, GD_CHOICES, GD_PARAMS, standardized_inputs
from fabench.recipes.common import setup_head, training_report
from fabench.recipes.training import descend, fold_standardization
from fabench.types import FitContext, Meta, Params, TaskData

if TYPE_CHECKING:  # pragma: no cover - heavy imports are lazy (see fabench._lazy)
    import torch
    import torch.nn.functional as F

    from fabench.models import Classifier
else:
    torch = lazy("torch")
    F = lazy("torch.nn.functional")

@registry.recipes.register
class FineRecipe:
    meta: ClassVar[Meta] = Meta(
        name="fine",
        description="k groups of h ReLU units trained on cluster labels (cross entropy); "
        "binary decision by log-sum-exp difference",
        reference="Li, Pan, Lyu, Li (ICLR 2025), feature decoupling with fine-grained labels",
        params={"h": 1, "bias": False, **GD_PARAMS, **BACKBONE_PARAMS},
        bounds={"h": (1, 1_000_000), **GD_BOUNDS, **BOUNDED_BACKBONE},
        choices={**GD_CHOICES, **BACKBONE_CHOICES},
    )

    def fit(self, data: TaskData, params: Params, *, context: FitContext) -> Classifier:
        from fabench.models import Classifier, FineHead

        s = setup_head(data, params, context=context)
        head = FineHead(
            s.dim, data.num_classes, int(params["h"]), data.positive_mask,
            init_std=float(params["init_std"]), bias=bool(params["bias"]), generator=s.generator,
        ).to(s.device)  # initialised on the CPU (device-independent), trained on context.device
        target = data.fine_train.to(s.device)
        z, norm = standardized_inputs(s.z_train, params, centre=bool(params["bias"]))

        def loss(idx: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(head.fine_logits(z[idx]), target[idx])

        history = descend(
            list(head.parameters()), loss, len(s.z_train), lr=float(params["lr"]),
            steps=int(params["steps"]), optimizer=str(params["optimizer"]),
            batch_size=int(params["batch_size"]), seed=context.seed, progress=context.progress,
            stage="train fine", stop_tol=float(params["stop_tol"]),
        )
        if norm is not None:
            fold_standardization(head.weight, head.bias, *norm)
        info = {**training_report(head, s, data, history), **s.info}
        return Classifier(head, s.backbone, features=s.feature_means(data), info=info)
