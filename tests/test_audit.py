"""``fabench audit``: rebuilds a record's model, runs the strong suite, writes <record>.audit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fabench import leaderboard
from fabench.cli import main
from fabench.records import RecordWarning

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
    # strong columns are cumulative in run order (exact, a minimisation attack, before apgd): they
    # never increase left to right, and the last one is the strong worst case
    assert list(result["strong"]) == ["exact", "apgd", "worst"]
    for r in result["gaps"]:
        col = [result["strong"][name][r] for name in result["strong"]]
        assert all(a >= b - 1e-12 for a, b in zip(col, col[1:])) and col[-2] == col[-1]
    board = leaderboard.load(out)
    md = leaderboard.render(board)
    assert f"{result['max_gap']:.3f} (1/1)" in md
    shown = f"{result['max_gap']:.3f} (1/1)"
    # the audit is bound to the record's numbers, not only its key: a rerun that changes only the
    # timings, provenance and runtime keeps it; other numbers under the same key drop it
    rec["timings"] = {k: v + 1.0 for k, v in rec["timings"].items()}
    rec["created"], rec["runtime"] = "2000-01-01T00:00:00+00:00", {**rec["runtime"], "threads": 99}
    rec["versions"] = {**rec["versions"], "platform": "another kernel"}
    if isinstance(rec.get("feature_space"), dict):
        rec["feature_space"]["timings"] = {"attack pgd": 123.0}
    record.write_text(json.dumps(rec))
    assert shown in leaderboard.render(leaderboard.load(out))
    first = next(iter(rec["robust_accuracy"]["worst"]))
    value = rec["robust_accuracy"]["worst"][first]
    rec["robust_accuracy"]["worst"][first] = value - 0.01
    record.write_text(json.dumps(rec))
    with pytest.warns(RecordWarning, match="is not an audit of this record's numbers"):
        assert shown not in leaderboard.render(leaderboard.load(out))
    rec["robust_accuracy"]["worst"][first] = value
    record.write_text(json.dumps(rec))
    assert shown in leaderboard.render(leaderboard.load(out))
    # an audit without the digest (written before fabench recorded it) cannot be matched: not shown
    legacy = {k: v for k, v in result.items() if k != "record_digest"}
    audit_file.write_text(json.dumps(legacy))
    with pytest.warns(RecordWarning, match="written before audits were bound"):
        assert shown not in leaderboard.render(leaderboard.load(out))
    audit_file.write_text(json.dumps(result))
    # the same record found by configuration instead of by path
    assert main(["audit", *SMALL, "--out", str(out), "--attacks", "analytic,pgd", "--set", "pgd.steps=3",
                 "--n-eval", "10", "--strong", "exact", "-q"]) == 0


def test_strong_breaks_walks_down_only_below_what_is_already_broken() -> None:
    """A fake fixed-radius attack that breaks point i iff the radius is >= t_i: the walk down finds
    every break below the protocol's (and none above), attacking each point only where it is open."""
    import torch

    from fabench.audit import strong_breaks
    from fabench.models import BinaryHead, Classifier
    from fabench.protocol import AttackSpec
    from fabench.types import AttackOutcome

    radii = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    t = torch.tensor([2.5, 0.5, 10.0, 4.0])  # true minimal distances
    seen: list[tuple[int, float]] = []

    class Fake:
        minimization = False

        def run(self, model, x, y, rad, *, data, params, seed):
            i = x[:, 0].long()
            seen.extend((int(v), float(rad[0])) for v in i)
            broken = torch.tensor([float(r) for r in rad])[:, None] >= t[i][None, :]
            return AttackOutcome(tuple(rad), broken, torch.where(broken[0], t[i], torch.tensor(float("inf"))))

    head = BinaryHead(2, 1, init_std=0.0, bias=False)
    with torch.no_grad():
        head.weight[0, 0] = torch.tensor([0.0, 1.0])
        head.weight[1, 0] = torch.tensor([0.0, -1.0])
    model = Classifier(head)
    x = torch.stack([torch.arange(4.0), torch.ones(4)], dim=1)
    y = torch.ones(4, dtype=torch.long)

    class Data:
        bounds = (float("-inf"), float("inf"))

    done = torch.zeros(len(radii), 4, dtype=torch.bool)
    done[5:, 0] = True  # the protocol broke point 0 at 5, point 3 at 4; points 1, 2 unbroken
    done[4:, 3] = True
    found, calls = strong_breaks(model, Data(), AttackSpec("fake", Fake(), {}), x, y, torch.ones(4, dtype=torch.bool),
                                 radii, done, seed=0)
    broken_at = {i: [radii[r] for r in range(len(radii)) if found[r, i]] for i in range(4)}
    assert broken_at == {0: [3.0, 4.0], 1: [1.0, 2.0, 3.0, 4.0, 5.0], 2: [], 3: []}
    # point 0 from 4 down to 2 (fails), point 1 from 5 down to 1 (0 is never attacked), point 2 once
    # at 5, point 3 once at 3 (it fails)
    assert sorted(seen) == sorted([(0, 4.0), (0, 3.0), (0, 2.0), (1, 5.0), (1, 4.0), (1, 3.0), (1, 2.0), (1, 1.0),
                                   (2, 5.0), (3, 3.0)])
    # one call per (round, radius) group: {4, 5, 3}, {3, 4}, {2, 3}, {2}, {1}
    assert calls == 9
