"""The paper's real-data setting: GD heads on a frozen backbone, convergence info, feature space.

Small real subsets (MNIST: 2000 training digits, a 1-epoch CNN) keep this well under a minute; the
shipped settings (60000 digits, 3 epochs) are measured by ``scripts/backbone_timing.py`` and the
runs in the README, not here.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from _realdata import make_data_dir
from fabench.cli import format_record
from fabench.data import store
from fabench.evaluation import FEATURE_SPACE_FRACTIONS, RunConfig, evaluate, resolve
from fabench.records import Record, radius_key
from fabench.recipes.training import convergence

pytestmark = pytest.mark.realdata

SMALL = [("task.n_train", "2000"), ("backbone_epochs", "1"), ("backbone_width", "8"), ("steps", "400")]
ATTACKS = ("analytic", "pairwise", "deepfool")


def small_records(tmp_path_factory: pytest.TempPathFactory, overrides: list[tuple[str, str]]) -> dict[str, Record]:
    """The binary and fine heads of mnist5v5 on the small setting (offline, a fresh cache)."""
    data_dir = make_data_dir(tmp_path_factory.mktemp("data"), cifar=False)
    out, cache = tmp_path_factory.mktemp("out"), tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(store.OFFLINE_ENV, "1")
        return {
            recipe: evaluate(RunConfig(task="mnist5v5", recipe=recipe, n_eval=80, attacks=ATTACKS, overrides=overrides,
                                       data_dir=str(data_dir), cache_dir=str(cache)), out_dir=out)[0]
            for recipe in ("binary", "fine")
        }


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Record]:
    return small_records(tmp_path_factory, SMALL)


def test_default_tasks_are_the_paper_setting() -> None:
    """mnist5v5 and cifar5v5 put full-batch GD heads on a trained backbone; the old settings keep their names."""
    for task in ("mnist5v5", "cifar5v5"):
        for recipe in ("binary", "fine"):
            p = resolve(RunConfig(task=task, recipe=recipe)).recipe_params
            assert p["backbone"] != "pixels" and p["optimizer"] == "gd" and p["batch_size"] == 0
            assert p["steps"] >= 1000
    assert resolve(RunConfig(task="mnist5v5-pixels", recipe="fine")).recipe_params["backbone"] == "pixels"
    old = resolve(RunConfig(task="cifar5v5-smallcnn", recipe="fine")).recipe_params
    assert old["backbone"] == "cnn" and old["optimizer"] == "adam" and old["backbone_width"] == 16
    for name in ("cifar5v5-resnet18", "cifar5v5-robustbench-standard", "cifar5v5-robustbench-l2"):
        res = resolve(RunConfig(task=name, recipe="binary"))
        assert res.task_params["positive_classes"] == (0, 1, 2, 3, 4) and res.recipe_params["optimizer"] == "gd"
    assert resolve(RunConfig(task="cifar5v5-resnet18", recipe="fine")).recipe_params["backbone"] == "resnet18"
    assert resolve(RunConfig(task="cifar5v5-robustbench-l2", recipe="fine")).recipe_params["backbone"].startswith(
        "robustbench:")


def test_gd_heads_on_cnn_report_convergence(records: dict[str, Record]) -> None:
    for recipe, rec in records.items():
        bb, tr = rec.model_info["backbone"], rec.model_info["training"]
        assert bb["name"] == "cnn" and bb["test_accuracy"] > 0.7  # ten-class, 1 epoch on 2000 digits
        assert rec.config["recipe_params"]["optimizer"] == "gd" and 100 <= tr["steps"] <= 400  # convergence stop
        start = math.log(2) if recipe == "binary" else math.log(10)  # the loss at a near-zero init
        assert tr["final_loss"] == rec.model_info["final_loss"] < 0.8 * start
        assert tr["train_accuracy"] > 0.7 and rec.clean_accuracy > 0.7
        assert tr["probe_accuracy"] == bb["test_accuracy"] and 0.0 <= tr["late_decrease"] <= 0.1
        # the verdict, the warning in the record and the one the report prints agree
        assert tr["converged"] == (tr["warning"] is None) == ("warnings" not in rec.model_info)
        assert ("WARNING: head training has not converged" in format_record(rec)) == (not tr["converged"])


def test_feature_space_subrecord(records: dict[str, Record]) -> None:
    for rec in records.values():
        fs = rec.feature_space
        # the head sees the same features of the same points: same clean accuracy
        assert fs["n_eval"] == rec.n_eval == 80
        assert fs["clean_accuracy"] == pytest.approx(rec.clean_accuracy, abs=1e-9)
        scale = fs["scale"]
        assert scale > 0 and fs["radii"] == [round(f * scale, 6) for f in FEATURE_SPACE_FRACTIONS]
        worst = [fs["robust_accuracy"]["worst"][radius_key(r)] for r in fs["radii"]]
        assert worst[0] == pytest.approx(rec.clean_accuracy)
        assert all(a >= b for a, b in zip(worst, worst[1:]))
        for attack in ATTACKS:
            curve = [fs["robust_accuracy"][attack][radius_key(r)] for r in fs["radii"]]
            assert all(w <= a + 1e-12 for w, a in zip(worst, curve))
        # the pairwise line search from mu_j towards mu_j' flips every point within one class-mean distance
        assert fs["robust_accuracy"]["pairwise"][radius_key(fs["radii"][-1])] < 0.2
        assert 0 < fs["median_min_distance"] < scale
        text = format_record(rec)
        assert "feature space (head alone" in text


def test_attack_batch_follows_the_backbone_activations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the CPU the attack batch keeps the model's largest activation (here the first conv stage of
    a width-8 CNN on 28 x 28 digits: 8 x 28 x 28 floats per point) within the budget. With a budget
    that holds 50 such points, the 80 points are attacked in batches of 50, and the head alone
    (feature space, 128 floats per point) in the CPU's usual batch."""
    from fabench import device

    monkeypatch.setattr(device, "CPU_ACTIVATION_BUDGET", 50 * 4 * 8 * 28 * 28 + 4 * 100)
    monkeypatch.setenv(store.OFFLINE_ENV, "1")
    data_dir = make_data_dir(tmp_path / "data", cifar=False)
    rec, _, _ = evaluate(RunConfig(task="mnist5v5", recipe="binary", n_eval=80, attacks=("analytic",),
                                   overrides=SMALL, data_dir=str(data_dir), cache_dir=str(tmp_path / "cache")),
                         out_dir=tmp_path / "out")
    assert rec.runtime["batch_size"] == 50
    assert rec.runtime["feature_space_batch_size"] == device.CPU_BATCH
    assert rec.n_eval == 80 and rec.feature_space["n_eval"] == 80


def test_convergence_criterion() -> None:
    """Flat tail: converged; a straight line, or training accuracy under the backbone's: a warning."""
    plateau = [1.0 / (1 + 0.5 * t) + 0.1 for t in range(200)]
    ok = convergence([0.7 * math.exp(-t / 10) + 0.05 for t in range(200)], train_accuracy=0.99, probe_accuracy=0.98)
    assert ok["converged"] is True and ok["warning"] is None
    line = convergence([0.7 - 0.003 * t for t in range(200)], train_accuracy=0.99)
    assert line["converged"] is False and "last 10% of the 200 steps" in str(line["warning"])
    assert line["late_decrease"] == pytest.approx(0.1, abs=0.01)
    low = convergence([0.7 * math.exp(-t / 10) for t in range(200)], train_accuracy=0.90, probe_accuracy=0.99)
    assert low["converged"] is False and "below the backbone's own test accuracy 0.990" in str(low["warning"])
    assert convergence(plateau, train_accuracy=1.0)["late_decrease"] < 0.05


def test_unconverged_head_warns_in_record_and_report(tmp_path: Path) -> None:
    """Too few GD steps on the synthetic task: the record carries the warning and the CLI prints it."""
    rec = evaluate(RunConfig(task="synthetic", recipe="binary", n_eval=20, attacks=("analytic",),
                             overrides=[("d", "200"), ("steps", "30"), ("lr", "0.0001")]),
                   out_dir=tmp_path)[0]
    assert rec.model_info["training"]["converged"] is False
    assert rec.model_info["warnings"] and "WARNING: head training has not converged" in format_record(rec)
    assert rec.feature_space == {}  # no backbone: pixel space is feature space
    assert torch.isfinite(torch.tensor(rec.model_info["training"]["final_loss"]))


@pytest.fixture(scope="module")
def plain_gd_records(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Record]:
    """The same small setting with the paper's optimiser: plain full-batch GD on the raw features."""
    return small_records(tmp_path_factory, SMALL + [("standardize", "false"), ("lr", "0.5")])


def test_fine_head_more_robust_in_feature_space(plain_gd_records: dict[str, Record],
                                                records: dict[str, Record]) -> None:
    """The paper's contrast where its theory applies, under the paper's plain GD: the binary head
    averages its features and the fine head's survive larger radii in feature space (measured here:
    2.4x, FA 0.97 vs 0.12). Under the default standardised GD (a diagonal preconditioner) the fine
    head still averages far less, but the distance contrast is much weaker on this small setting
    (about 1.0x; 1.4x on the full mnist5v5), which the README states."""
    binary, fine = plain_gd_records["binary"], plain_gd_records["fine"]
    assert fine.feature_space["median_min_distance"] > 1.5 * binary.feature_space["median_min_distance"]
    assert binary.fa_score is not None and fine.fa_score is not None
    assert binary.fa_score > fine.fa_score + 0.5
    std_binary, std_fine = records["binary"], records["fine"]
    assert std_binary.fa_score is not None and std_fine.fa_score is not None
    assert std_binary.fa_score > std_fine.fa_score + 0.2
