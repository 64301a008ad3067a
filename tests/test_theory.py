"""The paper's quantitative claims on the synthetic task, at small d, seeded.

* binary GD: every neuron at the average of its class's features (cosine 1/sqrt(k/2) with each
  own-class centre, ~0 with the others; score ~1), broken by the averaged-feature attack at
  ~sqrt(d/k);
* fine (feature-decoupled): each group at its own centre (cosine ~1; score ~0), survives up to
  ~sqrt(d/2) = sqrt(k/2) * sqrt(d/k);
* robust f_robust: one unit per centre (score 0).
"""

from __future__ import annotations

import math

import pytest
import torch

from fabench import registry
from fabench.metrics import feature_report
from fabench.protocol import AttackSpec, run_protocol
from fabench.types import FitContext

ATTACKS = ("analytic", "pairwise", "pgd", "deepfool")


@pytest.fixture(scope="module")
def runs(small_params, radii_small):
    task = registry.tasks.get("synthetic")
    data = task.load({**task.meta.params, **small_params}, seed=0)
    r_avg, r_dec = radii_small["averaged"], radii_small["decoupled"]
    radii = [0.0, 0.5 * r_avg, r_avg, 2 * r_avg, r_dec, 3 * r_avg]
    specs = [AttackSpec(a, registry.attacks.get(a), dict(registry.attacks.get(a).meta.params)) for a in ATTACKS]
    out = {}
    for name in ("binary", "fine", "robust"):
        recipe = registry.recipes.get(name)
        model = recipe.fit(data, dict(recipe.meta.params), context=FitContext(seed=0))
        rep = feature_report(model.head.unit_weights(), model.head.unit_positive(), model.head.unit_labels(),
                             model.head_features(data), data.positive_mask)
        res = run_protocol(model, data, specs, radii=radii, seed=0)
        out[name] = (model, rep, res)
    return data, radii, out


def own_and_other(rep, pos):
    own = torch.where(rep.unit_positive[:, None], pos[None, :], ~pos[None, :])
    return rep.cosines[own], rep.cosines[~own]


def test_binary_neurons_average_their_class_features(runs) -> None:
    data, _, out = runs
    _, rep, res = out["binary"]
    own, other = own_and_other(rep, data.positive_mask)
    k = data.num_classes
    assert res.clean_accuracy == 1.0
    assert float(own.mean()) == pytest.approx(1 / math.sqrt(k / 2), abs=0.02)
    assert float(own.min()) > 0.3  # every neuron, every own-class centre (cluster sizes vary)
    assert float(own.std()) < 0.06
    assert float(other.abs().max()) < 0.1
    assert rep.score > 0.95


def test_fine_groups_decouple(runs) -> None:
    data, _, out = runs
    _, rep, res = out["fine"]
    cos = rep.cosines
    diag = torch.diagonal(cos)
    off = cos - torch.diag(diag)
    assert res.clean_accuracy == 1.0
    assert float(diag.min()) > 0.95
    assert float(off.abs().max()) < 0.1
    assert rep.score < 0.05


def test_robust_is_one_unit_per_feature(runs, radii_small) -> None:
    _, _, out = runs
    _, rep, res = out["robust"]
    assert res.clean_accuracy == 1.0
    # f_robust reaches the decoupled radius sqrt(d/2) (bias 0.25 sqrt(d); see recipes/robust.py)
    assert res.median_distance("worst") == pytest.approx(radii_small["decoupled"], rel=0.1)
    assert torch.allclose(torch.diagonal(rep.cosines), torch.ones(10), atol=1e-5)
    assert rep.score == pytest.approx(0.0, abs=1e-6)


def test_analytic_attack_breaks_averaging_net_at_sqrt_d_over_k(runs, radii_small) -> None:
    _, radii, out = runs
    res = out["binary"][2]
    r = radii_small["averaged"]
    assert res.median_distance("analytic") == pytest.approx(r, rel=0.1)
    acc = res.robust_accuracy("analytic")
    assert acc[radii[1]] == 1.0  # nothing breaks at half the radius
    assert acc[radii[3]] == 0.0  # everything breaks at twice the radius


def test_deepfool_medians_binary_near_sqrt_d_over_k_fine_near_sqrt_d_over_2(runs, radii_small) -> None:
    _, _, out = runs
    r_avg, r_dec = radii_small["averaged"], radii_small["decoupled"]
    # DeepFool linearises at x, where the other class's neurons are inactive (zero gradient):
    # on the averaging net it finds sqrt(2d/k) (switching the own neurons off), a factor sqrt(2)
    # above the true sqrt(d/k); the analytic attack finds sqrt(d/k) itself.
    binary = out["binary"][2].median_distance("deepfool")
    assert r_avg * 0.95 <= binary <= r_avg * math.sqrt(2) * 1.05
    fine = out["fine"][2].median_distance("deepfool")
    assert fine == pytest.approx(r_dec, rel=0.15)
    assert fine / binary > 1.4


def test_worst_case_never_above_any_attack_and_monotone(runs) -> None:
    _, radii, out = runs
    for _, _, res in out.values():
        worst = res.robust_accuracy("worst")
        for a in ATTACKS:
            acc = res.robust_accuracy(a)
            assert all(worst[r] <= acc[r] + 1e-12 for r in radii)
            vals = [acc[r] for r in radii]
            assert all(x >= y for x, y in zip(vals, vals[1:]))
        assert torch.all(res.min_distance <= torch.stack([o.distances for o in res.outcomes.values()]).min(0).values)


def test_at_twice_sqrt_d_over_k_binary_is_broken_fine_is_not(runs, radii_small) -> None:
    _, radii, out = runs
    r2 = radii[3]
    assert r2 == pytest.approx(2 * radii_small["averaged"])
    assert out["binary"][2].robust_accuracy("worst")[r2] == 0.0
    assert out["fine"][2].robust_accuracy("worst")[r2] >= 0.85
    # ...and the decoupled net's median minimal distance is about sqrt(k/2) times larger
    ratio = out["fine"][2].median_distance("worst") / out["binary"][2].median_distance("worst")
    assert ratio == pytest.approx(math.sqrt(5), rel=0.15)
