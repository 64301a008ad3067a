"""Gradient descent for heads on fixed inputs (the paper trains with full-batch GD)."""

from __future__ import annotations

from typing import Callable

import torch

from fabench.errors import ConfigError
from fabench.types import ProgressFn, no_progress

LossFn = Callable[[torch.Tensor], torch.Tensor]
"""``loss(indices)``: the mean loss over the training points ``indices``."""


def descend(
    parameters: list[torch.nn.Parameter],
    loss: LossFn,
    n: int,
    *,
    lr: float,
    steps: int,
    optimizer: str = "gd",
    batch_size: int = 0,
    seed: int = 0,
    progress: ProgressFn = no_progress,
    stage: str = "train",
) -> list[float]:
    """Run ``steps`` updates and return the loss of each.

    ``optimizer="gd"`` is plain (full-batch when ``batch_size`` is 0) gradient descent, the
    paper's setting; ``"adam"`` is offered for real-data heads. Mini-batches are drawn without
    replacement from a seeded permutation.
    """
    if lr <= 0 or steps < 0 or batch_size < 0:
        raise ConfigError(f"need lr > 0, steps >= 0, batch_size >= 0 (got {lr}, {steps}, {batch_size})")
    trainable = [p for p in parameters if p.requires_grad]
    if optimizer == "gd":
        opt: torch.optim.Optimizer = torch.optim.SGD(trainable, lr=lr)
    elif optimizer == "adam":
        opt = torch.optim.Adam(trainable, lr=lr)
    else:
        raise ConfigError(f"unknown optimizer {optimizer!r}; known: gd, adam")
    gen = torch.Generator().manual_seed(seed)
    full = torch.arange(n)
    order = torch.randperm(n, generator=gen)
    pos = 0
    history = []
    for step in range(steps):
        if batch_size == 0 or batch_size >= n:
            idx = full
        else:
            if pos + batch_size > n:
                order, pos = torch.randperm(n, generator=gen), 0
            idx, pos = order[pos : pos + batch_size], pos + batch_size
        opt.zero_grad(set_to_none=True)
        value = loss(idx)
        value.backward()
        opt.step()
        history.append(float(value.detach()))
        if (step + 1) % max(1, steps // 50) == 0 or step + 1 == steps:
            progress(stage, step + 1, steps)
    return history
