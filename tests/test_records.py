"""Records: stable keys, atomic writes, reuse lookup."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Iterator

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


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """A blocking call (an ``open`` of a FIFO without a writer) raises TimeoutError after ``seconds``."""
    def expire(*_: object) -> None:
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_a_fifo_a_device_or_a_huge_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """A FIFO (before: ``fabench audit`` blocked forever), a device (``/dev/zero`` took all memory)
    or a file above MAX_RECORD_BYTES (a sparse one here: nothing on disk) is one ConfigError naming
    it, before anything is read; every reader of a record file shares the check."""
    from fabench import leaderboard

    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    big = tmp_path / "big.json"
    with open(big, "wb") as fh:
        fh.truncate(records.MAX_RECORD_BYTES + 1)
    cases = {fifo: "is a FIFO, not a record file", Path("/dev/null"): "is a character device",
             tmp_path: "is a directory", big: f"too large for a record file ({records.MAX_RECORD_BYTES + 1} bytes"}
    for path, words in cases.items():
        for read in (records.read_record_text, records.read_record, leaderboard.load_record):
            with deadline(10), pytest.raises(ConfigError) as err:
                read(path)
            assert str(err.value).startswith(repr(str(path))) and words in str(err.value), str(err.value)


def test_audit_of_a_fifo_and_a_fifo_audit_beside_a_record_do_not_block(tmp_path: Path, capsys) -> None:
    """``fabench audit FIFO`` is one error line (before: it hung); an ``.audit`` beside a record that
    is a FIFO is one warning of the leaderboard, which shows the record unaudited."""
    from fabench.cli import main
    from test_leaderboard import make_record

    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with deadline(30):
        assert main(["audit", str(fifo), "--strong", "fab", "-q"]) == 2
    assert capsys.readouterr().err == f"fabench: error: {str(fifo)!r} is a FIFO, not a record file\n"
    res = tmp_path / "res"
    path = records.write_record(make_record(), res)
    os.mkfifo(path.with_suffix(".audit"))
    with deadline(30):
        assert main(["leaderboard", "--results", str(res)]) == 0
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert line.startswith("fabench: warning: ") and "seed0-" in line and "not a readable audit" in line, line
    assert "| binary   | 1 (0)   |" in captured.out
