"""Recipe ``binary-adam``: the paper's binary two-layer head, trained with Adam instead of GD.

A recipe receives the task's data (:class:`fabench.types.TaskData`), its resolved parameters
(``meta.params`` with the user's ``--set`` overrides applied) and a :class:`fabench.types.FitContext`
(seed, progress callback, cache and data directories), and returns a trained
:class:`fabench.models.Classifier`. It does no attacking and no I/O: fabench does the rest.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from fabench.models import BinaryHead, Classifier
from fabench.types import FitContext, Meta, Params, TaskData


class BinaryAdamRecipe:
    meta: ClassVar[Meta] = Meta(
        name="binary-adam",
        description="binary two-layer ReLU head (fixed +-1/m second layer), logistic loss, full-batch Adam",
        reference="example plugin; head of Li, Pan, Lyu, Li (ICLR 2025), Section 2",
        # Every parameter with its default; `--set lr=0.01` parses to the default's type.
        params={"m": 5, "lr": 0.01, "steps": 100, "init_std": 1e-5},
    )

    def fit(self, data: TaskData, params: Params, *, context: FitContext) -> Classifier:
        # The head sees the inputs themselves (no backbone): flatten them.
        z = data.x_train.flatten(1).float()
        generator = torch.Generator().manual_seed(context.seed)  # seeded init: reproducible
        head = BinaryHead(z.shape[1], int(params["m"]), init_std=float(params["init_std"]), generator=generator)
        sign = data.y_train.float() * 2 - 1  # y = +1 for the positive clusters J+, -1 otherwise
        optimizer = torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=float(params["lr"]))
        steps = int(params["steps"])
        loss = torch.tensor(float("nan"))
        for step in range(steps):
            optimizer.zero_grad()
            loss = F.softplus(-sign * head.margin(z)).mean()  # logistic loss log(1 + exp(-y f(x)))
            loss.backward()
            optimizer.step()
            context.progress("train binary-adam", step + 1, steps)
        # `info` ends up in the record's model_info (keep it JSON-representable).
        return Classifier(head, info={"final_loss": float(loss.detach())})
