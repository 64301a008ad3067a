"""scripts/gpu_checks.sh on the CPU: the stages that need no GPU, and what it hands back in $OUT."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from fabench.evaluation import RunConfig, evaluate

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_checks.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _run(tmp_path: Path, *stages: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable,
           "FABENCH_GPU_RESULTS": str(tmp_path / "results"), "FABENCH_GPU_LOGS": str(tmp_path / "logs")}
    return subprocess.run(["bash", str(SCRIPT), *stages], env=env, capture_output=True, text=True, timeout=120,
                          cwd=SCRIPT.parents[1])


def test_report_stage_packs_logs_and_records_into_out(tmp_path: Path) -> None:
    cfg = RunConfig(task="synthetic", recipe="binary", attacks=("analytic",), radii=(0.0, 4.0, 8.0),
                    overrides=(("d", 48), ("n_train", 80), ("n_test", 40)), threads=1)
    rec, path, _ = evaluate(cfg, out_dir=tmp_path / "results")
    proc = _run(tmp_path, "report")
    assert proc.returncode == 0, proc.stderr
    # the report: one line per record with its device, batch size and slowest stages
    # (the device is the record's: cpu here, cuda where FABENCH_DEVICE=cuda runs the suite)
    assert rec.runtime["device"] in ("cpu", "cuda")
    assert f"synthetic/binary n={rec.n_eval} {rec.runtime['device']} batch={rec.runtime['batch_size']}:" in proc.stdout
    # packed after the stage, so a command stopped at its time limit still hands back its work
    with tarfile.open(tmp_path / "out" / "results.tgz") as t:
        assert f"results/{path.relative_to(tmp_path / 'results')}" in t.getnames()
    with tarfile.open(tmp_path / "out" / "logs.tgz") as t:
        assert "logs/report.txt" in t.getnames()


def test_unknown_stage_is_refused(tmp_path: Path) -> None:
    proc = _run(tmp_path, "synthetc")
    assert proc.returncode == 2 and "unknown stage synthetc" in proc.stdout
