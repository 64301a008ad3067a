"""Two-layer ReLU heads of the paper and the handcrafted robust head.

Every head maps head inputs ``z`` (``N x D``) to a binary margin ``g(z)`` whose sign is the binary
decision, and exposes its hidden units for the feature-averaging metrics: ``unit_weights()``
(``U x D``) and ``unit_positive()`` (which binary class each unit is assigned to).
"""

from __future__ import annotations

import torch
from torch import nn


class Head(nn.Module):
    """Base class: a margin and an inspectable set of hidden units."""

    def margin(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.margin(z)

    def unit_weights(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def unit_positive(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def unit_labels(self) -> list[str]:
        pos = self.unit_positive().tolist()
        return [f"unit {i} ({'+' if p else '-'})" for i, p in enumerate(pos)]


class BinaryHead(Head):
    """``f(z) = 1/m sum_r ReLU(<w+_r, z> + b+_r) - 1/m sum_r ReLU(<w-_r, z> + b-_r)``.

    The second layer is fixed to ``+-1/m``; the first layer is initialised i.i.d.
    ``N(0, init_std^2)`` for weights and biases, as in the paper's experiments.
    """

    def __init__(
        self, dim: int, m: int, *, init_std: float = 1e-5, bias: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.m = m
        self.weight = nn.Parameter(init_std * torch.randn(2, m, dim, generator=generator))
        b = init_std * torch.randn(2, m, generator=generator) if bias else torch.zeros(2, m)
        self.bias = nn.Parameter(b, requires_grad=bias)

    def activations(self, z: torch.Tensor) -> torch.Tensor:
        """``ReLU(<w, z> + b)`` for both halves: ``N x 2 x m`` (index 0 = positive half)."""
        return torch.relu(torch.einsum("nd,smd->nsm", z, self.weight) + self.bias)

    def margin(self, z: torch.Tensor) -> torch.Tensor:
        a = self.activations(z).mean(dim=2)
        return a[:, 0] - a[:, 1]

    def unit_weights(self) -> torch.Tensor:
        return self.weight.detach().reshape(2 * self.m, -1)

    def unit_positive(self) -> torch.Tensor:
        return torch.arange(2 * self.m) < self.m

    def unit_labels(self) -> list[str]:
        return [f"w+{r}" for r in range(self.m)] + [f"w-{r}" for r in range(self.m)]


class FineHead(Head):
    """The feature-decoupled head: ``k`` groups of ``h`` ReLU units (fine-grained supervision).

    ``f_j(z) = 1/h sum_r ReLU(<w_{j,r}, z> + b_{j,r})`` are the fine logits, trained with cross
    entropy on cluster labels; the binary margin is
    ``g(z) = logsumexp_{j in J+} f_j(z) - logsumexp_{j in J-} f_j(z)``, a smooth, non-saturating
    log-odds of the binary decision (attacks see this margin, never a difference of softmax
    probabilities).
    """

    positive: torch.Tensor

    def __init__(
        self, dim: int, k: int, h: int, positive: torch.Tensor, *, init_std: float = 1e-5,
        bias: bool = False, generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.k, self.h = k, h
        self.register_buffer("positive", positive.clone().bool())
        self.weight = nn.Parameter(init_std * torch.randn(k, h, dim, generator=generator))
        b = init_std * torch.randn(k, h, generator=generator) if bias else torch.zeros(k, h)
        self.bias = nn.Parameter(b, requires_grad=bias)

    def fine_logits(self, z: torch.Tensor) -> torch.Tensor:
        a = torch.relu(torch.einsum("nd,khd->nkh", z, self.weight) + self.bias)
        return a.mean(dim=2)

    def margin(self, z: torch.Tensor) -> torch.Tensor:
        f = self.fine_logits(z)
        return torch.logsumexp(f[:, self.positive], dim=1) - torch.logsumexp(f[:, ~self.positive], dim=1)

    def unit_weights(self) -> torch.Tensor:
        """One unit per group: the group's mean weight vector."""
        return self.weight.detach().mean(dim=1)

    def unit_positive(self) -> torch.Tensor:
        return self.positive.clone()

    def unit_labels(self) -> list[str]:
        return [f"group {j}" for j in range(self.k)]


class RobustHead(Head):
    """The handcrafted ``f_robust``: one ReLU unit per feature with a noise-filtering bias.

    ``f(z) = sum_{j in J+} ReLU(<u_j, z - c> - t_j) - sum_{j in J-} ReLU(<u_j, z - c> - t_j)`` with
    ``u_j = mu_j / ||mu_j||`` and thresholds ``t_j``; ``c`` is an optional centre (zero for the
    synthetic task, whose features are already centred).
    """

    directions: torch.Tensor
    thresholds: torch.Tensor
    positive: torch.Tensor
    centre: torch.Tensor

    def __init__(
        self, features: torch.Tensor, positive: torch.Tensor, thresholds: torch.Tensor,
        centre: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        norms = features.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.register_buffer("directions", features / norms)
        self.register_buffer("thresholds", thresholds.clone().float())
        self.register_buffer("positive", positive.clone().bool())
        c = centre if centre is not None else torch.zeros(features.shape[1])
        self.register_buffer("centre", c.clone().float())

    def margin(self, z: torch.Tensor) -> torch.Tensor:
        a = torch.relu((z - self.centre) @ self.directions.T - self.thresholds)
        sign = self.positive.float() * 2 - 1
        return a @ sign

    def unit_weights(self) -> torch.Tensor:
        return self.directions.clone()

    def unit_positive(self) -> torch.Tensor:
        return self.positive.clone()

    def unit_labels(self) -> list[str]:
        return [f"unit {j}" for j in range(self.directions.shape[0])]
