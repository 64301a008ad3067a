"""The bad-input corpus (tests/badinputs.py): every case ends in one stderr line, the right exit
status and no record; records and plugins that are bad are skipped with one warning line.

Most cases run in-process through ``fabench.cli.main``; a representative few run as real
subprocesses (``python -m fabench.cli``), which also proves that nothing escapes ``main``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import badinputs  # noqa: E402

SUBPROCESS = ["set-analytic.scan_points=0", "epsilons-0:1000000:0.001", "taskfile-name-dotdot",
              "leaderboard-record-null", "plugin-attack-non_monotone", "plugin-sys-exit-list",
              "tasks-path-huge-grid-list"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    badinputs.prepare(root, badinputs.make_good_record(root / "good-run"))
    return root


def test_corpus_is_large_and_covers_every_category() -> None:
    ids = [c.id for c in badinputs.CASES]
    assert len(ids) == len(set(ids)) >= 95
    for prefix in ("set-", "epsilons-", "seed-", "taskfile-", "tasks-path-", "leaderboard-record-",
                   "plot-record-", "plugin-attack-", "plugin-recipe", "plugin-task", "plugin-sys-exit", "mnist-"):
        assert any(i.startswith(prefix) for i in ids), prefix


@pytest.mark.parametrize("case", badinputs.CASES, ids=lambda c: c.id)
def test_bad_input_in_process(case: badinputs.Case, corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if case.id.startswith("mnist-") and not (corpus / "mnist").is_dir():
        pytest.skip("no MNIST files to unpack")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    kind, err = badinputs.run_inprocess(case, corpus)
    assert kind == "clean", err


@pytest.mark.parametrize("case_id", SUBPROCESS)
def test_bad_input_subprocess(case_id: str, corpus: Path) -> None:
    (case,) = [c for c in badinputs.CASES if c.id == case_id]
    kind, err = badinputs.run_subprocess(case, corpus, timeout=120)
    assert kind == "clean", err
