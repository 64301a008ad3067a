"""scripts/compare_records.py: pairs records by configuration and measures how far they are apart."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import ModuleType

import pytest

from _scripts import load_script
from fabench.evaluation import RunConfig, evaluate
from fabench.records import write_record

SMALL = (("d", 48), ("n_train", 80), ("n_test", 40))


def _script() -> ModuleType:
    return load_script("compare_records")


def test_compare_records_pairs_by_key_and_counts_points(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    compare = _script()
    cfg = RunConfig(task="synthetic", recipe="binary", attacks=("analytic",), radii=(0.0, 4.0, 8.0, 12.0),
                    overrides=SMALL, threads=1)
    rec, _, _ = evaluate(cfg, out_dir=tmp_path / "a")
    # the same configuration on another batch size: same key, same numbers
    evaluate(dataclasses.replace(cfg, batch_size=7), out_dir=tmp_path / "b")
    assert compare.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "1 pairs, 0 beyond the tolerance" in capsys.readouterr().out

    # three points more broken at one radius: 3 points apart there, beyond a tolerance of 2
    worst = dict(rec.robust_accuracy["worst"])
    r = next(k for k, v in worst.items() if v >= 3 / rec.n_eval)
    worst[r] -= 3 / rec.n_eval
    changed = dataclasses.replace(rec, robust_accuracy={**rec.robust_accuracy, "worst": worst})
    write_record(changed, tmp_path / "c")
    assert compare.main([str(tmp_path / "a"), str(tmp_path / "c"), "--tol-points", "2"]) == 1
    out = capsys.readouterr().out
    assert "1 beyond the tolerance" in out and f" {r} " in out
    assert compare.main([str(tmp_path / "a"), str(tmp_path / "c"), "--tol-points", "3"]) == 0

    # another configuration has no reference: listed; with nothing compared at all, an error
    evaluate(dataclasses.replace(cfg, seed=1), out_dir=tmp_path / "d")
    assert compare.main([str(tmp_path / "a"), str(tmp_path / "d")]) == 2
    assert "no reference record for synthetic/binary seed 1" in capsys.readouterr().out
    evaluate(dataclasses.replace(cfg, seed=1), out_dir=tmp_path / "a")
    assert compare.main([str(tmp_path / "a"), str(tmp_path / "d")]) == 0
    assert compare.main([str(tmp_path / "missing"), str(tmp_path / "d")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_compare_records_says_whether_the_backbone_is_the_same(tmp_path: Path) -> None:
    compare = _script()
    cfg = RunConfig(task="synthetic", recipe="binary", attacks=("analytic",), radii=(0.0, 4.0),
                    overrides=SMALL, threads=1)
    rec, _, _ = evaluate(cfg, out_dir=tmp_path)
    assert compare._backbone(rec, rec) == "-"  # pixels: no trained backbone
    cpu = dataclasses.replace(rec, model_info={"backbone": {"epoch_losses": [0.3, 0.1], "test_accuracy": 0.99,
                                                            "trained_on": "cpu, torch 2.14.1"}})
    gpu = dataclasses.replace(rec, model_info={"backbone": {"epoch_losses": [0.3, 0.09], "test_accuracy": 0.99,
                                                            "trained_on": "cuda:0 (H100), torch 2.11.0"}})
    assert compare._backbone(cpu, cpu) == "same (cpu, torch 2.14.1 / cpu, torch 2.14.1)"
    assert compare._backbone(cpu, gpu) == "differs (cpu, torch 2.14.1 / cuda:0 (H100), torch 2.11.0)"
    old = dataclasses.replace(gpu, model_info={"backbone": {"epoch_losses": [0.3, 0.1], "test_accuracy": 0.99}})
    assert compare._backbone(cpu, old) == "same (cpu, torch 2.14.1 / ?)"
