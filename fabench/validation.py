"""Trust nothing a plugin returns: outcome checks, verified adversarial claims, guarded calls.

fabench runs code it did not write (plugin tasks, recipes, attacks). Before a number from such
code enters a record it is checked here:

* :func:`validate_outcome`: an :class:`~fabench.types.AttackOutcome` has the right shapes and
  dtypes, the radii that were asked, no NaN, is monotone in the radius, its ``broken`` agrees
  with its ``distances`` (a point claimed broken at ``r`` has a distance ``<= r``; for a
  minimisation attack also the converse), and a distance of 0 only for a point the model already
  misclassifies, and nothing at radius 0 for a point the model classifies correctly. When the
  attack returns ``adversarials``, every claim is *verified on the model*: the example is
  misclassified, inside the input bounds and within the claimed distance. A plugin's attack must
  return them for every claim (only fabench's own attacks may claim unverified distances).
* :class:`GuardedAttack`: a plugin's attack runs on copies of the points, labels and model
  (what it does to them cannot reach what fabench checks its claims on), and torch's global
  settings it changes (default dtype, grad mode, threads) are restored after each call.
* :func:`guarded`: an exception raised inside a plugin's ``load``/``fit``/``run`` becomes one
  :class:`~fabench.errors.PluginError` naming the plugin and its distribution.
* :func:`check_bounds`: a parameter value against its owner's declared ``Meta.bounds`` and
  ``Meta.choices``.

Every failure is one :class:`~fabench.errors.FabenchError` line; nothing invalid is recorded.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from fabench.errors import ConfigError, FabenchError, InvalidOutcomeError, PluginError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from fabench.models import Classifier
    from fabench.types import AttackOutcome

BUILTIN_SOURCE = "fabench"
#: Relative slack when comparing a distance with a radius (float32 round-off); as attacks.base.
RADIUS_RTOL = 1e-5
#: Absolute slack (distances are float32; the built-in attacks allow 1e-6 over the radius), at
#: most :data:`RADIUS_ATOL_REL` times the points' median norm (so it stays round-off on inputs of
#: any scale: on a task scaled by 1e-5 a fixed 1e-5 would be a whole adversarial step).
RADIUS_ATOL = 1e-5
RADIUS_ATOL_REL = 1e-6
#: Claimed adversarial examples a batch re-checks one at a time when the batch's forward pass
#: classifies them correctly (a float32 tie judged differently in another batch); past that many
#: the claims are refuted without the re-check.
ALONE_RECHECKS = 64
#: The largest radius grid fabench accepts (every radius is a column of every record).
MAX_RADII = 10_000
#: The largest radius accepted: L2 distances beyond it are not a meaningful robustness question
#: and overflow float32 arithmetic in the attacks.
MAX_RADIUS = 1e9
#: Seeds fabench accepts (every generator it seeds takes them, including numpy's).
SEED_RANGE = (0, 2**32 - 1)


def who(kind: str, name: str, source: str) -> str:
    """``attack 'fgm' (from distribution 'fabench-example-plugin')``, or ``built-in attack 'pgd'``."""
    if source == BUILTIN_SOURCE:
        return f"built-in {kind} {name!r}"
    return f"{kind} {name!r} (from {source if source.startswith('file:') else 'distribution ' + repr(source)})"


@contextmanager
def guarded(kind: str, name: str, source: str, method: str) -> Iterator[None]:
    """Run a plugin's ``method``; any non-fabench exception becomes one :class:`PluginError`.

    Errors of fabench's own kind (e.g. a ``DataError`` a task raises on purpose) pass unchanged;
    so do exceptions of built-ins (they are fabench's internal errors, reported as such).
    """
    try:
        yield
    except FabenchError:
        raise
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit too: a plugin must not end fabench silently
        if source == BUILTIN_SOURCE:
            raise
        msg = str(exc).splitlines()[0] if str(exc) else ""
        raise PluginError(f"{who(kind, name, source)} failed in {method}(): {type(exc).__name__}"
                          + (f": {msg}" if msg else "")) from exc


def check_seed(seed: Any, *, what: str = "--seed") -> int:
    """A seed in :data:`SEED_RANGE`, or a ConfigError."""
    lo, hi = SEED_RANGE
    if isinstance(seed, bool) or not isinstance(seed, int) or not lo <= seed <= hi:
        raise ConfigError(f"{what} {seed!r}: seeds must be integers in [{lo}, {hi}]")
    return seed


def check_grid_size(start: float, stop: float, step: float, *, what: str) -> int:
    """The number of points of ``start:stop:step`` (inclusive), refused *before* it is built."""
    vals = (start, stop, step)
    if not all(math.isfinite(v) for v in vals) or step <= 0 or stop < start or start < 0:
        raise ConfigError(f"{what}: bad radius grid start={start} stop={stop} step={step} "
                          f"(need 0 <= start <= stop, step > 0, all finite)")
    if stop > MAX_RADIUS:
        raise ConfigError(f"{what}: radius {stop:g} is above the largest accepted radius {MAX_RADIUS:g}")
    n = (stop - start) / step + 1
    if n > MAX_RADII:
        raise ConfigError(f"{what}: the grid start={start:g} stop={stop:g} step={step:g} has {n:.0f} radii; "
                          f"at most {MAX_RADII} are accepted")
    return int(round(n - 1)) + 1


def check_bounds(
    params: Mapping[str, Any],
    *,
    owner: str,
    bounds: Mapping[str, tuple[float | None, float | None]] | None = None,
    choices: Mapping[str, Sequence[Any]] | None = None,
) -> None:
    """Every value in its declared closed range and among its declared choices, or a ConfigError.

    A tuple value is checked element by element; a NaN is never in range.
    """
    for key, (low, high) in (bounds or {}).items():
        if key not in params:
            continue
        value = params[key]
        items = value if isinstance(value, (tuple, list)) else (value,)
        for v in items:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            bad = (isinstance(v, float) and math.isnan(v)) or (low is not None and v < low) or (
                high is not None and v > high)
            if bad:
                rng = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
                raise ConfigError(f"{owner}: {key}={value!r} is outside its range {rng}")
    for key, allowed in (choices or {}).items():
        if key in params and params[key] not in tuple(allowed):
            raise ConfigError(f"{owner}: {key}={params[key]!r} is not one of "
                              f"{', '.join(repr(a) for a in allowed)}")


def validate_outcome(
    out: Any,
    *,
    name: str,
    source: str,
    radii: Sequence[float],
    model: "Classifier",
    x: "torch.Tensor",
    y: "torch.Tensor",
    clean_correct: "torch.Tensor",
    bounds: tuple[float, float] = (-math.inf, math.inf),
    minimization: bool = False,
) -> bool:
    """Check one batch's outcome of attack ``name``; returns True when its claims were verified on
    the model (it returned ``adversarials``). Raises :class:`InvalidOutcomeError` otherwise."""
    import torch

    from fabench.types import AttackOutcome

    def fail(why: str) -> InvalidOutcomeError:
        return InvalidOutcomeError(f"{who('attack', name, source)} returned an invalid outcome: {why}; "
                                   "no record was written")

    n, n_r = len(x), len(radii)
    if not isinstance(out, AttackOutcome):
        raise fail(f"expected fabench.types.AttackOutcome, got {type(out).__name__}")
    try:
        got_radii = tuple(float(r) for r in out.radii)
    except (TypeError, ValueError):
        raise fail("radii are not numbers") from None
    if len(got_radii) != n_r or any(abs(a - float(b)) > 1e-9 * max(1.0, abs(float(b)))
                                    for a, b in zip(got_radii, radii)):
        raise fail(f"radii {list(got_radii)[:6]} differ from those asked {list(radii)[:6]}")
    b, d = out.broken, out.distances
    if not isinstance(b, torch.Tensor) or b.dtype != torch.bool:
        raise fail(f"broken must be a torch.bool tensor, got {getattr(b, 'dtype', type(b).__name__)}")
    if tuple(b.shape) != (n_r, n):
        raise fail(f"broken has shape {tuple(b.shape)}, expected (radii, points) = {(n_r, n)}")
    if not isinstance(d, torch.Tensor) or not d.dtype.is_floating_point:
        raise fail(f"distances must be a floating-point tensor, got {getattr(d, 'dtype', type(d).__name__)}")
    if tuple(d.shape) != (n,):
        raise fail(f"distances has shape {tuple(d.shape)}, expected ({n},)")
    b, d = b.detach().cpu(), d.detach().cpu().double()
    correct = clean_correct.detach().cpu()
    scale = float(x.detach().flatten(1).norm(dim=1).median().cpu()) if n else 0.0
    atol = min(RADIUS_ATOL, RADIUS_ATOL_REL * scale) if math.isfinite(scale) else RADIUS_ATOL
    if torch.isnan(d).any():
        raise fail(f"{int(torch.isnan(d).sum())} distances are NaN (use inf for 'none found')")
    if (d < 0).any():
        raise fail("negative distances")
    if n_r > 1 and (b[:-1] & ~b[1:]).any():
        raise fail("broken is not monotone in the radius (broken at r but not at a larger r')")
    if (correct & (d == 0)).any():
        k = int((correct & (d == 0)).sum())
        raise fail(f"distance 0 for {k} points the model classifies correctly")
    r = torch.tensor([float(v) for v in radii], dtype=torch.float64)[:, None]
    within = d[None, :] <= r * (1 + RADIUS_RTOL) + atol
    below = d[None, :] < r * (1 - RADIUS_RTOL) - atol
    # Judged on correctly classified points: clean errors are broken everywhere by the protocol.
    claim_without = b & ~within & correct[None, :]
    if claim_without.any():
        i, j = claim_without.nonzero()[0].tolist()
        raise fail(f"point {j} is claimed broken at radius {radii[i]:g} but its distance is {float(d[j]):g}")
    at_zero = b[r[:, 0] <= 0].any(dim=0) & correct
    if at_zero.any():
        j = int(at_zero.nonzero()[0, 0])
        raise fail(f"point {j} is claimed broken at radius 0 but the model classifies it correctly")
    if minimization:
        unmarked = ~b & below & correct[None, :]
        if unmarked.any():
            i, j = unmarked.nonzero()[0].tolist()
            raise fail(f"point {j} has distance {float(d[j]):g} but is not marked broken at radius {radii[i]:g}")
    adv = out.adversarials
    if adv is None:
        claims = (b.any(dim=0) | torch.isfinite(d)) & correct
        if source != BUILTIN_SOURCE and claims.any():
            raise fail(f"it claims {int(claims.sum())} points without adversarial examples (a plugin's attack "
                       "must return `adversarials` for every point it claims, so that fabench can check "
                       "each claim on the model)")
        return False
    if not isinstance(adv, torch.Tensor) or tuple(adv.shape) != tuple(x.shape):
        raise fail(f"adversarials must be a tensor shaped like x {tuple(x.shape)}, "
                   f"got {tuple(getattr(adv, 'shape', ()))}")
    claimed = correct & torch.isfinite(d)
    if claimed.any():
        idx = claimed.nonzero().squeeze(1)
        a = adv.detach().to(x)[idx]  # on the points' device, whichever the attack returned
        if not torch.isfinite(a.flatten(1)).all():
            raise fail("an adversarial example of a point with a finite distance is not finite")
        lo, hi = bounds
        if (a < lo - 1e-6).any() or (a > hi + 1e-6).any():
            raise fail(f"an adversarial example leaves the input bounds [{lo}, {hi}]")
        norms = (a - x[idx]).flatten(1).norm(dim=1).double().cpu()
        far = norms > d[idx] * (1 + RADIUS_RTOL) + atol
        if far.any():
            j = int(idx[far.nonzero()[0, 0]])
            raise fail(f"the adversarial example of point {j} is at distance {float(norms[far][0]):g}, "
                       f"not the claimed {float(d[j]):g}")
        with torch.no_grad():
            y_idx = y[idx]
            still = model.correct(a, y_idx).cpu()
            # A float32 tie at the boundary can be judged differently in another batch: a claim
            # fails only if its example is also classified correctly on its own (batch of one).
            for k in still.nonzero().squeeze(1)[:ALONE_RECHECKS].tolist():
                still[k] = bool(model.correct(a[k:k + 1], y_idx[k:k + 1]).cpu()[0])
        if still.any():
            j = int(idx[still.nonzero()[0, 0]])
            raise fail(f"the adversarial example claimed for point {j} is classified correctly by the model")
    return True


def check_outcome(
    out: Any, spec: Any, model: "Classifier", x: "torch.Tensor", y: "torch.Tensor",
    clean_correct: "torch.Tensor", radii: Sequence[float], data: Any,
) -> bool:
    """:func:`validate_outcome` for one batch of a :class:`~fabench.protocol.AttackSpec`."""
    meta = getattr(spec.attack, "meta", None)
    return validate_outcome(
        out, name=spec.name, source=str(getattr(meta, "source", BUILTIN_SOURCE)), radii=radii, model=model,
        x=x, y=y, clean_correct=clean_correct, bounds=tuple(data.bounds),
        minimization=bool(getattr(spec.attack, "minimization", False)),
    )


class GuardedAttack:
    """A plugin attack, run at arm's length.

    ``run`` hands the plugin copies of the model, the points and the labels, so nothing it does to
    them (writing into ``x``, changing weights, replacing a method on the model) reaches the
    objects fabench judges its claims on; torch's process-wide settings it may change (default
    dtype, grad mode, CPU threads) are restored after the call; any exception becomes one
    :class:`PluginError`. (In-process code can still patch fabench itself: install only plugins
    you trust; a plugin is imported only when a run names it, see :mod:`fabench.registry`.)"""

    def __init__(self, attack: Any, name: str, source: str) -> None:
        self._attack, self._name, self._source = attack, name, source
        self.meta = attack.meta
        self.minimization = bool(getattr(attack, "minimization", False))

    def run(self, model: Any, x: "torch.Tensor", y: "torch.Tensor", *args: Any, **kwargs: Any) -> Any:
        import copy

        import torch

        dtype, grad, threads = torch.get_default_dtype(), torch.is_grad_enabled(), torch.get_num_threads()
        try:
            with guarded("attack", self._name, self._source, "run"):
                return self._attack.run(copy.deepcopy(model), x.detach().clone(), y.detach().clone(),
                                        *args, **kwargs)
        finally:
            torch.set_default_dtype(dtype)
            torch.set_grad_enabled(grad)
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)


def tensors_fingerprint(*items: Any) -> str:
    """SHA-256 of tensors (their dtype, shape and bytes, copied to the CPU) and plain values, in order."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for item in items:
        if isinstance(item, torch.Tensor):
            t = item.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(item).encode())
        h.update(b"\0")
    return h.hexdigest()


def eval_data_fingerprint(data: Any) -> str:
    """What of a :class:`~fabench.types.TaskData` the reported numbers are computed on: the test
    points and labels, the features (the cosines), the classes and the input bounds."""
    return tensors_fingerprint(data.x_test, data.fine_test, data.features, tuple(data.positive_classes),
                               data.num_classes, tuple(data.bounds))


def model_fingerprint(model: Any) -> str:
    """Every parameter and buffer of a model (names, dtypes, shapes and values)."""
    state = model.state_dict()
    return tensors_fingerprint(*[x for k in sorted(state) for x in (k, state[k])])


def check_unchanged(before: str, after: str, *, what: str, during: str) -> None:
    """An :class:`InvalidOutcomeError` when a fingerprint changed: ``what`` was modified ``during``."""
    if before != after:
        raise InvalidOutcomeError(f"{what} changed in place during {during}; the numbers would describe "
                                  "other data or another model, so no record was written")

