"""foolbox 3 adapters: L2 PGD (fixed-epsilon) and L2 DeepFool (minimisation).

Both attack the classifier's 2-logit view of the binary decision, so they optimise exactly the
decision that is reported. PGD runs once per radius (it is a fixed-epsilon attack) and only on
points not already broken at a smaller radius; ``restarts`` extra random starts are tried on the
points that survive. DeepFool runs once and gives every point's (approximately) minimal distance,
hence a whole robustness curve; each adversarial it returns is checked by the model. It is
foolbox's ``L2DeepFoolAttack(candidates=2, loss="logits")`` re-implemented in torch
(:func:`l2_deepfool`): the same iterates, but points that are done leave the batch.

PGD's ``search`` picks how the radii are visited (both drivers live in :mod:`fabench.attacks.base`
and are shared with APGD, :mod:`fabench.attacks.autoattack`):

* ``"grid"``: foolbox's L2PGD once per radius, in increasing order, on the points not yet broken
  (up to ``R`` runs; the exhaustive reference; :func:`~fabench.attacks.base.fixed_radius_outcome`);
* ``"bisect"`` (default): :func:`~fabench.attacks.base.bisect_outcome`: per point, a run at the
  largest radius, then bisection over the radius grid (about ``1 + log2 R`` runs, each on the
  points whose fate is not yet decided, each point at its own radius; a random start as foolbox,
  and where it fails a second run warm-started from the closest adversarial found so far,
  projected into the new ball), then a walk down from the smallest broken radius while it keeps
  succeeding, so a point PGD can break below a radius where it failed once is still found. What
  PGD finds is not monotone in the radius; bisection is not guaranteed to find all that the grid
  finds (it did on every fixed-seed case tested). It runs the same L2 PGD as foolbox (random start
  in the ball, normalised-gradient steps of ``rel_stepsize * eps``, projection, clipping;
  :func:`l2_pgd`) in plain torch, with one epsilon per point. On a two-layer head on an unbounded
  input (the synthetic task) the bisection runs it in the head's span plus one ghost coordinate
  (:class:`~fabench.attacks.exact.SpanView`, ``U + 1`` instead of ``d`` coordinates): the same
  starts, the same iterates mapped back to the input space (up to float round-off).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

from fabench._lazy import lazy
from fabench import registry

from fabench.attacks.base import (
    MAX_RESTARTS, MAX_STEP_FACTOR, MAX_STEPS, Bands, bisect_outcome, candidates_outcome, clip, fixed_radius_outcome,
    per_point, random_in_ball,
)
from fabench.types import AttackOutcome, Meta, Params, TaskData

if TYPE_CHECKING:  # pragma: no cover - heavy imports are lazy (see fabench._lazy)
    import torch
    import torch.nn.functional as F
else:
    torch = lazy("torch")
    F = lazy("torch.nn.functional")

if TYPE_CHECKING:  # pragma: no cover
    from fabench.models import Classifier


def import_foolbox() -> Any:
    """Import foolbox, silencing the DeprecationWarning its scipy import emits."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import foolbox

    return foolbox


def _fmodel(model: "Classifier", data: TaskData) -> Any:
    fb = import_foolbox()
    model.eval()
    from fabench.device import module_device

    return fb.PyTorchModel(model, bounds=data.bounds, device=module_device(model))


def l2_pgd(
    model: "Callable[[torch.Tensor], torch.Tensor]", x0: torch.Tensor, y: torch.Tensor, eps: torch.Tensor,
    start: torch.Tensor, *,
    steps: int, rel_stepsize: float, bounds: tuple[float, float],
) -> torch.Tensor:
    """foolbox's L2PGD with one epsilon per point and a given start ``x0 + start`` (inside the ball).

    ``steps`` ascents of the summed cross-entropy along its L2-normalised gradient with step
    ``rel_stepsize * eps``, each followed by projection onto the ball and clipping to ``bounds``.
    """
    eps = eps.to(x0)
    e = per_point(eps, x0)
    step = rel_stepsize * e
    x = clip(x0 + start, bounds).detach()
    for _ in range(steps):
        x.requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(x), y, reduction="sum")
            (g,) = torch.autograd.grad(loss, x)
        # In place on the fresh gradient, the same arithmetic as
        # ``x0 + into_ball(x + step * g / |g| - x0, eps)`` (then clipped) without five new
        # tensors of the batch's size per step (2-5x faster on the synthetic task, bit-identical).
        g.div_(per_point(g.flatten(1).norm(dim=1).clamp_min(1e-12), g))
        g.mul_(step).add_(x.detach()).sub_(x0)  # the step, relative to x0
        norms = g.flatten(1).norm(dim=1).clamp_min(1e-12)
        g.mul_(per_point(torch.clamp(eps / norms, max=1.0), g)).add_(x0)  # into the ball
        x = clip(g, bounds, inplace=True)
    return x.detach()


def l2_deepfool(
    model: "Classifier", x0: torch.Tensor, y: torch.Tensor, *, steps: int, overshoot: float,
    bounds: tuple[float, float],
) -> torch.Tensor:
    """foolbox's ``L2DeepFoolAttack(candidates=2, loss="logits")`` on the 2-logit view, in plain torch.

    The same iteration (the linearised step to the other class's logit, ``|l| / ||grad||^2 * grad``
    with foolbox's ``1e-4`` and ``1e-8`` guards, accumulated and applied with ``1 + overshoot``,
    clipped to ``bounds``; a point stops at its first misclassified iterate, ``argmax(logits) != y``
    as foolbox's criterion), but points that are done leave the batch, so a few points that never
    flip do not keep the whole batch running for ``steps`` iterations. The loss is a sum over
    points, so each point's iterates are foolbox's (up to float round-off).
    """
    out = x0.detach().clone()
    shape = (-1,) + (1,) * (x0.dim() - 1)
    with torch.no_grad():
        logits0 = model(x0)
    order = logits0.argsort(dim=-1).flip(dims=(-1,))  # foolbox's candidate classes
    i0, i1 = order[:, 0], order[:, 1]
    alive = torch.arange(len(x0), device=x0.device)
    x, p_total = x0.detach(), torch.zeros_like(x0)
    for _ in range(steps):
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(xg)
            rows = torch.arange(len(xg), device=x0.device)
            loss = logits[rows, i1[alive]] - logits[rows, i0[alive]]
            (grad,) = torch.autograd.grad(loss.sum(), xg)
        adv = logits.detach().argmax(dim=-1) != y[alive]
        if adv.any():  # done: these keep their current iterate
            out[alive[adv]] = x[adv]
            keep = ~adv
            if not keep.any():
                return out
            alive, x, p_total = alive[keep], x[keep], p_total[keep]
            loss, grad = loss[keep], grad[keep]
        gnorm = grad.flatten(1).norm(dim=1) + 1e-8
        dist = loss.detach().abs() / gnorm + 1e-4
        p_total = p_total + (dist / gnorm).reshape(shape) * grad
        x = clip(x0[alive] + (1.0 + overshoot) * p_total, bounds)
    out[alive] = x
    return out


@registry.attacks.register
class PGDAttack:
    meta: ClassVar[Meta] = Meta(
        name="pgd",
        description="L2 projected gradient descent (foolbox's L2PGD), per-point bisection over the radii "
                    "(search=bisect) or one run per radius (search=grid), + random restarts",
        reference="Madry et al. (2018); foolbox.attacks.L2PGD",
        params={"steps": 50, "rel_stepsize": 0.05, "random_start": True, "restarts": 0, "search": "bisect"},
        bounds={"steps": (1, MAX_STEPS), "rel_stepsize": (1e-9, MAX_STEP_FACTOR), "restarts": (0, MAX_RESTARTS)},
        choices={"search": ("bisect", "grid")},
    )
    minimization: ClassVar[bool] = False

    @staticmethod
    def searches_bands(params: Params) -> bool:
        """Whether :meth:`run` takes per-point ``bands`` (the bisection does)."""
        return str(params.get("search", "grid")) == "bisect"

    def run(
        self, model: "Classifier", x: torch.Tensor, y: torch.Tensor, radii: Sequence[float], *,
        data: TaskData, params: Params, seed: int, bands: Bands | None = None,
    ) -> AttackOutcome:
        """``bands`` (only with ``search="bisect"``): each point's part of the grid (:class:`~fabench.attacks.base.Bands`)."""
        if bands is not None and not self.searches_bands(params):
            raise ValueError("pgd takes bands only with search=bisect")
        if str(params.get("search", "grid")) == "bisect":
            from fabench.attacks.exact import span_view

            opts = dict(steps=int(params["steps"]), rel_stepsize=float(params["rel_stepsize"]), bounds=data.bounds)
            rand = bool(params["random_start"])
            span = span_view(model, x, data.bounds)  # a head on an unbounded input: its span + 1 coordinate
            xc = span.coords(x) if span is not None else x

            def pgd(idx: torch.Tensor, eps: torch.Tensor, start: torch.Tensor | None) -> torch.Tensor:
                if start is None:  # a fresh start, as foolbox
                    start = random_in_ball(x[idx], eps) if rand else torch.zeros_like(x[idx])
                if span is None:
                    return l2_pgd(model, x[idx], y[idx], eps, start, **opts)  # type: ignore[arg-type]
                found = l2_pgd(span, xc[idx], y[idx], eps, span.perturbation(start), **opts)  # type: ignore[arg-type]
                return span.lift(x[idx], found, xc[idx], start=start)

            with torch.random.fork_rng():
                torch.manual_seed(seed)
                return bisect_outcome(model, x, y, radii, attempt=pgd, attempts=1 + int(params["restarts"]),
                                      warm_start=True, bands=bands)
        fb = import_foolbox()
        fmodel = _fmodel(model, data)
        attack = fb.attacks.L2PGD(
            rel_stepsize=float(params["rel_stepsize"]), steps=int(params["steps"]),
            random_start=bool(params["random_start"]),
        )

        def run_once(idx: torch.Tensor, eps: float, k: int) -> torch.Tensor:
            _, adv, _ = attack(fmodel, x[idx], fb.criteria.Misclassification(y[idx]), epsilons=eps)
            return adv

        return fixed_radius_outcome(model, x, y, radii, attempt=run_once, attempts=1 + int(params["restarts"]), seed=seed)


@registry.attacks.register
class DeepFoolAttack:
    meta: ClassVar[Meta] = Meta(
        name="deepfool",
        description="foolbox L2 DeepFool: minimal-distance attack, one run gives a whole curve",
        reference="Moosavi-Dezfooli et al. (2016); foolbox.attacks.L2DeepFoolAttack",
        params={"steps": 100, "overshoot": 0.02},
        bounds={"steps": (1, MAX_STEPS), "overshoot": (0.0, MAX_STEP_FACTOR)},
    )
    minimization: ClassVar[bool] = True

    def run(
        self, model: "Classifier", x: torch.Tensor, y: torch.Tensor, radii: Sequence[float], *,
        data: TaskData, params: Params, seed: int,
    ) -> AttackOutcome:
        model.eval()
        adv = l2_deepfool(model, x, y, steps=int(params["steps"]), overshoot=float(params["overshoot"]),
                          bounds=data.bounds)
        return candidates_outcome(model, x, y, adv, radii)
