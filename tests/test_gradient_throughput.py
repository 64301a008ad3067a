"""scripts/gradient_throughput.py on a tiny run: the FLOP count, the chosen batch, the budget line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gradient_throughput.py"


def test_mnist_cnn_gradient_flops_and_batch() -> None:
    """mnist5v5's CNN (width 16) under a 2-logit head: one input gradient is a forward pass and a
    backward pass to the input, 2 x 2 x 1 993 216 multiply-adds (convolutions 1->16 at 28 x 28,
    16->32 at 14 x 14, 32->64 at 7 x 7, 3 x 3 kernels; linear 576->128; head 128->2) = 7.97
    MFLOP. On the CPU fabench attacks it in batches of 334 (16 MiB / 50 KiB per point)."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--models", "mnist5v5", "--batches", "8,16", "--images", "32",
         "--rounds", "1", "--threads", "1", "--points", "1000", "--budget-s", "3"],
        capture_output=True, text=True, timeout=300, cwd=SCRIPT.parents[1])
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    peak = re.search(r"float32 matmul peak (\d+) GFLOP/s", out)
    assert peak and int(peak.group(1)) > 0
    assert "mnist5v5 (cnn width 16; 3 of 3 batch norms folded" in out
    assert "fabench's batch here 334;" in out
    assert "3 s for 1000 points allow" in out
    rows = [line.split() for line in out.splitlines() if line.lstrip().startswith("mnist5v5  ")]
    assert [r[-4] for r in rows] == ["8", "16"]  # the batch column (no "<-": neither is the chosen one)
    macs = 784 * 16 * 9 + 196 * 32 * 16 * 9 + 49 * 64 * 32 * 9 + 576 * 128 + 128 * 2
    assert all(r[-5] == f"{4 * macs / 1e6:.1f}" for r in rows)
    assert all(float(r[-3]) > 0 for r in rows)  # ms per image


def test_bad_arguments_get_one_line_errors() -> None:
    for args, said in ((["--models", "mnist"], "unknown model(s) mnist: choose from mnist5v5, cifar5v5, resnet18"),
                       (["--batches", "8,x"], "--batches '8,x': expected comma-separated integers"),
                       (["--batches", "0"], "--batches: every batch must be >= 1")):
        proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                              cwd=SCRIPT.parents[1])
        assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].endswith(said)
        assert "Traceback" not in proc.stderr
