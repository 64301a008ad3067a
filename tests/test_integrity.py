"""A plugin cannot make fabench write a false record (session 16's red team, reproduced small).

Each case below wrote a false record before: an attack that moved the test points or the model,
one that verified its own claim against points it had moved, claims without adversarial examples,
a recipe that changed the test data, a head whose weights are not its function (certified robust
where it is not), slack at radius 0 on a task of small scale.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

import pytest
import torch

from fabench import api, registry
from fabench.attacks.base import outcome_from_distances
from fabench.attacks.exact import solves, unfaithful
from fabench.certify import certify
from fabench.errors import InvalidOutcomeError
from fabench.models import BinaryHead, Classifier
from fabench.types import AttackOutcome, Meta, TaskData
from fabench.validation import validate_outcome

SOURCE = "rt-dist"
TINY = {"d": 16, "k": 4, "n_train": 40, "n_test": 20, "steps": 30}
RADII = (0.0, 1.0, 2.0, 3.0)


@pytest.fixture
def plugins() -> Iterator[Any]:
    """Register objects as if from distribution ``rt-dist``; removed afterwards."""
    added: list[tuple[Any, str]] = []

    def add(reg: Any, obj: Any) -> None:
        reg.register(obj, source=SOURCE)
        added.append((reg, obj.meta.name))

    yield add
    for reg, name in added:
        reg._entries[name] = [e for e in reg._entries.get(name, []) if e.source != SOURCE]
        if not reg._entries[name]:
            del reg._entries[name]


def run(tmp_path: Path, attacks: Sequence[str], recipe: str = "binary") -> Any:
    return api.evaluate(task="synthetic", recipe=recipe, attacks=attacks, radii=RADII, params=TINY,
                        out=tmp_path / "res", force=True)


class _Attack:
    minimization: ClassVar[bool] = True

    def __init__(self, name: str) -> None:
        self.meta = Meta(name=name, description="red-team attack", reference="test", params={})


class MovePoints(_Attack):
    """Moves every point far into its own class (in place) and claims nothing."""

    def run(self, model: Classifier, x: torch.Tensor, y: torch.Tensor, radii: Sequence[float], *,
            data: TaskData, params: Any, seed: int) -> AttackOutcome:
        mu = data.features
        with torch.no_grad():
            for i in range(len(x)):
                j = int(data.positive_classes[0]) if int(y[i]) == 1 else int(
                    next(c for c in range(data.num_classes) if c not in data.positive_classes))
                x[i] += 100 * mu[j] / mu[j].norm()
        return AttackOutcome(tuple(radii), torch.zeros(len(radii), len(x), dtype=torch.bool),
                             torch.full((len(x),), math.inf), adversarials=torch.full_like(x, math.nan))


class SelfVerified(_Attack):
    """Writes a misclassified point into ``x`` and claims it at distance 1e-4."""

    def run(self, model: Classifier, x: torch.Tensor, y: torch.Tensor, radii: Sequence[float], *,
            data: TaskData, params: Any, seed: int) -> AttackOutcome:
        adv = x.clone()
        with torch.no_grad():
            sign = (y.float() * 2 - 1)[:, None]
            pos = data.positive_mask
            adv -= sign * 1000 * (data.features[pos].sum(0) - data.features[~pos].sum(0))[None, :]  # far across
        x.copy_(adv - 1e-4 / math.sqrt(x.shape[1]))
        d = torch.full((len(x),), 1e-4)
        return AttackOutcome(outcome_from_distances(radii, d).radii, outcome_from_distances(radii, d).broken, d,
                             adversarials=adv)


class NoAdversarials(_Attack):
    """Claims every point at distance 1e-3 and shows nothing."""

    def run(self, model: Classifier, x: torch.Tensor, y: torch.Tensor, radii: Sequence[float], *,
            data: TaskData, params: Any, seed: int) -> AttackOutcome:
        return outcome_from_distances(radii, torch.full((len(x),), 1e-3))


class ChangeWeights(_Attack):
    """Shrinks the model's weights (which would make every later attack fail) and claims nothing."""

    def run(self, model: Classifier, x: torch.Tensor, y: torch.Tensor, radii: Sequence[float], *,
            data: TaskData, params: Any, seed: int) -> AttackOutcome:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1e-3)
        model.margin = lambda z: torch.full((len(z),), 1e6)  # type: ignore[method-assign]
        return AttackOutcome(tuple(radii), torch.zeros(len(radii), len(x), dtype=torch.bool),
                             torch.full((len(x),), math.inf), adversarials=torch.full_like(x, math.nan))


def test_an_attack_that_moves_the_points_or_the_model_changes_nothing(plugins: Any, tmp_path: Path) -> None:
    plugins(registry.attacks, MovePoints("rt-move"))
    plugins(registry.attacks, ChangeWeights("rt-weights"))
    honest = run(tmp_path, ["exact"])
    for first in ("rt-move", "rt-weights"):
        rec = run(tmp_path, [first, "exact"])
        assert rec.robust_accuracy["worst"] == honest.robust_accuracy["worst"], first
        assert rec.clean_accuracy == honest.clean_accuracy
    assert min(honest.robust_accuracy["worst"].values()) < honest.clean_accuracy  # the attacks had work to do


def test_a_claim_verified_against_points_the_attack_moved_is_refused(plugins: Any, tmp_path: Path) -> None:
    plugins(registry.attacks, SelfVerified("rt-selfver"))
    with pytest.raises(InvalidOutcomeError, match="rt-selfver"):
        run(tmp_path, ["exact", "rt-selfver"])


def test_a_plugin_must_show_an_adversarial_for_every_claim(plugins: Any, tmp_path: Path) -> None:
    plugins(registry.attacks, NoAdversarials("rt-noadv"))
    with pytest.raises(InvalidOutcomeError, match="without adversarial examples"):
        run(tmp_path, ["exact", "rt-noadv"])


class Relabel:
    """A recipe that trains the built-in binary recipe and then relabels the test set with its predictions."""

    meta = Meta(name="rt-relabel", description="red team", reference="test",
                params=dict(registry.recipes.get("binary").meta.params))

    def fit(self, data: TaskData, params: Any, *, context: Any) -> Classifier:
        model: Classifier = registry.recipes.get("binary").fit(data, params, context=context)
        pred = model.predict(data.x_test)
        for i, p in enumerate(pred.tolist()):
            if p != int(data.y_test[i]):  # move the point's cluster label to a cluster of the predicted class
                data.fine_test[i] = data.positive_classes[0] if p == 1 else next(
                    c for c in range(data.num_classes) if c not in data.positive_classes)
        return model


def test_a_recipe_that_changes_the_test_data_writes_no_record(plugins: Any, tmp_path: Path) -> None:
    plugins(registry.recipes, Relabel())
    with pytest.raises(InvalidOutcomeError, match="test data changed in place"):
        run(tmp_path, ["analytic"], recipe="rt-relabel")
    assert not list((tmp_path / "res").rglob("*.json"))


def _head(d: int = 8, m: int = 2, seed: int = 0) -> BinaryHead:
    g = torch.Generator().manual_seed(seed)
    head = BinaryHead(d, m)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=g))
        head.bias.copy_(torch.randn(head.bias.shape, generator=g) * 0.1)
    return head


class LyingHead(BinaryHead):
    def margin(self, z: torch.Tensor) -> torch.Tensor:
        return super().margin(z) - 0.5


def test_a_head_whose_function_is_not_its_weights_is_neither_solved_nor_certified() -> None:
    x, y = torch.randn(16, 8, generator=torch.Generator().manual_seed(1)), torch.randint(0, 2, (16,))
    honest = Classifier(_head())
    assert unfaithful(honest) == "" and solves(honest) and certify(honest, x, y, max_radius=4.0) is not None
    lying = Classifier(LyingHead(8, 2))
    lying.head.load_state_dict(_head().state_dict())
    patched = Classifier(_head())
    patched.head.margin = lambda z: torch.zeros(len(z))  # type: ignore[method-assign]
    hooked = Classifier(_head())
    hooked.backbone.register_forward_hook(lambda mod, inp, out: out * 0)
    posing = Classifier(_head())
    posing.backbone = torch.nn.Sequential(torch.nn.Flatten())  # says "no backbone", has one
    for model, why in [(lying, "overrides BinaryHead.margin"), (patched, "replaced on the instance"),
                       (hooked, "forward hook"), (posing, "no backbone")]:
        assert why in unfaithful(model)
        assert not solves(model)
        assert certify(model, x, y, max_radius=4.0) is None


def test_a_claim_below_the_certified_radius_is_refused(plugins: Any, tmp_path: Path) -> None:
    from fabench.evaluation import check_certificate
    from fabench.protocol import ProtocolResult

    n = 4
    dist = torch.tensor([0.5, 2.0, math.inf, 1.0])
    out = outcome_from_distances(RADII, dist)
    result = ProtocolResult(RADII, torch.arange(n), torch.ones(n, dtype=torch.bool), {"a": out}, out.broken, dist)
    check_certificate(torch.tensor([0.5, 1.9, 3.0, 1.0]), result, names=["a"])  # at or below every claim: fine
    with pytest.raises(InvalidOutcomeError, match="below its certified radius"):
        check_certificate(torch.tensor([0.6, 1.9, 3.0, 1.0]), result, names=["a"])


def _validate(x: torch.Tensor, out: AttackOutcome, radii: Sequence[float], source: str = SOURCE) -> bool:
    model = Classifier(_head(d=x.shape[1]))
    y = model.predict(x)  # every point correct
    return validate_outcome(out, name="a", source=source, radii=radii, model=model, x=x, y=y,
                            clean_correct=torch.ones(len(x), dtype=torch.bool))


def test_the_radius_tolerance_follows_the_scale_of_the_inputs() -> None:
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(2)) * 1e-5  # a task of tiny scale
    radii = (0.0, 1e-6, 1e-4)
    d = torch.full((6,), 1e-5)  # 10 times the radius 1e-6, once inside the old absolute slack
    b = torch.zeros(3, 6, dtype=torch.bool)
    b[1:] = True
    with pytest.raises(InvalidOutcomeError, match="claimed broken at radius 1e-06"):
        _validate(x, AttackOutcome(radii, b, d), radii)
    b[0] = True
    with pytest.raises(InvalidOutcomeError, match="radius 0"):
        _validate(x, AttackOutcome(radii, b, torch.full((6,), 1e-12)), radii, source="fabench")
