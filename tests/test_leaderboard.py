"""Leaderboard: grouping, mean ± std over seeds, ordering, formats, exact regeneration."""

from __future__ import annotations

import copy
import io
import json
import math
import random
import shutil
import statistics
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from fabench import leaderboard
from fabench.cli import main
from fabench.records import SCHEMA_VERSION, Record, config_key, radius_key, write_record

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "leaderboard"


def make_record(task: str = "synthetic", recipe: str = "binary", seed: int = 0, *, clean: float = 1.0,
                robust: dict[float, float] | None = None, dist: float | None = 17.5, fa: float | None = 0.99,
                headline: tuple[float, ...] = (10.0, 20.0), lr: float = 0.001, subset: bool = False,
                attacks: tuple[str, ...] = ("analytic", "pgd"), source: str = "fabench") -> Record:
    """A record with chosen numbers; its config (and key) differ only where the arguments do."""
    robust = robust if robust is not None else {0.0: clean, 10.0: 0.9, 20.0: 0.1}
    radii = sorted(robust)
    config: dict[str, Any] = {
        "schema": SCHEMA_VERSION, "task": task, "task_params": {"d": 64, "k": 10}, "recipe": recipe,
        "recipe_params": {"lr": lr, "m": 5}, "attacks": {a: {} for a in attacks}, "radii": radii,
        "n_eval": 0, "seed": seed, "sources": {"task": "fabench", "recipe": source},
    }
    worst = {radius_key(r): v for r, v in robust.items()}
    return Record(
        task=task, recipe=recipe, seed=seed, config=config, clean_accuracy=clean,
        robust_accuracy={**{a: dict(worst) for a in attacks}, "worst": worst},
        median_min_distance=dist, median_distance={"worst": dist}, fa_score=fa,
        cosine_matrix={"units": ["w+0", "w-0"], "unit_positive": [True, False], "features": ["a", "b"],
                       "positive_features": [True, False], "values": [[0.9, -0.1], [-0.1, 0.8]]},
        n_eval=100, attacks=list(attacks), radii=radii, headline_radii=list(headline),
        data_info={"n_train": 100, "n_test": 100, **({"data_subset": True} if subset else {})},
        sources={"task": "fabench", "recipe": source}, created="2026-01-01T00:00:00+00:00",
        key=config_key(config),
    )


def three_seeds() -> list[Record]:
    return [
        make_record(seed=0, clean=0.8, robust={0.0: 0.8, 10.0: 0.5, 20.0: 0.1}, dist=10.0, fa=0.9),
        make_record(seed=1, clean=0.9, robust={0.0: 0.9, 10.0: 0.6, 20.0: 0.2}, dist=12.0, fa=0.95),
        make_record(seed=2, clean=1.0, robust={0.0: 1.0, 10.0: 0.9, 20.0: 0.0}, dist=14.0, fa=1.0),
    ]


def test_mean_and_sample_std_over_seeds() -> None:
    board = leaderboard.build(three_seeds())
    (table,) = board.tables
    assert table.task == "synthetic" and table.headline_radii == (10.0, 20.0)
    assert [g.seeds for g in table.groups] == [(0, 1, 2)]
    mean, std = table.stat(0, "clean_accuracy")
    assert mean == pytest.approx(0.9) and std == pytest.approx(statistics.stdev([0.8, 0.9, 1.0]))
    mean, std = table.stat(0, leaderboard.robust_column(10.0))
    assert mean == pytest.approx(statistics.mean([0.5, 0.6, 0.9]))
    assert std == pytest.approx(statistics.stdev([0.5, 0.6, 0.9]))
    assert table.stat(0, "median_min_distance") == pytest.approx((12.0, 2.0))
    (row,) = leaderboard.rows(board)
    assert row["n_seeds"] == 3 and row["seeds"] == [0, 1, 2]
    assert row["clean_accuracy_mean"] == pytest.approx(0.9)
    assert row["robust_accuracy_20_mean"] == pytest.approx(0.1)
    assert row["robust_accuracy_20_std"] == pytest.approx(0.1)
    md = leaderboard.render(board)
    assert "0.900 ± 0.100" in md  # clean accuracy
    assert "0.667 ± 0.208" in md  # robust accuracy at 10
    assert "12.00 ± 2.00" in md  # median minimal distance
    assert "3 (0, 1, 2)" in md and "analytic, pgd" in md


def test_one_seed_has_no_std_and_missing_values_are_na() -> None:
    rec = make_record(fa=None, dist=None)
    table = leaderboard.build([rec]).tables[0]
    assert math.isnan(table.stat(0, "clean_accuracy")[1])
    assert math.isnan(table.stat(0, "fa_score")[0])
    md = leaderboard.render(leaderboard.build([rec]))
    (row_line,) = [line for line in md.splitlines() if line.startswith("| binary")]
    cells = [c.strip() for c in row_line.strip("|").split("|")]
    assert cells[:3] == ["binary", "1 (0)", "1.000"]
    assert "±" not in row_line and cells[-7:-5] == ["n/a", "n/a"] and cells[-5] == "yes" and cells[-3] == "no"
    (row,) = leaderboard.rows(leaderboard.build([rec]))
    assert row["clean_accuracy_std"] is None and row["fa_score_mean"] is None


def test_only_records_sharing_the_config_except_seed_are_aggregated() -> None:
    records = three_seeds() + [make_record(seed=0, lr=0.01, clean=0.5), make_record(recipe="fine", seed=4)]
    board = leaderboard.build(records)
    (table,) = board.tables
    assert [(g.recipe, g.seeds) for g in table.groups][2] == ("fine", (4,))
    binary = [g for g in table.groups if g.recipe == "binary"]
    assert sorted(len(g.seeds) for g in binary) == [1, 3]
    # The config id is the key of the configuration without the seed: same for every seed.
    assert len({leaderboard.group_key(r) for r in three_seeds()}) == 1
    assert binary[0].config_id != binary[1].config_id


def test_duplicate_copies_of_a_record_count_once(tmp_path: Path) -> None:
    for rec in three_seeds():
        write_record(rec, tmp_path / "a")
        write_record(rec, tmp_path / "b")
    board = leaderboard.load(tmp_path)
    assert board.tables[0].groups[0].seeds == (0, 1, 2)


def test_ordering_is_deterministic(tmp_path: Path) -> None:
    records = three_seeds() + [make_record(task="mnist", recipe=r, seed=s) for r in ("robust", "fine", "binary")
                               for s in (1, 0)] + [make_record(recipe="binary-adam", source="example-plugin")]
    outputs = set()
    for i in range(3):
        shuffled = copy.deepcopy(records)
        random.Random(i).shuffle(shuffled)
        for rec in shuffled:
            write_record(rec, tmp_path / f"run{i}" / f"dir{random.Random(i).randint(0, 9)}")
        board = leaderboard.load(tmp_path / f"run{i}")
        outputs.add(tuple(leaderboard.render(board, fmt=f) for f in leaderboard.FORMATS))
    assert len(outputs) == 1
    board = leaderboard.build(records)
    assert [t.task for t in board.tables] == ["mnist", "synthetic"]
    assert [g.recipe for g in board.tables[0].groups] == ["binary", "fine", "robust"]
    assert [g.recipe for g in board.tables[1].groups] == ["binary", "binary-adam"]
    assert "binary-adam (example-plugin)" in leaderboard.render(board)


def test_data_subset_is_marked() -> None:
    board = leaderboard.build([make_record(task="cifar", subset=True), make_record(task="synthetic")])
    md = leaderboard.render(board)
    cifar, synthetic = md.split("## cifar")[1].split("## synthetic")
    assert "**Data subset:**" in cifar and "**subset** (100 train / 100 test)" in cifar
    assert "subset" not in synthetic
    data = json.loads(leaderboard.render(board, fmt="json"))
    assert [r["data_subset"] for t in data["tasks"] for r in t["rows"]] == [True, False]


def test_csv_and_json_hold_numbers() -> None:
    board = leaderboard.build(three_seeds() + [make_record(recipe="fine")])
    frame = pd.read_csv(io.StringIO(leaderboard.render(board, fmt="csv")))
    assert list(frame["recipe"]) == ["binary", "fine"]
    assert frame.loc[0, "clean_accuracy_mean"] == pytest.approx(0.9)
    assert frame.loc[0, "robust_accuracy_10_std"] == pytest.approx(statistics.stdev([0.5, 0.6, 0.9]), abs=1e-6)
    assert frame.loc[0, "seeds"] == "0;1;2" and frame.loc[0, "attacks"] == "analytic;pgd"
    data = json.loads(leaderboard.render(board, fmt="json"))
    assert data["tasks"][0]["headline_radii"] == [10.0, 20.0]
    assert data["tasks"][0]["rows"][0]["median_min_distance_std"] == pytest.approx(2.0)


def test_cli_leaderboard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for rec in three_seeds():
        write_record(rec, tmp_path / "res")
    out = io.StringIO()
    assert main(["leaderboard", "--results", str(tmp_path / "res"), "--format", "csv"], out=out) == 0
    assert out.getvalue().startswith("task,recipe,")
    out = io.StringIO()
    assert main(["leaderboard", "--results", str(tmp_path / "res"), "--out", str(tmp_path / "lb")], out=out) == 0
    names = sorted(p.relative_to(tmp_path / "lb").as_posix() for p in (tmp_path / "lb").rglob("*") if p.is_file())
    assert names == ["README.md", "figures/cosine-synthetic-binary.png", "figures/cosine-synthetic-binary.svg",
                     "figures/robust_accuracy.png", "figures/robust_accuracy.svg", "leaderboard.csv",
                     "leaderboard.json"]
    readme = (tmp_path / "lb" / "README.md").read_text()
    assert "![Robust accuracy" in readme and "(figures/robust_accuracy.svg)" in readme
    assert "(figures/cosine-synthetic-binary.svg)" in readme
    # Errors are one line and exit status 2.
    (tmp_path / "empty").mkdir()
    assert main(["leaderboard", "--results", str(tmp_path / "empty")], out=io.StringIO()) == 2
    assert main(["leaderboard", "--results", str(tmp_path / "res"), "--format", "xml"], out=io.StringIO()) == 2
    assert "unknown xml" in capsys.readouterr().err


def test_publish_removes_stale_figures(tmp_path: Path) -> None:
    write_record(make_record(recipe="fine"), tmp_path / "res")
    board = leaderboard.load(tmp_path / "res")
    leaderboard.publish(board, tmp_path / "lb")
    (tmp_path / "lb" / "figures" / "cosine-old.svg").write_text("<svg/>")
    leaderboard.publish(board, tmp_path / "lb")
    assert not (tmp_path / "lb" / "figures" / "cosine-old.svg").exists()


def published_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "records" not in p.relative_to(root).parts}


@pytest.mark.skipif(not (PUBLISHED / "records").is_dir(), reason="no published records in leaderboard/records")
def test_published_leaderboard_regenerates_exactly(tmp_path: Path) -> None:
    """`fabench leaderboard --results leaderboard/records --out leaderboard` is what was committed."""
    out = tmp_path / "leaderboard"
    shutil.copytree(PUBLISHED / "records", out / "records")
    shutil.copy(PUBLISHED / "sweep.toml", out / "sweep.toml")  # the sweep that produced the records
    assert main(["leaderboard", "--results", str(out / "records"), "--out", str(out)], out=io.StringIO()) == 0
    committed, regenerated = published_files(PUBLISHED), published_files(out)
    assert sorted(committed) == sorted(regenerated)
    differing = [name for name in committed if committed[name] != regenerated[name]]
    assert not differing, f"leaderboard/ differs from its records in {differing}; run scripts/publish_leaderboard.sh"


def test_readme_results_tables_are_the_published_ones() -> None:
    """README.md's Results tables (between `<!-- results:TASK -->` markers) equal leaderboard/README.md's."""
    from _scripts import load_script

    root = PUBLISHED.parent
    mod = load_script("readme_results")
    readme = (root / "README.md").read_text()
    tables = mod.leaderboard_tables((PUBLISHED / "README.md").read_text())
    assert {"synthetic", "mnist5v5", "cifar5v5"} <= set(tables)
    assert readme.count("<!-- results:") >= 3
    _, changed = mod.sync(readme, tables)
    assert not changed, f"README tables differ from leaderboard/README.md for {changed}: python scripts/readme_results.py"


def test_converged_column_marks_a_fixed_step_budget() -> None:
    """'head converged' is yes, or no with the seeds; a fixed budget (no stop_tol) says its T."""
    import dataclasses

    from fabench.leaderboard import Group, _converged_label

    def rec(seed: int, warn: bool, stop_tol: float) -> Record:
        r = make_record(seed=seed)
        cfg = {**r.config, "recipe_params": {**r.config["recipe_params"], "steps": 100, "stop_tol": stop_tol}}
        return dataclasses.replace(r, config=cfg, model_info={"warnings": ["not converged"]} if warn else {})

    def label(*recs: Record) -> str:
        return _converged_label(Group("synthetic", "binary", "c", tuple(recs)))

    assert label(rec(0, False, 0.0), rec(1, False, 0.0)) == "yes"
    assert label(rec(0, True, 0.0), rec(1, False, 0.0)) == "**no** (1/2 seeds; fixed T=100)"
    assert label(rec(0, True, 0.001), rec(1, True, 0.001)) == "**no** (2/2 seeds)"
