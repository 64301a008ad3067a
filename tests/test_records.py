"""Records: stable keys, atomic writes, reuse lookup."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fabench import records
from fabench.errors import ConfigError


def make(key: str = "k" * 64, **over) -> records.Record:
    base = dict(task="t", recipe="r", seed=0, config={"a": 1}, clean_accuracy=1.0,
                robust_accuracy={"worst": {"0": 1.0}}, median_min_distance=float("inf"),
                median_distance={"worst": None}, fa_score=0.5, cosine_matrix={}, n_eval=3,
                attacks=["analytic"], radii=[0.0], headline_radii=[0.0], key=key)
    base.update(over)
    return records.Record(**base)


def test_config_key_is_canonical() -> None:
    assert records.config_key({"a": 1, "b": [1.0, 2]}) == records.config_key({"b": [1.0, 2], "a": 1})
    assert records.config_key({"a": 1}) != records.config_key({"a": 2})


def test_write_read_roundtrip_and_inf_as_null(tmp_path: Path) -> None:
    path = records.write_record(make(), tmp_path)
    obj = json.loads(path.read_text())
    assert obj["median_min_distance"] is None and obj["schema"] == records.SCHEMA_VERSION
    assert records.read_record(path).fa_score == 0.5
    assert records.find_record(tmp_path, "t", "r", 0, "k" * 64) is not None
    assert records.find_record(tmp_path, "t", "r", 1, "k" * 64) is None


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        records.write_record(make(), tmp_path)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_unwritable_directory_is_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot write results"):
        records.check_writable(blocker / "sub")


def test_not_a_record_is_config_error(tmp_path: Path) -> None:
    p = tmp_path / "x.json"
    p.write_text('{"hello": 1}')
    with pytest.raises(ConfigError):
        records.read_record(p)
    with pytest.warns(records.RecordWarning, match="x.json.*not a fabench record"):
        assert list(records.iter_records(tmp_path)) == []


def test_record_paths_are_the_visible_json_files_sorted(tmp_path: Path) -> None:
    """The walk both readers share (records.iter_records, leaderboard.iter_trusted): nothing is read."""
    for name in ("b/seed1-x.json", "a/seed0-y.json", "a/.hidden.json", "a/notes.txt", "a/dir.json/z.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("not json")
    assert [p.relative_to(tmp_path).as_posix() for p in records.iter_record_paths(tmp_path)] == [
        "a/seed0-y.json", "b/seed1-x.json"]


def test_radius_keys() -> None:
    assert [records.radius_key(r) for r in (0.0, 10.0, 0.4, 0.08, 1.2)] == ["0", "10", "0.4", "0.08", "1.2"]
