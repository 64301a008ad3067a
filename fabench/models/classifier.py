"""The classifier every recipe returns: a frozen backbone, a head, and a 2-logit binary view."""

from __future__ import annotations

import copy
import weakref
from typing import Any

import torch
from torch import nn

from fabench.device import module_device
from fabench.metrics import class_means
from fabench.models.heads import Head
from fabench.types import TaskData


class Classifier(nn.Module):
    """``x -> backbone(x) -> head`` with ``forward(x) = [-g(x)/2, g(x)/2]``.

    ``g`` is the head's binary margin; class index 1 is the positive class ``J+``. The two logits
    differ by exactly ``g``, so a softmax over them is the logistic model of the paper and every
    attack optimises the decision that is reported. ``identity_backbone`` says that the head sees
    the input itself (flattened: no backbone), so the task's features are the head's features.
    """

    def __init__(
        self, head: Head, backbone: nn.Module | None = None, *, features: torch.Tensor | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone if backbone is not None else nn.Flatten()
        self.head = head
        self.identity_backbone = backbone is None
        self.feature_mu = features  # the head-space features, when the recipe already has them
        self.info: dict[str, Any] = dict(info or {})
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> "Classifier":
        super().train(mode)
        self.backbone.eval()  # the backbone stays frozen (batch-norm statistics included)
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The head's input: the backbone's (penultimate) features, flattened."""
        return self.backbone(x).flatten(1)

    def margin(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.margin(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.margin(x)
        return torch.stack([-g / 2, g / 2], dim=1)

    @torch.no_grad()
    def correct(self, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1024) -> torch.Tensor:
        """True where the binary decision is right: ``y_sign * g(x) > 0`` (strict).

        A point on the decision boundary (``g = 0``, e.g. where every unit of ``f_robust`` is off)
        is not classified correctly for either label: robustness claims need a strict decision.
        """
        out = [self.margin(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        g = torch.cat(out) if out else torch.zeros(0)
        return (y.float() * 2 - 1) * g > 0

    @torch.no_grad()
    def predict(self, x: torch.Tensor, *, batch_size: int = 1024) -> torch.Tensor:
        """Binary class index (1 = ``J+``) for every row of ``x``."""
        out = [self.margin(x[i : i + batch_size]) > 0 for i in range(0, len(x), batch_size)]
        return torch.cat(out).long() if out else torch.zeros(0, dtype=torch.long)

    def head_features(self, data: TaskData) -> torch.Tensor:
        """The features ``mu_j`` in the head's input space (``k x D``); see :func:`feature_means`."""
        if self.feature_mu is not None:
            return self.feature_mu
        return feature_means(self.backbone if not self.identity_backbone else None, data)


_CPU_TWINS: "weakref.WeakKeyDictionary[Classifier, tuple[tuple[tuple[int, int], ...], Classifier]]" = (
    weakref.WeakKeyDictionary())


def cpu_twin(model: Classifier) -> Classifier:
    """``model`` on the CPU: the model itself where it is there, else a copy, made once per model
    and state (the storage and version of every parameter and buffer tell a moved or changed one).

    For the float64 analyses of a head (:mod:`fabench.attacks.exact`, :mod:`fabench.certify`):
    small, sequential, and the same numbers on every device, where the attacks run on the points'
    device. Calls with the same twin share :func:`~fabench.attacks.exact.exact_distances`' memo.
    """
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.device.type == "cpu" for t in tensors):
        return model
    stamp = tuple((t.data_ptr(), t._version) for t in tensors)
    held = _CPU_TWINS.get(model)
    if held is None or held[0] != stamp:
        twin = copy.deepcopy(model).cpu().eval()
        _CPU_TWINS[model] = held = (stamp, twin)
    return held[1]


@torch.no_grad()
def feature_means(backbone: nn.Module | None, data: TaskData, *, batch_size: int = 512) -> torch.Tensor:
    """The features ``mu_j`` as the head sees them (``k x D``).

    With no backbone (the head sees the input) these are the task's features: the true centres
    of the synthetic task, the class-mean inputs of real data. Otherwise they are the class means
    of the backbone's features on the training set, the paper's definition for real data.
    """
    if backbone is None:
        return data.features.flatten(1).float()
    dev = module_device(backbone)
    feats = torch.cat(  # batches to the backbone's device, features back to the CPU
        [backbone(data.x_train[i : i + batch_size].to(dev)).flatten(1).cpu()
         for i in range(0, len(data.x_train), batch_size)]
    )
    return class_means(feats, data.fine_train, data.num_classes)
