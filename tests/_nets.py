"""Handcrafted nets shared by the attack tests."""

from __future__ import annotations

import torch

from fabench.models import BinaryHead, Classifier
from fabench.types import TaskData


def averaging_net(data: TaskData) -> Classifier:
    """The paper's averaged-feature net (Li, Pan, Lyu, Li, ICLR 2025): one unit per class, its
    weight the sum of the class's centres over ``d`` (no bias), the fixed point GD converges to."""
    d = int(data.features.shape[1])
    head = BinaryHead(d, 1, init_std=0.0, bias=False)
    pos = data.positive_mask
    with torch.no_grad():
        head.weight[0, 0] = data.features[pos].sum(0) / d
        head.weight[1, 0] = data.features[~pos].sum(0) / d
    return Classifier(head)
