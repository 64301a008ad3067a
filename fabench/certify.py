"""Certified lower bounds on the minimal L2 adversarial distance of two-layer heads.

Attacks give upper bounds on each point's minimal adversarial distance; this module gives sound
**lower** bounds, so every robustness curve is bracketed: ``[certified, worst attacked]``.

For a two-layer head (binary, fine or robust, :mod:`fabench.attacks.exact`) and a ball of radius
``r`` around ``z``, each unit's pre-activation lies in ``[p_u - r |w_u|, p_u + r |w_u|]``; a
CROWN-style linear relaxation (Zhang et al., 2018) of each ReLU over that interval (the chord
above, ``0`` or the identity below, by the adaptive rule) gives an affine lower bound of
``y g`` whose minimum over the ball is explicit. The radius is then bisected per point: the
returned radius is one at which the bound was verified positive.

* Binary and robust heads: ``y g = sum_u y a_u ReLU(.)`` directly.
* Fine head: ``g >= f_j - max_{j' in J-} f_j' - log|J-|`` for any ``j in J+`` (``logsumexp`` is
  between ``max`` and ``max + log n``), so ``g > 0`` on the ball if for some ``j in J+`` every
  difference ``f_j - f_j'`` is bounded below by more than ``log|J-|`` (symmetrically for ``J-``).
* Binary and robust heads of at most :data:`~fabench.attacks.exact.MAX_UNITS` units on the
  input: the exact region-wise lower bound of :func:`~fabench.attacks.exact.exact_distances`
  (tight) is also used, and the larger bound is kept. (The fine head's region-wise bound is loose
  and slow, so it is not used here.)

With a backbone the bound certifies the **head in feature space** (distances between backbone
features, not pixels): it is reported with ``space = "head"`` and is not comparable with the pixel
attacks' distances. Models whose head is none of the above have no certificate (``None``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from fabench._lazy import lazy
from fabench.attacks.exact import MAX_UNITS, PiecewiseHead, exact_distances, piecewise_head
from fabench.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover - heavy imports are lazy (see fabench._lazy)
    import torch
else:
    torch = lazy("torch")

if TYPE_CHECKING:  # pragma: no cover
    from fabench.models import Classifier


@dataclass(frozen=True)
class Certificate:
    """Per point a certified radius (0 where misclassified), the space it holds in, the method."""

    radius: torch.Tensor
    space: str
    method: str

    def accuracy(self, radii: Sequence[float]) -> dict[float, float]:
        """Certified robust accuracy: the fraction of points certified beyond each radius."""
        return {float(r): float((self.radius > float(r)).float().mean()) for r in radii}


def _head_view(model: "Classifier") -> PiecewiseHead | None:
    """The head as a two-layer piecewise head, ignoring the unit limit and the backbone; ``None``
    where it is none (or :func:`~fabench.attacks.exact.unfaithful` to its weights)."""
    try:
        return piecewise_head(model, max_units=10**9, head_only=not getattr(model, "identity_backbone", False))
    except ConfigError:
        return None


def crown_lower(pre: torch.Tensor, gram: torch.Tensor, wnorm: torch.Tensor, coef: torch.Tensor,
                r: torch.Tensor) -> torch.Tensor:
    """Lower bound of ``coef . ReLU(pre + W delta)`` over ``|delta| <= r``.

    ``pre``: ``N x U``; ``gram = W W^T``; ``coef``: ``N x P x U`` (``P`` objectives per point);
    ``r``: ``N``. Returns ``N x P``.
    """
    lo = pre - r[:, None] * wnorm[None, :]
    hi = pre + r[:, None] * wnorm[None, :]
    unstable = (lo < 0) & (hi > 0)
    # lower relaxation (for coef >= 0): slope 1 if active, 0 if dead, adaptive if unstable
    lower_slope = torch.where(lo >= 0, 1.0, torch.where(unstable & (hi >= -lo), 1.0, 0.0)).double()
    # upper relaxation (for coef < 0): chord hi (p - lo) / (hi - lo) if unstable
    chord = hi / (hi - lo).clamp_min(1e-300)
    upper_slope = torch.where(lo >= 0, 1.0, torch.where(unstable, chord, 0.0)).double()
    upper_off = torch.where(unstable, -chord * lo, torch.zeros_like(lo))
    slope = torch.where(coef >= 0, lower_slope[:, None, :], upper_slope[:, None, :])  # N x P x U
    off = torch.where(coef >= 0, torch.zeros_like(coef), upper_off[:, None, :].expand_as(coef))
    lin = coef * slope  # the affine bound is sum_u lin_u (pre_u + w_u . delta) + coef_u off_u
    const = (lin * pre[:, None, :]).sum(-1) + (coef * off).sum(-1)
    norm = torch.einsum("npu,uv,npv->np", lin, gram, lin).clamp_min(0).sqrt()
    return const - r[:, None] * norm


def _objectives(hp: PiecewiseHead, sign: torch.Tensor) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Coefficient rows per point (``N x P x U``), the group size and slack per point.

    Affine heads: one row ``y a``; fine head: rows ``G_j - G_j'`` for own ``j`` and other ``j'``
    (grouped by ``j``), with slack ``log|other|``.
    """
    n = len(sign)
    if hp.kind == "affine":
        return sign[:, None, None].double() * hp.coef[None, :, :], 1, torch.zeros(n, dtype=torch.float64)
    pos = hp.positive
    jp, jn = pos.nonzero().squeeze(1), (~pos).nonzero().squeeze(1)
    if len(jp) != len(jn):
        raise ConfigError("certify: the fine head needs |J+| = |J-| (as the paper's tasks have)")
    diff_pos = (hp.coef[jp][:, None, :] - hp.coef[jn][None, :, :]).reshape(-1, hp.units)  # (j+, j-)
    diff_neg = (hp.coef[jn][:, None, :] - hp.coef[jp][None, :, :]).reshape(-1, hp.units)
    rows = torch.where(sign[:, None, None] > 0, diff_pos[None], diff_neg[None])
    slack = torch.full((n,), math.log(len(jn)), dtype=torch.float64)
    return rows, len(jn), slack


def certify(
    model: "Classifier", x: torch.Tensor, y: torch.Tensor, *, max_radius: float, steps: int = 30,
    exact_units: int = MAX_UNITS, batch_size: int = 500,
) -> Certificate | None:
    """Certified L2 radius per point (see the module doc); ``None`` for heads it cannot bound."""
    hp = _head_view(model)
    if hp is None:
        return None
    with torch.no_grad():
        z = model.features(x).double()
        correct = model.correct(x, y)
    sign = (y.long() * 2 - 1)
    pre = z @ hp.weight.T + hp.bias
    gram = hp.weight @ hp.weight.T
    wnorm = gram.diagonal().clamp_min(0).sqrt()
    rows, group, slack = _objectives(hp, sign)

    def certified(r: torch.Tensor) -> torch.Tensor:
        lb = crown_lower(pre, gram, wnorm, rows, r)
        if group > 1:  # fine head: max over own j of min over other j'
            lb = lb.reshape(len(r), -1, group).amin(2).amax(1) - slack
        else:
            lb = lb[:, 0]
        return lb > 0

    n = len(x)
    lo = torch.zeros(n, dtype=torch.float64)
    hi = torch.full((n,), float(max_radius), dtype=torch.float64)
    ok_hi = certified(hi)
    lo = torch.where(ok_hi, hi, lo)
    for _ in range(steps):
        mid = (lo + hi) / 2
        ok = certified(mid)
        lo = torch.where(ok, mid, lo)
        hi = torch.where(ok, hi, mid)
    radius = torch.where(correct, lo, torch.zeros_like(lo))
    space = "input" if model.identity_backbone else "head"
    method = "crown"
    if model.identity_backbone and hp.units <= exact_units and hp.kind == "affine":
        # Same batches as the protocol's, so the exact attack's work is reused (exact.py memo).
        lower = torch.cat([exact_distances(model, x[i : i + batch_size], y[i : i + batch_size]).lower
                           for i in range(0, n, batch_size)])
        radius = torch.maximum(radius, lower.clamp_max(float(max_radius)))
        method = "crown+exact-regions"
    radius = torch.where(correct, radius, torch.zeros_like(radius))
    return Certificate(radius.float(), space, method)


def certified_robust(model: "Classifier", x: torch.Tensor, y: torch.Tensor, radii: Sequence[float], *,
                     rtol: float = 0.0, batch_size: int = 500) -> torch.Tensor:
    """``R x N``: True where :func:`certify` proves point ``n`` robust at ``radii[r] * (1 + rtol)``
    in the input space (no attack can break it there; all False without an input-space certificate).

    ``rtol`` covers the tolerance attacks get on their radius (``RADIUS_RTOL``) and round-off;
    ``batch_size`` as :func:`certify`'s (the protocol's batches reuse the exact attack's work)."""
    out = torch.zeros(len(radii), len(x), dtype=torch.bool)
    cert = certify(model, x, y, max_radius=2 * max(max(radii), 1e-6), batch_size=batch_size)
    if cert is None or cert.space != "input":
        return out
    r = torch.tensor([float(v) for v in radii])
    return r[:, None] * (1 + rtol) < cert.radius.float()[None, :]
