"""``surrogate``: L2 PGD with gradients from a smoothed copy of the network, judged on the true one.

At a clean point of a ReLU network the units that would vote for the other class are usually
dead (negative pre-activation, zero gradient), so plain gradient attacks only see the active
units and stop short of the boundary (the dead-ReLU failure behind the averaging head's
``sqrt(d/k)`` distance: Li, Pan, Lyu & Li, ICLR 2025, Sec. 4). This attack takes its gradients from
a *smoothed* copy of the same network instead: every ReLU (the heads' ``torch.relu`` calls,
``nn.ReLU`` modules of a backbone, ``F.relu``) is replaced by ``softplus_beta(z) = log(1 +
exp(beta z)) / beta``, whose gradient ``sigmoid(beta z)`` is never zero, with ``beta`` annealed
geometrically from ``beta_start`` (smooth: dead units still pull) to ``beta_end`` (close to the
ReLU) over the steps. ``beta`` is relative to the scale of the input: the softplus sees
``z / scale`` with ``scale`` the median L2 norm of the attacked points over ``sqrt(numel)``
(1 for unit-variance inputs), so the same schedule fits every task.

Every iterate is judged on the **true** network: a point counts as broken at ``eps`` only if some
iterate inside the ball is misclassified by the real model (and the closest such iterate is
returned as the adversarial example, which fabench's validation checks again). Like ``pgd`` it is
a fixed-epsilon attack, run per radius in increasing order on the points not yet broken, with
``restarts`` extra random starts in the ball on the survivors.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Sequence

from fabench._lazy import lazy
from fabench import registry
from fabench.attacks.base import (
    MAX_CONSTANT, MAX_RESTARTS, MAX_STEP_FACTOR, MAX_STEPS, RADIUS_RTOL, clip, fixed_radius_outcome, into_ball, is_adversarial,
    per_point, random_in_ball,
)
from fabench.types import AttackOutcome, Meta, Params, TaskData

if TYPE_CHECKING:  # pragma: no cover - heavy imports are lazy (see fabench._lazy)
    import torch
    import torch.nn.functional as F

    from fabench.models import Classifier
else:
    torch = lazy("torch")
    F = lazy("torch.nn.functional")


@contextlib.contextmanager
def smoothed_relu(beta: Callable[[], float], scale: float = 1.0) -> Iterator[None]:
    """Within the block every ReLU (``torch.relu``, ``F.relu``, ``Tensor.relu``, ``nn.ReLU``) is
    ``softplus`` with inverse temperature ``beta() / scale`` (read at each call, so it can be annealed)."""
    import torch
    import torch.nn.functional as F  # the real modules (patched below), not fabench._lazy's proxies

    originals: dict[str, Any] = {
        "torch.relu": torch.relu, "F.relu": F.relu, "Tensor.relu": torch.Tensor.relu,
        "ReLU.forward": torch.nn.ReLU.forward,
    }

    def soft(z: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return F.softplus(z, beta=float(beta()) / scale)

    def soft_module(self: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
        return soft(z)

    torch.relu = soft  # type: ignore[assignment]
    F.relu = soft  # type: ignore[assignment]
    torch.Tensor.relu = soft  # type: ignore[method-assign,assignment]
    torch.nn.ReLU.forward = soft_module  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        torch.relu = originals["torch.relu"]
        F.relu = originals["F.relu"]
        torch.Tensor.relu = originals["Tensor.relu"]  # type: ignore[method-assign]
        torch.nn.ReLU.forward = originals["ReLU.forward"]  # type: ignore[method-assign]


def _project(x0: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    """``x`` projected onto the ball of radius ``eps`` around ``x0``, then clipped to the bounds."""
    return clip(x0 + into_ball(x - x0, eps), bounds)


def surrogate_pgd(
    model: "Classifier", x0: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, start: torch.Tensor, *,
    steps: int, rel_stepsize: float, beta_start: float, beta_end: float, bounds: tuple[float, float],
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``steps`` normalised-gradient ascents of the smoothed network's cross entropy (step
    ``rel_stepsize * eps``, projected onto the ball and the bounds), ``beta`` annealed geometrically.

    Returns ``(found, adv)``: whether some iterate (the start included) is misclassified by the
    true ``model`` within the ball, and the closest such iterate (``x0`` where none was found)."""
    e = per_point(eps, x0)
    step = rel_stepsize * e
    ratio = (beta_end / beta_start) ** (1.0 / max(steps - 1, 1))
    beta = [beta_start]
    found = torch.zeros(len(x0), dtype=torch.bool, device=x0.device)
    best_norm = torch.full((len(x0),), float("inf"), device=x0.device)
    best = x0.clone()
    tol = eps * (1 + RADIUS_RTOL) + 1e-6

    def judge(x: torch.Tensor) -> None:
        norms = (x - x0).flatten(1).norm(dim=1)
        ok = is_adversarial(model, x, y) & (norms <= tol) & (norms < best_norm)
        best[ok] = x[ok]
        best_norm[ok] = norms[ok]
        found[ok] = True

    x = _project(x0, x0 + start, eps, bounds).detach()
    judge(x)
    with smoothed_relu(lambda: beta[0], scale):
        for t in range(steps):
            beta[0] = beta_start * ratio**t
            x.requires_grad_(True)
            with torch.enable_grad():
                loss = F.cross_entropy(model(x), y, reduction="sum")
                (g,) = torch.autograd.grad(loss, x)
            g = g / per_point(g.flatten(1).norm(dim=1).clamp_min(1e-12), g)
            x = _project(x0, x.detach() + step * g, eps, bounds).detach()
            with _true_relu():
                judge(x)
    return found, best


@contextlib.contextmanager
def _true_relu() -> Iterator[None]:
    """Undo :func:`smoothed_relu` inside its block (the true network judges every iterate)."""
    import torch
    import torch.nn.functional as F  # the real modules, as in smoothed_relu

    relu, f_relu, tensor_relu, module_forward = _true_relus()
    saved = (torch.relu, F.relu, torch.Tensor.relu, torch.nn.ReLU.forward)
    torch.relu, F.relu = relu, f_relu
    torch.Tensor.relu, torch.nn.ReLU.forward = tensor_relu, module_forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.relu, F.relu = saved[0], saved[1]
        torch.Tensor.relu, torch.nn.ReLU.forward = saved[2], saved[3]  # type: ignore[method-assign]


@functools.cache
def _true_relus() -> tuple[Any, Any, Any, Any]:
    """torch's own ReLUs, read once before any patching (the first attack call)."""
    import torch
    import torch.nn.functional as F

    return torch.relu, F.relu, torch.Tensor.relu, torch.nn.ReLU.forward


@registry.attacks.register
class SurrogateAttack:
    meta: ClassVar[Meta] = Meta(
        name="surrogate",
        description="L2 PGD on a softplus-smoothed copy of the network (annealed beta), every iterate "
                    "judged on the true network; one run per radius + random restarts",
        reference="smoothed-ReLU surrogate gradients (BPDA-style; Athalye et al. 2018) with L2 PGD "
                  "(Madry et al. 2018); dead-ReLU failure of gradient attacks: Li et al. (ICLR 2025)",
        params={"steps": 100, "rel_stepsize": 0.05, "beta_start": 1.0, "beta_end": 100.0, "restarts": 1,
                "random_start": False},
        bounds={"steps": (1, MAX_STEPS), "rel_stepsize": (1e-9, MAX_STEP_FACTOR), "beta_start": (1e-9, MAX_CONSTANT),
                "beta_end": (1e-9, MAX_CONSTANT), "restarts": (0, MAX_RESTARTS)},
    )
    minimization: ClassVar[bool] = False

    def run(
        self, model: "Classifier", x: torch.Tensor, y: torch.Tensor, radii: Sequence[float], *,
        data: TaskData, params: Params, seed: int,
    ) -> AttackOutcome:
        n = len(x)
        scale = float(x.flatten(1).norm(dim=1).median()) / math.sqrt(max(x[0].numel(), 1)) if n else 1.0
        opts = dict(steps=int(params["steps"]), rel_stepsize=float(params["rel_stepsize"]),
                    beta_start=float(params["beta_start"]), beta_end=float(params["beta_end"]),
                    bounds=tuple(data.bounds), scale=max(scale, 1e-12))
        model.eval()

        def attempt(idx: torch.Tensor, r: float, k: int) -> torch.Tensor:
            i = idx.to(x.device)
            eps = torch.full((len(idx),), r, device=x.device)
            rand = k > 0 or bool(params["random_start"])
            start = random_in_ball(x[i], eps) if rand else torch.zeros_like(x[i])
            return surrogate_pgd(model, x[i], y[i], eps, start, **opts)[1]  # type: ignore[arg-type]

        return fixed_radius_outcome(model, x, y, radii, attempt=attempt, attempts=1 + int(params["restarts"]),
                                    seed=seed)
