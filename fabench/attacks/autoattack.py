"""AutoAttack's L2 attacks from the reference package ``pyautoattack``: APGD-CE, FAB-L2, Square-L2.

Croce & Hein (2020), "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks". fabench runs the library's own attacks on the classifier's 2-logit view
``[-g/2, g/2]`` (so cross entropy is ``log(1 + exp(-y g))``; APGD-DLR needs three classes and is
not used) and checks every adversarial example on the model itself.

The library works in ``[0, 1]^d``. fabench maps each batch there affinely: a bounded task by its
bounds, an unbounded one (the synthetic task) by a box that contains every point and its ball of
the largest radius, ``u = (x - lo) / s``; radii are divided by ``s`` and distances multiplied
back, so the L2 geometry is unchanged. Square-L2 needs images: inputs of ``3 n^2`` or ``n^2``
features are viewed as ``3 x n x n`` / ``1 x n x n``, others are zero-padded to a square (the
padding is ignored by the model, so it only costs query budget).

``apgd`` and ``square`` are fixed-radius attacks: one run per radius, only on the points not
already broken at a smaller radius (:func:`~fabench.attacks.base.fixed_radius_outcome`). ``apgd``
with ``search="bisect"`` instead searches each point's breaking radius as PGD does
(:func:`~fabench.attacks.base.bisect_outcome`: the largest radius, bisection over the grid, a walk
down), each point of a probe at its own radius: :func:`apgd_l2` runs the library's
``APGDAttack.attack_single_run`` once per restart on every open point of the probe together (the
library's step is per point, so a radius per point only needs its ``eps`` shaped per point), where
``perturb`` would be called once per distinct radius (no warm start: random starts). The default protocol runs
``apgd`` that way at 100 iterations x 4 restarts (:data:`fabench.evaluation.DEFAULT_ATTACK_PARAMS`);
the audit's strong suite runs it with ``search="grid"`` at 100 x 5. ``fab`` minimises the
distance and gives a whole curve.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

from fabench._lazy import TorchModule, lazy
from fabench import registry
from fabench.attacks.base import (
    MAX_RESTARTS, MAX_STEP_FACTOR, MAX_STEPS, Bands, bisect_outcome, boxed, candidates_outcome, fixed_radius_outcome,
    nothing_broken, per_point,
)
from fabench.attacks.exact import solves as exact_solves
from fabench.types import AttackOutcome, Meta, Params, TaskData

if TYPE_CHECKING:  # pragma: no cover - heavy imports are lazy (see fabench._lazy)
    import torch
else:
    torch = lazy("torch")

if TYPE_CHECKING:  # pragma: no cover
    from fabench.models import Classifier


class UnitBoxView(TorchModule):  # a torch.nn.Module (made on first use: see fabench._lazy)
    """``u -> model(lo + s * u)`` on (optionally padded, image-shaped) inputs in ``[0, 1]``."""

    def __init__(self, model: "torch.nn.Module", shape: tuple[int, ...], lo: torch.Tensor, scale: float,
                 view: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.model, self.shape, self.lo, self.scale, self.view = model, shape, lo, scale, view
        self.numel = int(math.prod(shape))

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        u = ((x - self.lo) / self.scale).flatten(1)
        if self.view is not None:
            pad = int(math.prod(self.view)) - self.numel
            u = torch.cat([u, u.new_zeros(len(u), pad)], dim=1).reshape((-1,) + self.view)
        return u

    def from_unit(self, u: torch.Tensor) -> torch.Tensor:
        flat = u.flatten(1)[:, : self.numel]
        return (self.lo + self.scale * flat.reshape((-1,) + self.shape)).to(self.lo.dtype)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.model(self.from_unit(u))


def square_view(numel: int) -> tuple[int, int, int]:
    """An image shape ``c x n x n`` holding ``numel`` features (``c`` = 3 or 1, zero-padded if needed)."""
    for c in (3, 1):
        n = math.isqrt(numel // c)
        if numel % c == 0 and n * n * c == numel:
            return (c, n, n)
    n = math.isqrt(numel - 1) + 1
    return (1, n, n)


def unit_box(model: "torch.nn.Module", x: torch.Tensor, data: TaskData, max_radius: float, *,
             image: bool = False) -> UnitBoxView:
    lo_b, hi_b = data.bounds
    if math.isfinite(lo_b) and math.isfinite(hi_b):
        lo, scale = torch.tensor(lo_b, dtype=x.dtype, device=x.device), float(hi_b - lo_b)
    else:  # a box holding every point's ball of the largest radius
        margin = 2 * max_radius + 1.0
        lo = (x.min() - margin).detach().clone()
        scale = float(x.max() - x.min() + 2 * margin)
    view = square_view(int(math.prod(x.shape[1:]))) if image else None
    return UnitBoxView(model, tuple(x.shape[1:]), lo, scale, view)


def apgd_l2(
    box: UnitBoxView, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, *, steps: int, restarts: int,
    rho: float = 0.75, start: torch.Tensor | None = None,
    random_start: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Candidates for ``x`` from the library's APGD-CE (L2), each point at its own radius ``eps``
    (model units; one value per point).

    The restart loop of the library's ``APGDAttack.perturb``, with ``eps`` per point: each run is
    the library's ``attack_single_run`` on the points no earlier run fooled (a point keeps the
    first adversarial found), with the library's ``eps`` set to theirs, shaped ``B x 1 x ...``
    (every use of ``eps`` in its L2 step broadcasts per point: the random start, the step size and
    the projection). So one call attacks points at many radii together, where ``perturb`` takes
    one radius per call: on a GPU each APGD step costs launches and syncs whatever the batch, and
    on a CPU small batches waste most of a step. ``start`` (inside the balls): one warm-started run
    first, then ``restarts`` random ones. Points the model already misclassifies are returned
    unchanged, as ``perturb`` does. ``random_start(u, e)``: the random starts (``x_init``) of
    points ``u`` of the unit box at radii ``e`` (shaped per point), where the library's own (``u``
    plus ``e`` times a uniform direction) is not the one wanted (see
    :class:`fabench.attacks.exact.SpanView`). The caller seeds torch's RNG (the random starts). Runs under
    ``no_grad`` (see :func:`_fixed_radius`)."""
    from pyautoattack.autopgd_base import APGDAttack as Lib

    u = box.to_unit(x)
    e = per_point(eps.to(device=u.device, dtype=u.dtype) / box.scale, u)
    lib = Lib(box, n_iter=steps, norm="L2", n_restarts=1, eps=e, seed=0, loss="ce", rho=rho, device=x.device)
    lib.init_hyperparam(u)
    y = y.to(u.device)
    with torch.no_grad():
        adv = u.detach().clone()
        fooled = box(u).max(1)[1] != y
        inits = ([box.to_unit(x + start.to(x))] if start is not None else []) + [None] * restarts
        for init in inits:
            idx = (~fooled).nonzero().squeeze(1)
            if len(idx) == 0:
                break
            lib.eps = e[idx]
            x_init: torch.Tensor | None = None if init is None else init[idx]
            if init is None and random_start is not None:
                x_init = random_start(u[idx], e[idx])
            _, acc, _, found = lib.attack_single_run(u[idx], y[idx], x_init=x_init)
            hit = ~acc.bool()
            adv[idx[hit]] = found[hit].detach()
            fooled[idx[hit]] = True
    return box.from_unit(adv)


def _fixed_radius(
    model: "Classifier", x: torch.Tensor, y: torch.Tensor, radii: Sequence[float], box: UnitBoxView,
    make: Callable[[float], Any], seed: int,
) -> AttackOutcome:
    """One run of ``make(eps_unit).perturb`` per radius on the points not yet broken. Under
    ``no_grad``: APGD enables gradients itself where it needs them, but writes its best iterates
    outside its own no-grad blocks, so with grad on every iteration stays referenced by an
    autograd graph (same values, several hundred MB more)."""

    def attempt(idx: torch.Tensor, eps: float, k: int) -> torch.Tensor:
        i = idx.to(x.device)
        with torch.no_grad():  # see the docstring
            return box.from_unit(make(eps / box.scale).perturb(box.to_unit(x[i]), y[i]).detach())

    return fixed_radius_outcome(model, x, y, radii, attempt=attempt, seed=seed)


@registry.attacks.register
class APGDAttack:
    meta: ClassVar[Meta] = Meta(
        name="apgd",
        description="AutoAttack APGD-CE, L2 (pyautoattack), with restarts: one run per radius (search=grid) "
                    "or per-point bisection over the radii (search=bisect)",
        reference="Croce & Hein (ICML 2020); pyautoattack.autopgd_base.APGDAttack",
        params={"steps": 100, "restarts": 5, "rho": 0.75, "search": "grid", "skip_solved": False},
        bounds={"steps": (1, MAX_STEPS), "restarts": (1, MAX_RESTARTS), "rho": (0.0, 1.0)},
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
        """``bands`` (only with ``search="bisect"``): each point's part of the grid
        (:class:`~fabench.attacks.base.Bands`). ``skip_solved`` (set by the default protocol): on a model that ``exact`` solves (a
        two-layer head of at most :data:`~fabench.attacks.exact.MAX_UNITS` units on the input) of
        an unbounded input, claim nothing, as ``exact`` already gives the ground truth there (or,
        for the fine head, verified distances polished by APGD itself); the audits of the synthetic
        records found no gap without ``apgd`` (binary and robust 0, fine 0.001), and there it would
        cost 10x the rest. On a bounded input (pixels in ``[0, 1]``) ``exact``'s regions ignore the
        box, so where it binds ``exact`` gives only an upper bound, and ``apgd`` runs: without it
        the audits of ``mnist5v5-pixels`` robust (10 units) found 3 to 7 of 250 points that the
        protocol missed, APGD-CE finding some of them."""
        from pyautoattack.autopgd_base import APGDAttack as Lib

        if bands is not None and not self.searches_bands(params):
            raise ValueError("apgd takes bands only with search=bisect")
        if bool(params.get("skip_solved", False)) and exact_solves(model) and not boxed(data.bounds):
            return nothing_broken(x, radii)
        box = unit_box(model, x, data, max(radii))

        def make(eps: float) -> Any:
            return Lib(box, n_iter=int(params["steps"]), norm="L2", n_restarts=int(params["restarts"]),
                       eps=eps, seed=seed, loss="ce", rho=float(params["rho"]), device=x.device)

        if str(params.get("search", "grid")) != "bisect":
            return _fixed_radius(model, x, y, radii, box, make, seed)

        def attempt(idx: torch.Tensor, eps: torch.Tensor, start: torch.Tensor | None) -> torch.Tensor:
            """The library's APGD on the points ``idx`` together, each at its own radius."""
            i = idx.to(x.device)
            return apgd_l2(box, x[i], y[i], eps, steps=int(params["steps"]), restarts=int(params["restarts"]),
                           rho=float(params["rho"]))

        with torch.random.fork_rng():  # the library seeds torch's global RNG on every call
            torch.manual_seed(seed)
            return bisect_outcome(model, x, y, radii, attempt=attempt, bands=bands)


@registry.attacks.register
class SquareL2Attack:
    meta: ClassVar[Meta] = Meta(
        name="square",
        description="AutoAttack Square-L2 (pyautoattack): gradient-free, one run per radius",
        reference="Andriushchenko et al. (ECCV 2020); pyautoattack.square.SquareAttack",
        params={"queries": 5000, "p_init": 0.8, "restarts": 1},
        bounds={"queries": (1, MAX_STEPS), "p_init": (0.0, 1.0), "restarts": (1, MAX_RESTARTS)},
    )
    minimization: ClassVar[bool] = False

    def run(
        self, model: "Classifier", x: torch.Tensor, y: torch.Tensor, radii: Sequence[float], *,
        data: TaskData, params: Params, seed: int,
    ) -> AttackOutcome:
        from pyautoattack.square import SquareAttack as Lib

        box = unit_box(model, x, data, max(radii), image=True)

        def make(eps: float) -> Any:
            return Lib(box, norm="L2", n_queries=int(params["queries"]), eps=eps,
                       p_init=float(params["p_init"]), n_restarts=int(params["restarts"]), seed=seed,
                       loss="margin", resc_schedule=True, device=x.device)

        return _fixed_radius(model, x, y, radii, box, make, seed)


@registry.attacks.register
class FABAttack:
    meta: ClassVar[Meta] = Meta(
        name="fab",
        description="AutoAttack FAB-L2 (pyautoattack): minimal-distance attack, one run gives a curve",
        reference="Croce & Hein (ICML 2020); pyautoattack.fab_pt.FABAttack_PT",
        params={"steps": 100, "restarts": 5, "alpha_max": 0.1, "eta": 1.05, "beta": 0.9},
        bounds={"steps": (1, MAX_STEPS), "restarts": (1, MAX_RESTARTS), "alpha_max": (0.0, 1.0),
                "eta": (1.0, 1.0 + MAX_STEP_FACTOR), "beta": (0.0, 1.0)},
    )
    minimization: ClassVar[bool] = True

    def run(
        self, model: "Classifier", x: torch.Tensor, y: torch.Tensor, radii: Sequence[float], *,
        data: TaskData, params: Params, seed: int,
    ) -> AttackOutcome:
        from pyautoattack.fab_pt import FABAttack_PT as Lib

        top = max(max(radii), 1e-6)
        box = unit_box(model, x, data, 2 * top)
        lib = Lib(box, norm="L2", n_restarts=int(params["restarts"]), n_iter=int(params["steps"]),
                  eps=2 * top / box.scale, alpha_max=float(params["alpha_max"]), eta=float(params["eta"]),
                  beta=float(params["beta"]), seed=seed, device=x.device)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            adv = box.from_unit(lib.perturb(box.to_unit(x), y).detach())
        return candidates_outcome(model, x, y, adv, radii)
