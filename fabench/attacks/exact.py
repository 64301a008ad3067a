"""Ground truth for two-layer heads on the input: the minimal L2 adversarial distance, region by region.

A two-layer ReLU head on the input (a :class:`~fabench.models.Classifier` with no backbone) is
piecewise affine: an *activation region* ``S`` (which units are on) is the polyhedron
``{z : <w_u, z> + b_u >= 0 for u in S, <= 0 otherwise}`` and inside it every unit is affine. The
minimal distance from ``x`` to a set ``{z in region S : C_S z <= t}`` is the projection of ``x``
onto a polyhedron, a small convex QP with ``U + c`` constraints (``U`` units, ``c`` margin rows).
All constraint normals are combinations of the ``U`` weight vectors, so with an orthonormal basis
``Q`` of their span (``W^T = Q R``) the QP lives in ``rank(W) <= U`` dimensions even at
``d = 3072``. The minimal distance is the minimum over regions.

* **Binary and robust heads** (``g = sum_u a_u ReLU(<w_u, z> + b_u)``, the paper's two-layer
  network and ``f_robust``): in region ``S`` the condition ``y g(z) <= 0`` is one affine row, so
  the minimum over the ``2^U`` regions is the **exact** minimal distance (the decision is strict,
  so the boundary ``g = 0`` counts as adversarial and the minimum is attained).
* **Fine head** (``g = logsumexp_{J+} f_j - logsumexp_{J-} f_j``, not piecewise affine): a sound
  bracket. For a positive point, in region ``S``, ``{g <= 0}`` contains ``U_{j- in J-} {f_j' -
  f_{j-} <= -log|A+(S)| for all active j' in J+}`` and is contained in ``U_{j-} {f_j' - f_{j-} <=
  log|A-(S)| for all j' in J+}``, where ``A+-(S)`` are the groups with an active unit (the others
  have ``f = 0`` exactly; see :func:`margin_rows`); symmetrically for a negative point. With one
  active group per class (the usual case) the inner set is exact. The inner union gives
  a candidate that is then line-searched on the true network (a verified **upper** bound on the
  minimal distance; this is what the attack reports); the outer union gives a sound **lower**
  bound (:attr:`ExactResult.lower`).

Every QP is solved through its dual by Hildreth's coordinate ascent (``lambda >= 0``); any dual
feasible ``lambda`` gives a lower bound, so regions whose bound (or whose cheapest single violated
constraint) already exceeds the best distance found for the point are pruned, and regions are
visited in increasing order of that cheap bound. Reported distances are those of adversarial
examples verified on the model (``Classifier.correct``), so they are never below the true minimum.

**Input bounds.** The QP ignores box constraints. On a bounded task (pixels in ``[0, 1]``) the
reported candidate is clipped to the box and kept only if the model confirms it; its distance is
then an upper bound, and :attr:`ExactResult.lower` (the unboxed minimum) is still a sound lower
bound. ``ExactResult.exact`` says per point whether upper and lower agree (to ``rtol``).

The attack ``exact`` reports ``upper``; where the bracket is open (fine head) it also *polishes*:
for each radius just below a point's verified distance it runs APGD-CE warm-started from that
point scaled onto the radius (:func:`polish`), since the true minimiser may switch on a group the
polyhedral inner sets do not credit (plus ``polish_restarts`` random starts on the points the warm start missed).
On an unbounded input the polish runs in the head's span plus one ghost coordinate
(:class:`SpanView`: ``U + 1`` coordinates instead of ``d``, the same attack problem), as does
``pgd``'s bisection (:mod:`fabench.attacks.foolbox_attacks`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

from fabench._lazy import TorchModule, lazy, lazy_attr
from fabench import registry
from fabench.attacks.base import (
    MAX_CONSTANT, MAX_RESTARTS, MAX_STEPS, boxed, clip, nothing_broken, outcome_from_distances,
)
from fabench.errors import ConfigError
from fabench.types import AttackOutcome, Meta, Params, TaskData

if TYPE_CHECKING:  # pragma: no cover - heavy imports are lazy (see fabench._lazy)
    import torch

    from fabench.models.heads import BinaryHead, FineHead, RobustHead
else:
    torch = lazy("torch")
    BinaryHead = lazy_attr("fabench.models.heads", "BinaryHead")
    FineHead = lazy_attr("fabench.models.heads", "FineHead")
    RobustHead = lazy_attr("fabench.models.heads", "RobustHead")

if TYPE_CHECKING:  # pragma: no cover
    from fabench.models import Classifier

MAX_UNITS = 16
#: The largest ``batch`` accepted: (point, region) pairs projected per round, each with its rows of
#: constraints in float64; at 10^7 pairs a round's rows already take tens of GB.
MAX_BATCH = 10_000_000


@dataclass(frozen=True)
class PiecewiseHead:
    """A two-layer head as unit weights ``W`` (``U x d``), biases ``b`` and output rows.

    ``kind`` is ``"affine"`` (``g = a . ReLU(W z + b)``, coefficients ``a``) or ``"fine"`` (fine
    logits ``f = G ReLU(W z + b)`` with group-averaging matrix ``G``, ``k x U``, and ``positive``).
    """

    kind: str
    weight: torch.Tensor
    bias: torch.Tensor
    coef: torch.Tensor
    positive: torch.Tensor

    @property
    def units(self) -> int:
        return int(self.weight.shape[0])


#: What the model computes from its declared weights: the methods of the classifier and of the
#: built-in heads that :func:`piecewise_head` reads the head's function from.
_CLASSIFIER_METHODS = ("forward", "margin", "features", "correct", "predict")
_HEAD_METHODS = ("forward", "margin", "activations", "fine_logits")


def unfaithful(model: "Classifier", *, head_only: bool = False) -> str:
    """Why ``model``'s declared weights may not be the function it computes (empty if they are).

    :func:`piecewise_head`, the exact attack, the certificate and the protocol's certified closure
    read a head's function from its weights, while every claim is judged on the model's
    ``margin``. They agree for the built-in classifier and heads as written; a subclass that
    overrides how they compute, a method replaced on the instance, a forward hook, or a model
    that says it has no backbone but has one would make those analyses describe another model
    (e.g. certify robustness the model does not have), so such a model is not analysed.
    ``head_only``: only the head's function on its input matters (the backbone is not analysed)."""
    from torch import nn
    from torch.nn.modules import module as nn_module

    from fabench.models.classifier import Classifier as Base
    from fabench.models.heads import BinaryHead as B, FineHead as F, RobustHead as R

    head = model.head
    base = next((c for c in type(head).__mro__ if c in (B, F, R)), None)  # the nearest built-in head
    checks: list[tuple[Any, Any, tuple[str, ...]]] = [(model, Base, _CLASSIFIER_METHODS)]
    if base is not None:
        checks.append((head, base, _HEAD_METHODS))
    if head_only:
        checks = checks[1:]
    for obj, cls, methods in checks:
        for name in methods:
            if name in vars(obj):
                return f"{type(obj).__name__}.{name} is replaced on the instance"
            if getattr(type(obj), name, None) is not getattr(cls, name, None):
                return f"{type(obj).__name__} overrides {cls.__name__}.{name}"
    if not head_only and getattr(model, "identity_backbone", False) and type(model.backbone) is not nn.Flatten:
        return f"it says it has no backbone but its backbone is a {type(model.backbone).__name__}"
    hooked = [m for m in ((head,) if head_only else (model, model.backbone, head))
              if m._forward_hooks or m._forward_pre_hooks]
    if hooked or nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks:
        return "a forward hook is registered on it"
    return ""


def piecewise_head(model: "Classifier", *, max_units: int = MAX_UNITS, head_only: bool = False) -> PiecewiseHead:
    """The head as :class:`PiecewiseHead`, or a one-line :class:`ConfigError` if it does not qualify
    (a backbone, another head type, too many units, or a model :func:`unfaithful` to its weights).
    ``head_only``: the head on its own input, whatever the backbone (for :mod:`fabench.certify`)."""
    if not head_only and not getattr(model, "identity_backbone", False):
        raise ConfigError("attack exact needs a two-layer head on the input (no backbone); "
                          "this model has a backbone")
    why = unfaithful(model, head_only=head_only)
    if why:
        raise ConfigError(f"attack exact reads the head's function from its weights, but {why}")
    head = model.head
    with torch.no_grad():
        if isinstance(head, BinaryHead):
            m = head.m
            w = head.weight.reshape(2 * m, -1).double()
            b = head.bias.reshape(2 * m).double()
            a = torch.cat([torch.full((m,), 1.0 / m), torch.full((m,), -1.0 / m)]).double()
            hp = PiecewiseHead("affine", w, b, a[None, :], torch.ones(1, dtype=torch.bool))
        elif isinstance(head, RobustHead):
            w = head.directions.double()
            b = -(w @ head.centre.double()) - head.thresholds.double()
            a = head.positive.double() * 2 - 1
            hp = PiecewiseHead("affine", w, b, a[None, :], torch.ones(1, dtype=torch.bool))
        elif isinstance(head, FineHead):
            k, h = head.k, head.h
            w = head.weight.reshape(k * h, -1).double()
            b = head.bias.reshape(k * h).double()
            g = torch.kron(torch.eye(k, dtype=torch.float64), torch.full((1, h), 1.0 / h))
            hp = PiecewiseHead("fine", w, b, g, head.positive.clone().bool())
        else:
            raise ConfigError(f"attack exact supports the binary, fine and robust heads, not {type(head).__name__}")
    if hp.units > max_units:
        raise ConfigError(f"attack exact enumerates 2^units activation regions; this head has {hp.units} "
                          f"units (at most {max_units})")
    return hp


def solves(model: "Classifier") -> bool:
    """Whether ``exact`` solves ``model``: a two-layer head of at most :data:`MAX_UNITS` units on
    the input (what :func:`piecewise_head` accepts). The one test behind ``exact.strict = False``
    and ``apgd.skip_solved``."""
    try:
        piecewise_head(model)
    except ConfigError:
        return False
    return True


def margin_rows(
    hp: PiecewiseHead, sign: int, patterns: torch.Tensor, *, outer: bool,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per region ``S`` (rows of ``patterns``), the adversarial set as a union of ``{M_S a <= t_S}``.

    Returns ``(M, t)`` pairs shaped ``S x c x U`` and ``S x c`` (``a`` = pre-activations; the
    rows already zero the units that are off in ``S``). Affine heads: one exact set. Fine head
    (``|J+| = |J-| = n`` or not): one set per other-class logit ``j'``; with ``A_own(S)`` /
    ``A_other(S)`` the groups with an active unit in ``S`` (the others have ``f = 0``, i.e.
    ``exp f = 1``, exactly), for an own-class point:

    * inner (sufficient): ``f_j - f_j' <= -log max(1, |A_own|)`` for every ``j in A_own``, since
      then ``sum_own exp f <= exp f_j' + n_other - 1 <= sum_other exp f``;
    * outer (necessary): ``g <= 0`` implies, for the largest other logit ``j'``,
      ``f_j - f_j' <= log max(1, |A_other|)`` for every own ``j``.
    """
    pat = patterns.double()
    if hp.kind == "affine":
        m = sign * hp.coef[None, :, :] * pat[:, None, :]
        return [(m, torch.zeros(len(patterns), 1, dtype=torch.float64))]
    own = hp.positive if sign > 0 else ~hp.positive
    own_idx, other_idx = own.nonzero().squeeze(1), (~own).nonzero().squeeze(1)
    active = (pat @ (hp.coef > 0).double().T) > 0  # S x k: group has an active unit
    if outer:
        count = active[:, other_idx].sum(1).clamp_min(1).double()
        t = torch.log(count)[:, None].expand(-1, len(own_idx))
        keep = torch.ones(len(patterns), len(own_idx), dtype=torch.bool)
    else:
        count = active[:, own_idx].sum(1).clamp_min(1).double()
        t = -torch.log(count)[:, None].expand(-1, len(own_idx))
        keep = active[:, own_idx]  # rows of inactive own groups are not needed (f_j = 0 exactly)
    out = []
    for j in other_idx.tolist():
        m = (hp.coef[own_idx] - hp.coef[j][None, :])[None, :, :] * pat[:, None, :]
        m = torch.where(keep[:, :, None], m, torch.zeros_like(m))
        out.append((m, torch.where(keep, t, torch.zeros_like(t)).contiguous()))
    return out


def hildreth(
    a: torch.Tensor, h: torch.Tensor, cutoff: torch.Tensor, *, sweeps: int = 400, tol: float = 1e-10,
    lam0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Project the origin onto ``{beta : A beta <= h}`` for a batch (``A``: ``P x C x r``).

    Dual coordinate ascent (Hildreth) on ``max_{lambda >= 0} -1/2 |A^T lambda|^2 - h . lambda``,
    from ``lam0`` (default 0). Returns ``(beta, dual, lambda)`` with ``beta = -A^T lambda`` (nearly
    feasible) and ``dual`` a sound lower bound on ``1/2 |beta*|^2`` for any ``lambda >= 0`` (``inf``
    where the polyhedron is visibly empty). Problems whose bound passes ``cutoff`` (``1/2`` the
    squared distance to beat) or that converged stop early.
    """
    p, c, _ = a.shape
    gdiag = (a * a).sum(-1)  # P x C
    zero = gdiag <= 1e-300
    lam = torch.zeros(p, c, dtype=a.dtype) if lam0 is None else lam0.clamp_min(0.0).clone()
    v = torch.einsum("pc,pcr->pr", lam, a)
    empty = (zero & (h < 0)).any(1)
    dual = -0.5 * (v * v).sum(-1) - (h * lam).sum(-1)
    dual[empty] = math.inf
    live = (~empty).nonzero().squeeze(1)
    inv = torch.where(zero, torch.zeros_like(gdiag), 1.0 / gdiag.clamp_min(1e-300))
    # The live problems are gathered once, constraint-major (row j of every problem contiguous),
    # and narrowed at each convergence check (not gathered again in every sweep); lam and v are
    # written back at the checks (the last sweep is one). Same arithmetic as row-major in-place
    # updates: elementwise, and each row sum over a fresh contiguous product.
    al, hl, vl = a[live], h[live], v[live]
    at, ht = al.transpose(0, 1).contiguous(), hl.t().contiguous()  # C x P x r, C x P
    lt, it = lam[live].t().contiguous(), inv[live].t().contiguous()
    for sweep in range(sweeps):
        if len(live) == 0:
            break
        for j in range(c):
            gj = (at[j] * vl).sum(-1) + ht[j]
            new = (lt[j] - gj * it[j]).clamp_min(0.0)
            vl = vl + (new - lt[j])[:, None] * at[j]
            lt[j] = new
        if sweep % 10 == 9 or sweep == sweeps - 1:
            ll = lt.t().contiguous()
            lam[live], v[live] = ll, vl
            d = -0.5 * (vl * vl).sum(-1) - (hl * ll).sum(-1)
            dual[live] = d
            viol = (torch.einsum("pcr,pr->pc", al, -vl) - hl).amax(1).clamp_min(0)
            primal = 0.5 * (vl * vl).sum(-1)
            done = ((viol <= tol * (1 + hl.abs().amax(1))) & (primal - d <= tol * (1 + primal))) | (d > cutoff[live])
            if bool(done.any()):
                keep = ~done
                live, al, hl, vl = live[keep], al[keep], hl[keep], vl[keep]
                at, ht, lt, it = at[:, keep], ht[:, keep], lt[:, keep], it[:, keep]
    return -v, dual, lam


def project_polyhedron(
    a: torch.Tensor, h: torch.Tensor, cutoff: torch.Tensor, *, sweeps: int = 400, newton: int = 30,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`hildreth` warm-started by a primal-dual active-set (semi-smooth Newton) solve of the dual.

    The active-set iterations find the optimal active set of most problems in a few batched
    ``C x C`` solves (the Gram matrix of nearly parallel units is ill-conditioned, which makes pure
    coordinate ascent slow); Hildreth then polishes, keeps ``lambda >= 0`` and certifies the bound.
    """
    p, c, _ = a.shape
    g = a @ a.transpose(1, 2)  # P x C x C
    scale = torch.diagonal(g, dim1=1, dim2=2).mean(1).clamp_min(1e-300)
    eye = torch.eye(c, dtype=a.dtype)
    _, _, lam = hildreth(a, h, cutoff, sweeps=5)
    free_prev = torch.zeros(p, c, dtype=torch.bool)
    for _ in range(newton):
        mu = (g @ lam[:, :, None]).squeeze(2) + h
        free = (lam - mu / scale[:, None]) > 0
        both = free[:, :, None] & free[:, None, :]
        m = torch.where(both, g, eye * scale[:, None, None]) + 1e-12 * scale[:, None, None] * eye
        rhs = torch.where(free, -h, torch.zeros_like(h))
        sol = torch.linalg.solve(m, rhs[:, :, None]).squeeze(2)
        lam = torch.where(free, sol, torch.zeros_like(sol))
        if bool((free == free_prev).all()):
            break
        free_prev = free
    lam = torch.where(torch.isfinite(lam), lam, torch.zeros_like(lam)).clamp_min(0.0)
    beta, dual, _ = hildreth(a, h, cutoff, sweeps=sweeps, lam0=lam)
    return beta, dual


@dataclass(frozen=True)
class ExactResult:
    """Per point: ``upper`` (distance of a verified adversarial, ``inf`` if none), ``lower`` (sound
    lower bound on the minimal distance), ``adversarials`` (NaN rows where none), ``exact``."""

    upper: torch.Tensor
    lower: torch.Tensor
    adversarials: torch.Tensor
    exact: torch.Tensor


#: Round-off a claimed adversarial must survive, in units of the model's machine epsilon: each unit's
#: pre-activation may be off by ``DECISIVE_ULPS * eps * (|w_u| |z| + |b_u|)`` (``eps`` = 1.2e-7 for
#: float32), e.g. when it is evaluated in another batch composition.
DECISIVE_ULPS = 4.0


def decisive_rtol(dtype: torch.dtype) -> float:
    return DECISIVE_ULPS * float(torch.finfo(dtype).eps)


def decisively_wrong(model: "Classifier", hp: PiecewiseHead, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Adversarial on the model (:meth:`Classifier.correct`) *and* under every perturbation of the
    pre-activations within round-off (see :data:`DECISIVE_ULPS`), computed in float64.

    The minimiser of a region's QP lies exactly on its boundary (``g = 0``, or a unit exactly at its
    threshold), where float32 round-off in another batch composition can move it back onto the
    correct side; such a point fails this test and is pushed a little further along its direction.
    The worst case is monotone per unit: units that help the true class at their upper end, the
    others at their lower end (the fine head's log-sum-exp is monotone in every group logit).
    """
    wrong = ~model.correct(z, y)
    flat = z.flatten(1).double()
    pre = flat @ hp.weight.T + hp.bias
    eps = decisive_rtol(z.dtype) * (flat.norm(dim=1, keepdim=True) * hp.weight.norm(dim=1) + hp.bias.abs())
    up, down = torch.relu(pre + eps), torch.relu(pre - eps)
    pos = y.bool()
    if hp.kind == "affine":
        a = hp.coef[0]
        helps = torch.where(pos[:, None], a > 0, a < 0)  # units whose growth moves g towards the true class
        act = torch.where(helps, up, down)
        worst = torch.where(pos, act @ a, -(act @ a))
    else:
        own = torch.where(pos[:, None], hp.positive[None, :], ~hp.positive[None, :])  # n x k groups
        unit_own = own.double() @ (hp.coef > 0).double()  # n x U: 1 where the unit belongs to an own group
        act = torch.where(unit_own > 0, up, down)
        f = act @ hp.coef.T
        ninf = torch.tensor(-math.inf, dtype=f.dtype)
        worst = (torch.logsumexp(torch.where(own, f, ninf), dim=1)
                 - torch.logsumexp(torch.where(own, ninf, f), dim=1))
    return wrong & (worst <= 0)


def _verify_along(model: "Classifier", x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor,
                  bounds: tuple[float, float], *, head: PiecewiseHead | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Smallest verified adversarial ``clip(x + t delta)``, ``t`` in a few scalings just above 1.

    ``head``: the model's :func:`piecewise_head` when the caller has it (built once per call)."""
    n = len(x)
    best = torch.full((n,), math.inf, dtype=torch.float64)
    adv = torch.full_like(x, float("nan"))
    todo = torch.isfinite(delta.flatten(1)).all(1)
    hp = head if head is not None else piecewise_head(model)
    for t in (1.0, 1 + 1e-7, 1 + 3e-7, 1 + 1e-6, 1 + 2e-6, 1 + 4e-6, 1 + 7e-6, 1 + 1e-5, 1 + 2e-5, 1 + 1e-4,
              1 + 1e-3, 1 + 1e-2):
        idx = todo.nonzero().squeeze(1)
        if len(idx) == 0:
            break
        cand = clip(x[idx].double() + t * delta[idx], bounds).to(x.dtype)
        ok = decisively_wrong(model, hp, cand, y[idx])
        hit = idx[ok]
        adv[hit] = cand[ok]
        best[hit] = (cand[ok].double() - x[hit].double()).flatten(1).norm(dim=1)
        todo[hit] = False
    return best, adv


def _line_to(model: "Classifier", x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor,
             bounds: tuple[float, float], *, steps: int = 40, head: PiecewiseHead | None = None,
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Bisection for the first verified flip on the segment ``x + t delta``, ``t in [0, 1.01]``
    (``head`` as in :func:`_verify_along`)."""
    n = len(x)
    shape = (-1,) + (1,) * (x.dim() - 1)
    xd = x.double()

    def pt(t: torch.Tensor, base: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        return clip(base + t.reshape(shape) * step, bounds).to(x.dtype)

    hp = head if head is not None else piecewise_head(model)
    hi = torch.full((n,), 1.01, dtype=torch.float64)
    reach = decisively_wrong(model, hp, pt(hi, xd, delta), y)
    rows = reach.nonzero().squeeze(1)  # only the segments that reach a flip are bisected
    lo_r, hi_r, y_r = torch.zeros(len(rows), dtype=torch.float64), hi[rows], y[rows]
    xd_r, delta_r = xd[rows], delta[rows]  # gathered once, not in every step
    for _ in range(steps):
        mid = (lo_r + hi_r) / 2
        b = decisively_wrong(model, hp, pt(mid, xd_r, delta_r), y_r)
        hi_r = torch.where(b, mid, hi_r)
        lo_r = torch.where(b, lo_r, mid)
    hi[rows] = hi_r
    final = pt(hi, xd, delta)
    ok = reach & decisively_wrong(model, hp, final, y)
    dist = torch.where(ok, (final.double() - x.double()).flatten(1).norm(dim=1), torch.tensor(math.inf, dtype=torch.float64))
    adv = torch.where(ok.reshape(shape), final, torch.full_like(final, float("nan")))
    return dist, adv


def smooth_margin(hp: PiecewiseHead, z: torch.Tensor, beta: float) -> torch.Tensor:
    """The head's margin with ``ReLU`` replaced by ``softplus(beta a) / beta`` (``beta = inf``: the
    true margin). A surrogate only: it gives directions that see units dead at ``z``."""
    pre = z.flatten(1).double() @ hp.weight.T + hp.bias
    act = torch.relu(pre) if math.isinf(beta) else torch.nn.functional.softplus(pre, beta=beta)
    if hp.kind == "affine":
        return act @ hp.coef[0]
    f = act @ hp.coef.T
    return torch.logsumexp(f[:, hp.positive], dim=1) - torch.logsumexp(f[:, ~hp.positive], dim=1)


def refine_on_boundary(
    model: "Classifier", x: torch.Tensor, y: torch.Tensor, adv: torch.Tensor, dist: torch.Tensor,
    bounds: tuple[float, float], *, steps: int = 20, hp: PiecewiseHead | None = None,
    betas: Sequence[float] = (math.inf, 4.0, 1.0), head: PiecewiseHead | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shorten verified adversarials by projecting ``x`` onto the margin's tangent plane at them.

    At a boundary point ``z`` the set ``{y g <= 0}`` is approximated by its tangent half-space;
    the projection ``w`` of ``x`` onto it gives a direction, and the first verified flip on the
    segment from ``x`` towards ``w`` (a little beyond) replaces ``z`` if it is closer. Only
    improvements are kept, each verified on the model (a DeepFool step taken from the boundary).
    With ``hp``, tangent planes of softplus surrogates (``betas``) are tried too: they see units
    that are off at ``z`` but would help if switched on (dead ReLUs again). ``head`` (or ``hp``)
    is the model's :func:`piecewise_head`, built here if neither is given.
    """
    head = hp if hp is not None else head if head is not None else piecewise_head(model)
    sign = (y.float() * 2 - 1).double()
    shape = (-1,) + (1,) * (x.dim() - 1)
    adv, dist = adv.clone(), dist.clone()
    # A point no beta improved in a round would compute exactly the same in the next one: each
    # round only revisits the points improved in the previous round.
    active = torch.isfinite(dist) & (dist > 0)
    for _ in range(steps):
        if not bool(active.any()):
            break
        improved = False
        moved = torch.zeros_like(active)
        for beta in (betas if hp is not None else (math.inf,)):
            idx = (active & torch.isfinite(dist) & (dist > 0)).nonzero().squeeze(1)
            if len(idx) == 0:
                continue
            z = adv[idx].double().clone().requires_grad_(True)
            with torch.enable_grad():
                g = smooth_margin(hp, z, beta) if hp is not None else model.margin(z.to(x.dtype)).double()
                (grad,) = torch.autograd.grad(g.sum(), z)
            s = sign[idx]
            gd = grad.double().flatten(1) * s[:, None]
            gz = smooth_margin(hp, z.detach(), math.inf) * s if hp is not None else g.detach() * s
            xz = (x[idx].double() - z.detach()).flatten(1)
            nrm2 = (gd * gd).sum(1).clamp_min(1e-300)
            w = x[idx].double().flatten(1) - ((gz + (gd * xz).sum(1)) / nrm2)[:, None] * gd
            delta = (w - x[idx].double().flatten(1)) * 1.5
            d_new, a_new = _line_to(model, x[idx], y[idx], delta.reshape(x[idx].shape), bounds, steps=30,
                                    head=head)
            better = d_new < dist[idx] * (1 - 1e-7)
            if better.any():
                improved = True
                adv[idx[better]] = a_new[better]
                dist[idx[better]] = d_new[better]
                moved[idx[better]] = True
        if not improved:
            break
        active = moved
    return adv, dist


def _region_min(
    hp: PiecewiseHead, pre: torch.Tensor, bmat: torch.Tensor, sign: torch.Tensor, *, outer: bool,
    upper0: torch.Tensor, sweeps: int, batch: int, shrink: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Minimum over regions (and margin sets) of the projection distance, per point.

    ``pre``: pre-activations ``N x U`` at the points; ``bmat``: ``U x r`` (``W Q``). Returns
    ``(distance, beta, lower)``: the best projection found (``inf`` if none), its coordinates in
    the ``r``-dim span, and a sound lower bound (regions pruned by bounds included).
    """
    n, u = pre.shape
    r = bmat.shape[1]
    patterns = ((torch.arange(2**u)[:, None] >> torch.arange(u)[None, :]) & 1).bool()  # S x U
    ns = len(patterns)
    best = upper0.clone().double()
    beta_best = torch.zeros(n, r, dtype=torch.float64)
    lower = torch.full((n,), math.inf, dtype=torch.float64)
    # Region rows: active unit -> -(pre + B beta) <= 0; inactive -> pre + B beta <= 0.
    sig = torch.where(patterns, -1.0, 1.0).double()  # S x U
    rows_a = sig[:, :, None] * bmat[None, :, :]  # S x U x r
    bnorm = bmat.norm(dim=1)  # U
    for s in (1, -1):
        pts = (sign == s).nonzero().squeeze(1)
        if len(pts) == 0:
            continue
        sets = margin_rows(hp, s, patterns, outer=outer)
        for ms, t in sets:  # ms: S x c x U (active units only), t: S x c
            marg_a = ms @ bmat  # S x c x r
            p = pre[pts]  # n' x U
            h_reg = -sig[None, :, :] * p[:, None, :]  # n' x S x U
            h_marg = t[None, :, :] - torch.einsum("scu,nu->nsc", ms, p)  # n' x S x c
            h_all = torch.cat([h_reg, h_marg], dim=2)  # n' x S x C
            norms = torch.cat([bnorm[None, :].expand(ns, u), marg_a.norm(dim=2)], dim=1)  # S x C
            if shrink > 0:  # every face moved inwards by `shrink` (a distance): interior points only
                h_all = h_all - shrink * norms[None, :, :]
            cheap = torch.where(
                h_all < 0,
                torch.where(norms[None] > 1e-300, -h_all / norms[None].clamp_min(1e-300), torch.tensor(math.inf, dtype=torch.float64)),
                torch.zeros((), dtype=torch.float64),
            ).amax(2)  # n' x S: distance to the farthest single violated halfspace
            order = cheap.argsort(dim=1)  # per point, nearest regions first
            cheap_sorted = cheap.gather(1, order)
            a_all = torch.cat([rows_a, marg_a], dim=1)  # S x C x r
            per_round = max(1, batch // max(len(pts), 1))
            for start in range(0, ns, per_round):
                cols = slice(start, start + per_round)
                cs_all = cheap_sorted[:, cols]
                keep = cs_all < best[pts][:, None]
                if not keep.any():
                    break  # every remaining region is farther than the best found for its point
                pi, ci = keep.nonzero(as_tuple=True)
                si = order[:, cols][pi, ci]
                cs = cs_all[pi, ci]
                gp = pts[pi]
                cut = 0.5 * best[gp] ** 2
                beta, dual = project_polyhedron(a_all[si], h_all[pi, si], cut, sweeps=sweeps)
                dist = beta.norm(dim=1)
                lb = torch.maximum(torch.sqrt(dual.clamp_min(0.0) * 2), cs)
                viol = (torch.einsum("pcr,pr->pc", a_all[si], beta) - h_all[pi, si]).amax(1)
                good = (viol <= 1e-7 * (1 + h_all[pi, si].abs().amax(1))) & torch.isfinite(dual)
                cand = torch.where(good, dist, torch.full_like(dist, math.inf))
                newbest = best.clone().scatter_reduce_(0, gp, cand, reduce="amin")
                win = good & (cand == newbest[gp]) & (cand < best[gp])
                beta_best[gp[win]] = beta[win]
                best = newbest
                lower.scatter_reduce_(0, gp, lb, reduce="amin")
    # Pruned regions have cheap bound >= best found, so min(lower over solved, best) is sound.
    lower = torch.minimum(lower, best)
    return best, beta_best, lower


_MEMO: "OrderedDict[tuple[Any, ...], ExactResult]" = OrderedDict()
_MEMO_SIZE = 8


def _memo_key(model: "Classifier", x: torch.Tensor, y: torch.Tensor, *rest: Any) -> tuple[Any, ...]:
    """Identifies a call: the model object, its weights' and the batch's fingerprints, the options."""
    with torch.no_grad():
        w = [float(p.double().sum()) for p in model.head.parameters()]
        w += [float(b.double().sum()) for b in model.head.buffers()]
        fx = x.double().flatten(1)
        return (id(model), tuple(w), tuple(x.shape), float(fx.sum()), float((fx * fx).sum()),
                float((fx * torch.arange(1, fx.shape[1] + 1, device=fx.device)).sum()), tuple(y.tolist()), *rest)


def exact_distances(
    model: "Classifier", x: torch.Tensor, y: torch.Tensor, *, bounds: tuple[float, float] = (-math.inf, math.inf),
    sweeps: int = 60, batch: int = 4096, rtol: float = 1e-4, with_lower: bool = True,
) -> ExactResult:
    """Minimal L2 adversarial distances of a two-layer head on the input (see the module doc).

    ``with_lower=False`` skips the fine head's outer pass (its lower bound is then only the trivial
    one: ``ExactResult.lower`` is 0 for those points); the binary and robust heads get both anyway.
    """
    hp = piecewise_head(model)
    key = _memo_key(model, x, y, bounds, sweeps, batch, rtol, with_lower or hp.kind != "fine")
    if key in _MEMO:  # the exact attack and the certificate ask for the same batch
        _MEMO.move_to_end(key)
        return _MEMO[key]
    n = len(x)
    flat = x.flatten(1).double()
    q, rr = torch.linalg.qr(hp.weight.T)  # d x r, r x U
    bmat = rr.T.contiguous()  # U x r: pre-activations at x + Q beta are pre + bmat @ beta
    pre = flat @ hp.weight.T + hp.bias
    sign = y.long() * 2 - 1
    wrong = ~model.correct(x, y)
    inf = torch.full((n,), math.inf, dtype=torch.float64)
    best, beta, lower = _region_min(hp, pre, bmat, sign, outer=False, upper0=inf, sweeps=sweeps, batch=batch)
    delta = (beta @ q.T).reshape(x.shape)
    if hp.kind == "affine":
        upper, adv = _verify_along(model, x, y, delta, bounds, head=hp)
        # A minimiser on a piece without interior (e.g. g = 0 on a whole region) may not survive
        # round-off; those points are solved again on polyhedra shrunk by a tiny distance.
        redo = (torch.isfinite(best) & torch.isinf(upper)).nonzero().squeeze(1)
        if len(redo):
            # shrink by twice the round-off margin decisively_wrong asks for, at the farthest candidate
            reach = float((flat[redo].norm(dim=1) + best[redo]).detach().max())
            eta = max(1e-6 * (1 + float(best[redo].detach().max())),
                      2 * decisive_rtol(x.dtype) * (float(hp.weight.detach().norm(dim=1).max()) * reach
                                                    + float(hp.bias.detach().abs().max())))
            _, beta2, _ = _region_min(hp, pre[redo], bmat, sign[redo], outer=False, upper0=inf[redo],
                                      sweeps=sweeps, batch=batch, shrink=eta)
            up2, adv2 = _verify_along(model, x[redo], y[redo], (beta2 @ q.T).reshape(x[redo].shape), bounds,
                                      head=hp)
            upper[redo], adv[redo] = up2, adv2
    else:
        upper, adv = _line_to(model, x, y, delta, bounds, head=hp)
        ok = torch.isfinite(best)
        upper = torch.where(ok, upper, inf)
        adv, upper = refine_on_boundary(model, x, y, adv, upper, bounds, head=hp)
        if with_lower:
            _, _, low = _region_min(hp, pre, bmat, sign, outer=True, upper0=upper.clone(), sweeps=sweeps, batch=batch)
        else:
            low = torch.zeros(n, dtype=torch.float64)
    if hp.kind == "fine":
        lower = low
    lower = torch.minimum(lower, upper)
    upper = torch.where(wrong, torch.zeros_like(upper), upper)
    lower = torch.where(wrong, torch.zeros_like(lower), lower)
    adv[wrong] = x[wrong]
    exact = (upper <= lower * (1 + rtol) + 1e-9)
    result = ExactResult(upper, lower, adv, exact)
    _MEMO[key] = result
    while len(_MEMO) > _MEMO_SIZE:
        _MEMO.popitem(last=False)
    return result


@registry.attacks.register
class ExactAttack:
    meta: ClassVar[Meta] = Meta(
        name="exact",
        description="ground truth for two-layer heads on the input: min over activation regions of a QP",
        reference="exact for binary/robust heads; verified upper bound for the fine head (see fabench.attacks.exact)",
        params={"sweeps": 60, "batch": 4096, "strict": True, "polish_steps": 100, "polish_band": 0.05,
                "polish_restarts": 2},
        bounds={"sweeps": (1, MAX_STEPS), "batch": (1, MAX_BATCH), "polish_steps": (0, MAX_STEPS),
                "polish_band": (0.0, MAX_CONSTANT), "polish_restarts": (0, MAX_RESTARTS)},
    )
    minimization: ClassVar[bool] = True

    def run(
        self, model: "Classifier", x: torch.Tensor, y: torch.Tensor, radii: Sequence[float], *,
        data: TaskData, params: Params, seed: int,
    ) -> AttackOutcome:
        """``strict`` (default): a model exact cannot solve is a ConfigError; otherwise (the default
        protocol) such a model gets an outcome that claims nothing (no point broken)."""
        from fabench.models.classifier import cpu_twin

        if not bool(params["strict"]) and not solves(model):
            return nothing_broken(x, radii)
        # The float64 region analysis runs on the CPU (small, sequential, the same numbers on every
        # device); the APGD polish runs where the points are.
        res = exact_distances(cpu_twin(model), x.cpu(), y.cpu(), bounds=data.bounds, sweeps=int(params["sweeps"]),
                              batch=int(params["batch"]), with_lower=False)
        upper, adv = res.upper.to(x.device, copy=True), res.adversarials.to(x.device, copy=True)
        if int(params["polish_steps"]) > 0 and not bool(res.exact.all()):
            upper, adv = polish(model, x, y, radii, upper, adv, res.exact.to(x.device), data=data, seed=seed,
                                steps=int(params["polish_steps"]), band=float(params["polish_band"]),
                                restarts=int(params["polish_restarts"]))
        out = outcome_from_distances(radii, upper.float())
        return AttackOutcome(out.radii, out.broken, out.distances, adversarials=adv)


class SpanView(TorchModule):  # a torch.nn.Module (made on first use: see fabench._lazy)
    """A two-layer head on the input seen in the span of its unit weights, plus one *ghost*
    coordinate for the rest of the input space.

    ``Q`` (``d x r``, orthonormal columns, ``r <= U``) spans the rows of ``W``; the head reads its
    input only through ``W z``, so ``model(z) = model(z + v)`` for every ``v`` orthogonal to the
    span. A point is ``c = (Q^T x, 0)``, a perturbation ``v`` is ``(Q^T v, |v - Q Q^T v|)``, and the
    view is ``c -> model(Q c[:r])`` (the ghost coordinate is ignored), computed by a copy of the head
    whose input-space tensors (those of last dimension ``d``: ``W``, f_robust's directions and
    centre) are contracted with ``Q`` (``W Q``, ``Q^T centre``): ``r``-dimensional inner products,
    equal to the ``d``-dimensional ones because those tensors' rows lie in the span (the centre
    only enters through ``<u_j, centre>``).

    An L2 attack on this view is the input-space attack in ``r + 1`` instead of ``d`` dimensions:
    the model's gradient has no orthogonal part, and the L2 PGD/APGD updates only combine iterates
    and rescale them, so the orthogonal part of every iterate is a multiple of that of its start,
    carried by the ghost coordinate. :meth:`lift` maps a result back, with that multiple of the
    start's orthogonal part (the input-space attack's own iterate, :func:`fabench.attacks.foolbox_attacks.l2_pgd`)
    or without it (the same outputs, a shorter perturbation). A start uniform on the sphere in
    ``d`` dimensions is :meth:`random_start` (the span part Gaussian, the ghost ``chi`` with
    ``d - r`` degrees of freedom, then normalised): APGD's own start, in distribution. The box of
    pixel tasks is not a function of ``c``: the view is for unbounded inputs (:func:`span_view`)."""

    def __init__(self, model: "Classifier", basis: torch.Tensor) -> None:
        if basis.shape[0] <= basis.shape[1]:
            raise ValueError("SpanView needs a basis of fewer dimensions than the input (d > r)")
        import copy

        from fabench.models.classifier import Classifier

        super().__init__()
        self.basis = basis.double()  # d x r
        d, self.rank = int(basis.shape[0]), int(basis.shape[1])
        self.ghost = d - self.rank  # dimensions the ghost coordinate stands for
        head = copy.deepcopy(model.head)

        def contract(t: torch.Tensor | None) -> torch.Tensor | None:
            return (t.double() @ self.basis).to(t.dtype) if t is not None and t.dim() and t.shape[-1] == d else None

        with torch.no_grad():
            for mod in head.modules():
                for name, p in list(mod._parameters.items()):
                    if (small := contract(p)) is not None:
                        mod._parameters[name] = torch.nn.Parameter(small, requires_grad=False)
                for name, b in list(mod._buffers.items()):
                    if (small := contract(b)) is not None:
                        mod._buffers[name] = small
        self.reduced = Classifier(head)  # the model on the span coordinates

    def coords(self, z: torch.Tensor) -> torch.Tensor:
        """Points: ``(Q^T z, 0)`` (float64 product, the points' dtype)."""
        c = z.flatten(1).double() @ self.basis
        return torch.cat([c, c.new_zeros(len(c), 1)], dim=1).to(z.dtype)

    def _split(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = v.flatten(1).double()
        c = flat @ self.basis
        return c, flat - c @ self.basis.T

    def perturbation(self, v: torch.Tensor) -> torch.Tensor:
        """Perturbations: ``(Q^T v, |v - Q Q^T v|)``, the same L2 norm."""
        c, rest = self._split(v)
        return torch.cat([c, rest.norm(dim=1, keepdim=True)], dim=1).to(v.dtype)

    def random_start(self, u: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """``u + e t / |t|`` with ``t`` standard normal in ``d`` dimensions, in these coordinates
        (what APGD's own L2 start draws in the input space)."""
        t = torch.randn(len(u), self.rank, dtype=torch.float64, device=u.device)
        rest = torch.distributions.Chi2(torch.tensor(float(self.ghost), dtype=torch.float64)).sample((len(u),))
        t = torch.cat([t, rest.sqrt().to(u.device)[:, None]], dim=1)
        return u + e * (t / t.norm(dim=1, keepdim=True)).to(u.dtype).reshape(u.shape)

    def lift(self, x: torch.Tensor, c: torch.Tensor, c0: torch.Tensor, *, start: torch.Tensor | None = None,
             ) -> torch.Tensor:
        """``x + Q (c - c0)[:r]``: the input point of coordinates ``c`` next to ``x`` (coordinates
        ``c0``); with ``start`` (the input-space start of the attack that gave ``c``), plus the
        ghost's multiple of the start's orthogonal part."""
        dc = c.double() - c0.double()
        step = dc[:, : self.rank] @ self.basis.T
        if start is not None:
            _, rest = self._split(start)
            norm = rest.norm(dim=1, keepdim=True)
            step = step + torch.where(norm > 0, dc[:, self.rank :] / norm.clamp_min(1e-300), 0.0) * rest
        return (x.double() + step.reshape(x.shape)).to(x.dtype)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.reduced(c[:, : self.rank])


def span_view(model: "Classifier", x: torch.Tensor, bounds: tuple[float, float]) -> SpanView | None:
    """:class:`SpanView` of a two-layer head on an unbounded input (``Q`` from the QR of ``W^T``),
    else ``None``: a bounded input, a model with a backbone or a head :func:`piecewise_head` does
    not read, or no fewer coordinates (``r + 1 >= d``)."""
    if boxed(bounds):
        return None
    try:
        hp = piecewise_head(model, max_units=int(x[0].numel()))
    except ConfigError:
        return None
    if hp.units + 1 >= x[0].numel():
        return None
    q, _ = torch.linalg.qr(hp.weight.detach().T)
    return SpanView(model, q.to(x.device))


def polish(
    model: "Classifier", x: torch.Tensor, y: torch.Tensor, radii: Sequence[float], upper: torch.Tensor,
    adv: torch.Tensor, exact: torch.Tensor, *, data: TaskData, seed: int, steps: int, band: float,
    restarts: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the bracket is open (fine head), try each radius ``r`` just below a point's verified
    distance (``r < upper <= (1 + band) r``) with APGD-CE warm-started at the verified point
    scaled onto the sphere of radius ``r`` (plus ``restarts`` random starts where the warm start
    missed); keep what the model confirms. In rounds, smallest radius first: each round gives every
    open point its smallest radius not yet tried, all points together, each at its own radius
    (:func:`fabench.attacks.autoattack.apgd_l2`); a point broken at ``r`` has ``upper <= r``, so it
    has no larger radius left. On unbounded inputs (the synthetic task) APGD works in the span of
    the head's unit weights (:class:`SpanView`: ``r + 1 <= U + 1`` coordinates instead of ``d``, the same
    attack problem); every candidate is checked on the model in the input space."""
    from fabench.attacks.autoattack import apgd_l2, unit_box
    from fabench.attacks.base import RADIUS_RTOL, is_adversarial, perturbation_norms, per_point

    upper, adv = upper.clone(), adv.clone()
    span = span_view(model, x, data.bounds)
    xc = span.coords(x) if span is not None else x  # the points where APGD sees them
    box = unit_box(span if span is not None else model, xc, data, max(max(radii), 1e-6))
    r = torch.tensor(sorted(float(v) for v in radii if float(v) > 0), dtype=torch.float64, device=x.device)
    tried = torch.full((len(x),), -1, dtype=torch.long, device=x.device)  # index of the last radius tried
    # Under no_grad (APGD enables grad for its own gradients): pyautoattack's APGD writes
    # ``x_best_adv[ind] = x_adv[ind]`` outside its no_grad blocks, so with grad enabled every
    # iteration's iterate stays referenced by an autograd graph (about 200 MB per run here).
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        while len(r):
            cell = ((torch.arange(len(r), device=x.device)[None, :] > tried[:, None]) & ~exact[:, None]
                    & torch.isfinite(upper)[:, None] & (upper[:, None] > r[None, :] * (1 + RADIUS_RTOL))
                    & (upper[:, None] <= r[None, :] * (1 + band)))
            idx = cell.any(dim=1).nonzero().squeeze(1)
            if len(idx) == 0:
                break
            at = cell[idx].int().argmax(dim=1)  # each point's smallest radius left
            tried[idx] = at
            eps = r[at]
            scale = (eps / upper[idx]) * (1 - 1e-4)
            start = (per_point(scale, x[idx]) * (adv[idx].double() - x[idx].double())).to(x.dtype)
            if span is None:
                cand = apgd_l2(box, x[idx], y[idx], eps, steps=steps, restarts=restarts, start=start)
            else:
                found = apgd_l2(box, xc[idx], y[idx], eps, steps=steps, restarts=restarts,
                                start=span.perturbation(start), random_start=span.random_start)
                cand = span.lift(x[idx], found, xc[idx])
            norms = perturbation_norms(cand, x[idx]).double()
            ok = is_adversarial(model, cand, y[idx]) & (norms <= eps * (1 + RADIUS_RTOL)) & (norms < upper[idx])
            upper[idx[ok]] = norms[ok]
            adv[idx[ok]] = cand[ok]
    return upper, adv
