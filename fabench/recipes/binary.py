"""Recipe ``binary``: the two-layer ReLU net trained on binary labels (the paper's model and main result).

Full-batch gradient descent on the logistic loss ``mean log(1 + exp(-y f(x)))``, second layer
fixed to ``+-1/m``. The paper proves and shows experimentally that every neuron then
converges to the *average* of its class's features: feature averaging.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from fabench._lazy import lazy
from fabench import registry
from fabench.models.backbones import BACKBONE_BOUNDS, BACKBONE_CHOICES, BACKBONE_PARAMS
from fabench.recipes.common import setup_head, training_report
from fabench.recipes.training import descend
from fabench.types import FitContext, Meta, Params, TaskData

if TYPE_CHECKING:  # pragma: no cover - heavy imports are lazy (see fabench._lazy)
    import torch
    import torch.nn.functional as F

    from fabench.models import Classifier
else:
    torch = lazy("torch")
    F = lazy("torch.nn.functional")

GD_PARAMS: dict[str, Any] = {
    "lr": 0.001,
    "steps": 100,
    "init_std": 1e-5,
    "optimizer": "gd",
    "batch_size": 0,
}
GD_BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "lr": (0.0, None), "steps": (0, 10_000_000), "init_std": (0.0, None), "batch_size": (0, None),
}
GD_CHOICES: dict[str, tuple[Any, ...]] = {"optimizer": ("gd", "adam")}


@registry.recipes.register
class BinaryRecipe:
    meta: ClassVar[Meta] = Meta(
        name="binary",
        description="two-layer ReLU net, m+m neurons, fixed second layer, logistic loss, full-batch GD",
        reference="Li, Pan, Lyu, Li (ICLR 2025), main result (feature averaging)",
        params={"m": 5, "bias": True, **GD_PARAMS, **BACKBONE_PARAMS},
        bounds={"m": (1, 1_000_000), **GD_BOUNDS, **BACKBONE_BOUNDS},
        choices={**GD_CHOICES, **BACKBONE_CHOICES},
    )

    def fit(self, data: TaskData, params: Params, *, context: FitContext) -> Classifier:
        from fabench.models import BinaryHead, Classifier

        s = setup_head(data, params, context=context)
        head = BinaryHead(
            s.dim, int(params["m"]), init_std=float(params["init_std"]), bias=bool(params["bias"]),
            generator=s.generator,
        ).to(s.device)  # initialised on the CPU (device-independent), trained on context.device
        sign = data.y_train.float().to(s.device) * 2 - 1

        def loss(idx: torch.Tensor) -> torch.Tensor:
            return F.softplus(-sign[idx] * head.margin(s.z_train[idx])).mean()

        history = descend(
            list(head.parameters()), loss, len(s.z_train), lr=float(params["lr"]),
            steps=int(params["steps"]), optimizer=str(params["optimizer"]),
            batch_size=int(params["batch_size"]), seed=context.seed, progress=context.progress,
            stage="train binary",
        )
        info = {**training_report(head, s, data, history), **s.info}
        return Classifier(head, s.backbone, features=s.feature_means(data), info=info)
