"""Gradient descent for heads on fixed inputs (the paper trains with full-batch GD)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from fabench._lazy import lazy, no_grad
from fabench.errors import ConfigError
from fabench.types import ProgressFn, no_progress

if TYPE_CHECKING:  # pragma: no cover - heavy imports are lazy (see fabench._lazy)
    import torch
else:
    torch = lazy("torch")

LossFn = Callable[["torch.Tensor"], "torch.Tensor"]
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
    stop_tol: float = 0.0,
    min_steps: int = 100,
) -> list[float]:
    """Run at most ``steps`` updates and return the loss of each.

    ``optimizer="gd"`` is plain (full-batch when ``batch_size`` is 0) gradient descent, the
    paper's setting; ``"adam"`` is offered for real-data heads. Mini-batches are drawn without
    replacement from a seeded permutation. With ``stop_tol > 0`` training stops early, once at
    least ``min_steps`` steps are done, as soon as the loss has flattened: :func:`late_decrease`
    (checked every 10 steps) is at most ``stop_tol``.
    """
    if lr <= 0 or steps < 0 or batch_size < 0:
        raise ConfigError(f"need lr > 0, steps >= 0, batch_size >= 0 (got {lr}, {steps}, {batch_size})")
    trainable = [p for p in parameters if p.requires_grad]
    opt: _GD | torch.optim.Optimizer
    if optimizer == "gd":
        opt = _GD(trainable, lr=lr)
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
        n_done = step + 1
        if stop_tol > 0 and n_done >= min_steps and n_done % 10 == 0 and late_decrease(history) <= stop_tol:
            progress(stage, steps, steps)
            break
    return history


class _GD:
    """Plain gradient descent, ``p <- p - lr * grad``: the arithmetic of ``torch.optim.SGD`` without
    momentum or weight decay (``p.add_(grad, alpha=-lr)``), without its import (``torch.optim``
    pulls in ``torch._dynamo``, about 1.7 s here, for a two-line update)."""

    def __init__(self, params: list[torch.nn.Parameter], *, lr: float) -> None:
        self.params, self.lr = params, lr

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @no_grad
    def step(self) -> None:
        for p in self.params:
            if p.grad is not None:
                p.add_(p.grad, alpha=-self.lr)


def standardizer(z: torch.Tensor, *, centre: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, scale)`` of the head's training inputs per coordinate: GD then runs on
    ``(z - mean) / scale`` (``mean`` is zero when ``centre`` is false). A diagonal preconditioner:
    :func:`fold_standardization` turns the trained head back into the same function of the raw ``z``.

    ``scale`` is the coordinate's standard deviation, but never below :data:`STD_FLOOR` times the
    median one (a constant coordinate gets that floor too): a nearly dead CNN channel (std 5e-6
    where the median is 2) would otherwise be blown up by 1e5, GD would give it a weight that,
    folded back, is 1e5 times larger in raw units, and the head would flip under a feature-space
    perturbation 1000 times smaller than the distance between class means (measured on mnist5v5).
    """
    mean = z.mean(dim=0) if centre else z.new_zeros(z.shape[1])
    std = z.std(dim=0) if len(z) > 1 else z.new_ones(z.shape[1])
    typical = std[std > 0].median() if bool((std > 0).any()) else std.new_tensor(1.0)
    scale = torch.clamp(std, min=float(STD_FLOOR * typical))
    return mean, scale


#: Smallest per-coordinate scale of :func:`standardizer`, relative to the median coordinate's std.
STD_FLOOR = 0.1


@no_grad
def fold_standardization(weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> None:
    """In place: ``ReLU(<w, (z - mean)/scale> + b) = ReLU(<w/scale, z> + b - <w, mean/scale>)``
    for every unit (``weight``: ``... x D``, ``bias``: ``...``), so the head reads the raw ``z``."""
    bias.sub_(weight @ (mean / scale))
    weight.div_(scale)


def late_decrease(history: list[float]) -> float:
    """The loss decrease over the last :data:`CONVERGENCE_WINDOW` of the steps, as a fraction of
    the whole decrease (0 on a plateau, 0.1 on a straight line)."""
    n = len(history)
    if n < 2:
        return 0.0
    start, late, end = history[0], history[int(n * (1 - CONVERGENCE_WINDOW))], history[-1]
    total = start - end
    return (late - end) / total if total > 0 else 0.0


#: A head has not converged when more than this fraction of its total loss decrease happened in
#: the last :data:`CONVERGENCE_WINDOW` of its steps (the curve is still falling steeply) ...
CONVERGENCE_TOL = 0.01
CONVERGENCE_WINDOW = 0.1
#: ... or when its training accuracy is this far below the backbone's own (linear, fine-class)
#: test accuracy: a converged head should separate its training features at least as well as the
#: backbone's last layer separates unseen ones.
PROBE_MARGIN = 0.01


def convergence(
    history: list[float], *, train_accuracy: float, probe_accuracy: float | None = None,
) -> dict[str, object]:
    """Did gradient descent on the head converge? Final loss, training accuracy, and a verdict.

    The paper (Li, Pan, Lyu, Li, ICLR 2025) analyses the network GD converges to; a head stopped
    early is not that network. ``late_decrease`` is the loss decrease over the last 10% of the
    steps as a fraction of the whole decrease (0 on a plateau, 0.1 on a straight line);
    ``warning`` (None when converged) is the one line a report should print.
    """
    n = len(history)
    info: dict[str, object] = {
        "steps": n, "final_loss": history[-1] if n else None, "train_accuracy": train_accuracy,
        "probe_accuracy": probe_accuracy,
    }
    reasons = []
    if n >= 10:
        late = late_decrease(history)
        info["late_decrease"] = late
        if late > CONVERGENCE_TOL:
            reasons.append(f"{late:.1%} of its loss decrease came in the last "
                           f"{CONVERGENCE_WINDOW:.0%} of the {n} steps")
    if probe_accuracy is not None and train_accuracy < probe_accuracy - PROBE_MARGIN:
        reasons.append(f"training accuracy {train_accuracy:.3f} is below the backbone's own "
                       f"test accuracy {probe_accuracy:.3f}")
    info["converged"] = not reasons
    info["warning"] = ("head training has not converged: " + "; ".join(reasons)
                       + " (raise recipe.steps or recipe.lr)") if reasons else None
    return info
