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
from fabench.recipes.training import descend, fold_standardization, standardizer
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
    "standardize": False,
    "stop_tol": 0.0,
}
"""Gradient-descent settings shared by the trained heads. ``steps`` is the most steps; with
``stop_tol > 0`` training stops once the loss has flattened (at least 100 steps, then
:func:`fabench.recipes.training.late_decrease` <= ``stop_tol``). ``standardize`` runs GD on the
standardised head inputs ``(z - mean) / std`` (centred only when the head has biases; ``lr`` and
``init_std`` are then in those coordinates) and folds the map into the trained weights, so the
head is the same function of the raw inputs: a diagonal preconditioner for real-data features,
whose raw coordinates differ in scale by orders of magnitude."""
#: The largest learning rate and initial weight scale accepted (far above any that trains: the
#: built-in task files use lr up to 8); beyond them GD's float32 arithmetic overflows.
MAX_LR = 1e6
MAX_INIT_STD = 1e6
#: The largest mini-batch accepted: the most training points a built-in task has (the synthetic
#: task's ``n_train`` bound); a batch of at least the training set is full-batch GD.
MAX_BATCH_SIZE = 100_000_000
GD_BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "lr": (0.0, MAX_LR), "steps": (0, 10_000_000), "init_std": (0.0, MAX_INIT_STD), "batch_size": (0, MAX_BATCH_SIZE),
    "stop_tol": (0.0, 1.0),
}
#: The backbone's bounds, its learning rate capped as the head's.
BOUNDED_BACKBONE: dict[str, tuple[float | None, float | None]] = {**BACKBONE_BOUNDS, "backbone_lr": (0.0, MAX_LR)}
GD_CHOICES: dict[str, tuple[Any, ...]] = {"optimizer": ("gd", "adam")}


def standardized_inputs(
    z: torch.Tensor, params: Params, *, centre: bool,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """The inputs GD runs on and the ``(mean, scale)`` to fold back (``None``: the raw inputs)."""
    if not bool(params.get("standardize", False)):
        return z, None
    mean, scale = standardizer(z, centre=centre)
    return (z - mean) / scale, (mean, scale)


@registry.recipes.register
class BinaryRecipe:
    meta: ClassVar[Meta] = Meta(
        name="binary",
        description="two-layer ReLU net, m+m neurons, fixed second layer, logistic loss, full-batch GD",
        reference="Li, Pan, Lyu, Li (ICLR 2025), main result (feature averaging)",
        params={"m": 5, "bias": True, **GD_PARAMS, **BACKBONE_PARAMS},
        bounds={"m": (1, 1_000_000), **GD_BOUNDS, **BOUNDED_BACKBONE},
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
        z, norm = standardized_inputs(s.z_train, params, centre=bool(params["bias"]))

        def loss(idx: torch.Tensor) -> torch.Tensor:
            return F.softplus(-sign[idx] * head.margin(z[idx])).mean()

        history = descend(
            list(head.parameters()), loss, len(s.z_train), lr=float(params["lr"]),
            steps=int(params["steps"]), optimizer=str(params["optimizer"]),
            batch_size=int(params["batch_size"]), seed=context.seed, progress=context.progress,
            stage="train binary", stop_tol=float(params["stop_tol"]),
        )
        if norm is not None:
            fold_standardization(head.weight, head.bias, *norm)
        info = {**training_report(head, s, data, history), **s.info}
        return Classifier(head, s.backbone, features=s.feature_means(data), info=info)
