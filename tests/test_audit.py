"""``fabench audit``: rebuilds a record's model, runs the strong suite, writes <record>.audit."""

from __future__ import annotations

import json
from pathlib import Path

from fabench import leaderboard
from fabench.cli import main

SMALL = ["--task", "synthetic", "--recipe", "binary", "--set", "d=60", "--set", "n_train=60",
         "--set", "n_test=30", "--set", "recipe.steps=60", "--epsilons", "0:8:1"]


def test_audit_writes_a_keyed_result_that_the_leaderboard_shows(tmp_path: Path, capsys) -> None:
    out = tmp_path / "results"
    assert main(["evaluate", *SMALL, "--out", str(out), "-q", "--attacks", "analytic,pgd",
                 "--set", "pgd.steps=3"]) == 0
    (record,) = [p for p in out.rglob("*.json")]
    capsys.readouterr()
    assert main(["audit", str(record), "--n-eval", "20", "--strong", "apgd,exact", "-q",
                 "--strong-set", "apgd.steps=10", "--strong-set", "apgd.restarts=1"]) == 0
    text = capsys.readouterr().out
    audit_file = record.with_name(record.stem + ".audit")
    result = json.loads(audit_file.read_text())
    rec = json.loads(record.read_text())
    assert result["record_key"] == rec["key"] and result["n_eval"] == 20
    # exact is the true minimum of this head: the strong worst case is never above the protocol's
    assert all(g >= -1e-9 for g in result["gaps"].values())
    # a 3-step PGD and the averaged direction miss points that exact breaks somewhere on the grid
    assert result["max_gap"] > 0 and "beat the protocol" in text
    board = leaderboard.load(out)
    md = leaderboard.render(board)
    assert f"{result['max_gap']:.3f} (1/1)" in md
    # the same record found by configuration instead of by path
    assert main(["audit", *SMALL, "--out", str(out), "--attacks", "analytic,pgd", "--set", "pgd.steps=3",
                 "--n-eval", "10", "--strong", "exact", "-q"]) == 0
