"""The typed protocol of fabench: what a task, a recipe and an attack receive and return.

This module is the one place a plugin author needs to read. Everything in it is stable:

* a :class:`Task` turns parameters into :class:`TaskData` (``Task.load``);
* a :class:`Recipe` turns :class:`TaskData` into a :class:`~fabench.models.Classifier`
  (``Recipe.fit``), a ``torch.nn.Module`` that returns two logits ``[-g/2, g/2]`` for the binary
  decision ``sign(g)`` and exposes its hidden units for the feature-averaging metrics;
* an :class:`Attack` turns a classifier and a batch into an :class:`AttackOutcome`
  (``Attack.run``): for every radius, which points it broke, and the smallest distance it found.

**Plugins** provide the same three kinds of objects through the entry-point groups
``fabench.tasks``, ``fabench.recipes`` and ``fabench.attacks`` (``name = "module:object"``, where
``name`` equals ``object.meta.name`` and ``object`` is a class instantiable with no arguments or an
instance). fabench records the providing distribution in ``Meta.source``; a plugin never prints and
never registers itself on import. See the README's "Write a plugin" section and ``examples/fabench-example-plugin``.

Notation follows Li, Pan, Lyu, Li, "Feature Averaging: An Implicit Bias of Gradient Descent
Leading to Non-Robustness in Neural Networks" (ICLR 2025): ``k`` clusters (fine classes) with
features ``mu_j``; ``J+`` are the positive clusters, ``J-`` the others; binary label ``y = +1``
for ``j in J+``. Internally the binary label is the class index ``1`` (positive) or ``0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Protocol, Sequence, runtime_checkable

from fabench._lazy import lazy

if TYPE_CHECKING:  # pragma: no cover - heavy imports are lazy (see fabench._lazy)
    import torch
else:
    torch = lazy("torch")

if TYPE_CHECKING:  # pragma: no cover
    from fabench.models.classifier import Classifier

Params = Mapping[str, Any]
"""Resolved parameters of a task, recipe or attack: names to JSON-representable values."""

ProgressFn = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: called by long stages; the CLI draws it as a bar."""


def no_progress(stage: str, done: int, total: int) -> None:
    """The default progress callback: does nothing."""


@dataclass(frozen=True)
class Meta:
    """Metadata of a registered task, recipe or attack (shown by ``fabench list``).

    ``params`` holds every parameter with its default; its values' types are the types that
    ``--set key=value`` parses to. ``bounds`` and ``choices`` declare the values each parameter
    may take; :func:`fabench.params.resolve` refuses others before any work is done (declare them
    for every parameter, so that no value can silently switch your object off).
    """

    name: str
    description: str
    reference: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)
    source: str = "fabench"
    bounds: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)
    """Closed range ``(low, high)`` of a numeric parameter (``None``: unbounded on that side);
    a value outside it is refused before any work is done."""
    choices: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    """The allowed values of a parameter that takes one of a few (e.g. an optimizer's name)."""


@dataclass(frozen=True)
class TaskData:
    """The data of a task, as Definition 2.1 of the paper describes it.

    ``x_*`` are inputs in the task's input space (pixels in ``[0, 1]`` for images, ``R^d`` for the
    synthetic task); ``fine_*`` are cluster (fine-class) labels in ``[0, k)``. ``features`` are
    the input-space features ``mu_j`` (``k x input_dim``): the true centres for the synthetic task,
    the class-mean inputs for real data. ``positive_classes`` is ``J+``.
    """

    name: str
    x_train: torch.Tensor
    fine_train: torch.Tensor
    x_test: torch.Tensor
    fine_test: torch.Tensor
    positive_classes: tuple[int, ...]
    num_classes: int
    features: torch.Tensor
    bounds: tuple[float, float]
    radii: tuple[float, ...]
    headline_radii: tuple[float, ...] = ()
    class_names: tuple[str, ...] = ()
    info: Mapping[str, Any] = field(default_factory=dict)
    """Free provenance: e.g. ``data_subset``, counts, data directory, checksums verified."""

    @property
    def positive_mask(self) -> torch.Tensor:
        """Boolean vector of length ``k``: ``True`` for ``j in J+``."""
        mask = torch.zeros(self.num_classes, dtype=torch.bool)
        mask[list(self.positive_classes)] = True
        return mask

    def binary(self, fine: torch.Tensor) -> torch.Tensor:
        """Binary class index (1 for ``J+``, 0 for ``J-``) of fine labels."""
        return self.positive_mask.to(fine.device)[fine].long()

    @property
    def y_train(self) -> torch.Tensor:
        return self.binary(self.fine_train)

    @property
    def y_test(self) -> torch.Tensor:
        return self.binary(self.fine_test)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


@runtime_checkable
class Task(Protocol):
    """A registered task: metadata (with default parameters) and a loader."""

    meta: Meta

    def load(
        self,
        params: Params,
        *,
        seed: int,
        data_dir: str | None = None,
        progress: ProgressFn = no_progress,
    ) -> TaskData:
        """Return the task's data for the resolved ``params`` (``meta.params`` overridden)."""
        ...


@dataclass(frozen=True)
class FitContext:
    """What a recipe gets besides the data: seed, progress, and a cache directory."""

    seed: int
    progress: ProgressFn = no_progress
    cache_dir: str | None = None
    data_dir: str | None = None
    device: str = "cpu"
    """Where to train (``cpu``, ``cuda:0``, ...). Initialise with a CPU generator, then move, so the
    initial weights do not depend on the device."""


@runtime_checkable
class Recipe(Protocol):
    """A registered training recipe: ``fit`` returns a trained classifier."""

    meta: Meta

    def fit(self, data: TaskData, params: Params, *, context: FitContext) -> "Classifier":
        ...


@dataclass(frozen=True)
class AttackOutcome:
    """What one attack found on ``N`` points for a grid of ``R`` radii.

    ``broken[i, n]`` (``torch.bool``, ``R x N``) is True when the attack found an adversarial
    example for point ``n`` whose L2 distance is at most ``radii[i]`` (so it is monotone in the
    radius). ``distances[n]`` (floating point, ``N``) is the smallest L2 distance of an adversarial
    example it found: ``inf`` if none, never NaN, ``0`` only for a point the model misclassifies.

    fabench validates every outcome before use (:func:`fabench.validation.validate_outcome`): the
    shapes and dtypes above, ``radii`` equal to those asked, monotone, ``broken[i, n]`` only when
    ``distances[n] <= radii[i]`` (and, for a minimisation attack, the converse). An invalid outcome
    is an error naming the attack and its distribution; no record is written.

    **The preferred contract** also returns ``adversarials``: fabench then verifies every claim on
    the model (misclassified, within the input bounds, within the claimed distance; step just past
    the boundary) and lists the attack in the record's ``verified_attacks``.
    """

    radii: tuple[float, ...]
    broken: torch.Tensor
    distances: torch.Tensor
    adversarials: torch.Tensor | None = None
    """Optional, preferred: per point the closest adversarial example found (shaped like ``x``;
    rows of NaN where none). When given, fabench verifies every claim on the model itself."""


@runtime_checkable
class Attack(Protocol):
    """A registered L2 attack on the 2-logit binary view of a classifier."""

    meta: Meta
    minimization: ClassVar[bool]
    """True for attacks that find per-point minimal distances in one run (a whole curve)."""

    def run(
        self,
        model: "Classifier",
        x: torch.Tensor,
        y: torch.Tensor,
        radii: Sequence[float],
        *,
        data: TaskData,
        params: Params,
        seed: int,
    ) -> AttackOutcome:
        ...
