"""The synthetic task kind: Definition 2.1 under Assumptions 1-2, seeded."""

from __future__ import annotations

import math

import pytest
import torch

from fabench import registry
from fabench.errors import ConfigError


def load(seed: int = 0, **over: object):
    task = registry.tasks.get("synthetic")
    params = {**task.meta.params, "d": 300, "n_train": 400, "n_test": 100, **over}
    return task.load(params, seed=seed)


def test_centres_are_orthogonal_with_norm_sqrt_d() -> None:
    data = load()
    mu = data.features.double()
    gram = mu @ mu.T
    assert torch.allclose(torch.diagonal(gram), torch.full((10,), 300.0, dtype=torch.float64), rtol=1e-5)
    off = gram - torch.diag(torch.diagonal(gram))
    assert off.abs().max() < 1e-3


def test_points_are_centre_plus_unit_gaussian_noise() -> None:
    data = load(sigma=2.0)
    noise = data.x_train - data.features[data.fine_train]
    assert abs(float(noise.std()) - 2.0) < 0.05
    assert abs(float(noise.mean())) < 0.02


def test_binary_labels_first_half_positive_and_override() -> None:
    data = load()
    assert data.positive_classes == (0, 1, 2, 3, 4)
    assert torch.equal(data.y_train, (data.fine_train < 5).long())
    data2 = load(positive_classes=(1, 3))
    assert data2.positive_classes == (1, 3)
    assert torch.equal(data2.y_test, ((data2.fine_test == 1) | (data2.fine_test == 3)).long())


def test_seeded_and_seed_sensitive() -> None:
    a, b, c = load(seed=3), load(seed=3), load(seed=4)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.features, b.features)
    assert not torch.equal(a.x_train, c.x_train)


def test_task_file_radius_grid_matches_figure_3() -> None:
    task = registry.tasks.get("synthetic")
    assert task.radii[0] == 0.0 and task.radii[-1] == 58.0 and len(task.radii) == 30
    assert task.meta.params["d"] == 3072 and task.meta.params["k"] == 10
    assert math.isclose(task.meta.params["sigma"], 1.0)


@pytest.mark.parametrize("over", [{"k": 400}, {"positive_classes": (0, 11)}, {"sigma": -1.0}, {"n_train": 0}])
def test_bad_parameters_raise_config_error(over: dict) -> None:
    with pytest.raises(ConfigError):
        load(**over)
