"""What the head recipes share: the backbone, the head's training inputs, the seeded init."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fabench.models.backbones import build_backbone, head_inputs
from fabench.types import FitContext, Params, TaskData


@dataclass
class HeadSetup:
    backbone: nn.Module | None
    z_train: torch.Tensor
    generator: torch.Generator

    @property
    def dim(self) -> int:
        return int(self.z_train.shape[1])


def setup_head(data: TaskData, params: Params, *, context: FitContext) -> HeadSetup:
    """Build the frozen backbone, compute the head's training inputs once, seed the init."""
    backbone = build_backbone(data, params, context=context)
    z = head_inputs(backbone, data.x_train)
    return HeadSetup(backbone, z, torch.Generator().manual_seed(context.seed))
