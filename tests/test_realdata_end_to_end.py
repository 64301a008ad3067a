"""End to end on real data: MNIST 5v5 on pixels (both heads, shipped settings) and CIFAR-10 5v5 (small cnn, cached).

The default (paper-like) settings, GD heads on a trained backbone, are tested in test_paper_setting.py.

The full protocol runs on a seeded subset of test points to stay within CI's few minutes; the
training settings are the task file's, so these are the numbers a user gets (on fewer points).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from _realdata import make_data_dir
from fabench.cli import format_record
from fabench.data import store
from fabench.evaluation import RunConfig, evaluate
from fabench.records import Record, radius_key

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

N_EVAL = 300
ATTACKS = ("analytic", "pgd", "deepfool")  # the paper's protocol: its attack, PGD and DeepFool


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data_dir(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def mnist_records(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Record]:
    out, cache = tmp_path_factory.mktemp("out"), tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(store.OFFLINE_ENV, "1")
        return {
            recipe: evaluate(RunConfig(task="mnist5v5-pixels", recipe=recipe, n_eval=N_EVAL, attacks=ATTACKS,
                                       data_dir=str(data_dir), cache_dir=str(cache)), out_dir=out)[0]
            for recipe in ("binary", "fine")
        }


def check_curves(rec: Record) -> None:
    keys = [radius_key(r) for r in rec.radii]
    worst = [rec.robust_accuracy["worst"][k] for k in keys]
    assert worst[0] == pytest.approx(rec.clean_accuracy)
    for attack in rec.attacks + ["worst"]:
        curve = [rec.robust_accuracy[attack][k] for k in keys]
        assert all(a >= b for a, b in zip(curve, curve[1:])), f"{attack} curve not monotone: {curve}"
        if attack != "worst":
            assert all(w <= a + 1e-12 for w, a in zip(worst, curve)), f"worst above {attack}"


@pytest.mark.parametrize("recipe", ["binary", "fine"])
def test_mnist5v5_heads(mnist_records: dict[str, Record], recipe: str) -> None:
    rec = mnist_records[recipe]
    assert rec.n_eval == N_EVAL and rec.attacks == ["analytic", "pgd", "deepfool"]
    assert rec.clean_accuracy >= 0.95
    assert rec.radii[-1] == 2.0 and len(rec.radii) == 21
    check_curves(rec)
    assert rec.fa_score is not None and 0.0 <= rec.fa_score <= 1.0
    values = rec.cosine_matrix["values"]
    assert len(values) == (30 if recipe == "binary" else 10) and all(len(row) == 10 for row in values)
    assert all(-1.0 <= v <= 1.0 for row in values for v in row)
    assert rec.data_info["data_subset"] is False and rec.data_info["n_train"] == 60000
    # the attacks do break points within the grid (pixel-space L2 up to 2.0 on MNIST)
    assert rec.robust_accuracy["worst"]["2"] < rec.clean_accuracy


def test_mnist5v5_binary_averages_more_than_fine(mnist_records: dict[str, Record]) -> None:
    """The paper's contrast on real data: binary-label neurons average features, fine-label ones less."""
    binary, fine = mnist_records["binary"].fa_score, mnist_records["fine"].fa_score
    assert binary is not None and fine is not None and binary > fine + 0.1


def test_cifar5v5_cnn_cache_reuse(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(store.OFFLINE_ENV, "1")
    common = dict(task="cifar5v5-smallcnn", n_eval=60, attacks=ATTACKS, data_dir=str(data_dir),
                  cache_dir=str(tmp_path / "cache"),
                  overrides=[("task.n_train", "1500"), ("backbone_epochs", "1"), ("backbone_width", "8"),
                             ("steps", "300"), ("pgd.steps", "10")])
    recs = {r: evaluate(RunConfig(recipe=r, **common), out_dir=tmp_path / "out")[0]  # type: ignore[arg-type]
            for r in ("fine", "binary")}
    first, second = recs["fine"].model_info["backbone"], recs["binary"].model_info["backbone"]
    assert first["name"] == "cnn" and first["cache"] == "miss" and first["features_cache"] == "miss"
    assert second["cache"] == "hit" and second["features_cache"] == "hit" and second["key"] == first["key"]
    assert "train: backbone cnn (train)" in recs["fine"].timings
    assert "train: backbone cnn (load)" in recs["binary"].timings
    assert "train: backbone cnn (train)" not in recs["binary"].timings
    assert "train: extract features" not in recs["binary"].timings
    for rec in recs.values():
        check_curves(rec)
        assert rec.data_info["data_subset"] is True and rec.data_info["n_train_available"] == 8068
        assert "NOTE: data subset (1500 train / 1017 test)" in format_record(rec)
        assert rec.fa_score is None or not math.isnan(rec.fa_score)
