"""scripts/roundoff_floor.py: the unperturbed rerun is exact, the perturbation is applied and undone."""

from __future__ import annotations

import json
import subprocess
import sys
from types import ModuleType

import pytest

from _scripts import SCRIPTS, load_script

SCRIPT = SCRIPTS / "roundoff_floor.py"
SMALL = ["--task", "synthetic", "--recipe", "fine", "--set", "d=64", "--set", "n_train=120", "--set", "n_test=60",
         "--attacks", "analytic,pgd", "--threads", "1"]


def _script() -> ModuleType:
    return load_script("roundoff_floor")


def test_noise_zero_reproduces_the_run_and_noise_moves_the_head(capsys: pytest.CaptureFixture[str]) -> None:
    """``--noise 0`` must give back the unperturbed numbers exactly (the harness adds nothing of its
    own); a relative noise of 1e-2 on the training points is applied at that size and moves the
    learnt directions (the cosine matrix), while clean accuracy on 60 test points stays put."""
    from fabench.recipes import common

    script = _script()
    original = common.extract_features
    assert script.main([*SMALL, "--noise", "0,1e-2", "--json"]) == 0
    assert common.extract_features is original  # the patch is undone
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    zero, big = rows
    assert zero["noise"] == 0 and zero["applied (rel.)"] == 0
    for col in ("clean (points)", "worst, max over radii (points)", "radii differing", "median distance (rel.)",
                "fa_score", "cosines (max abs)"):
        assert zero[col] == 0, col
    assert 0.009 < big["applied (rel.)"] < 0.011
    assert big["cosines (max abs)"] > 1e-5
    assert big["clean (points)"] <= 1
    assert big["n"] == 60


def test_bad_noise_is_a_one_line_error() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--task", "synthetic", "--recipe", "fine", "--noise", "-1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "expected finite noise levels >= 0, got '-1'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_feature_drift_of_one_device_against_itself_is_zero_and_scales() -> None:
    """The same backbone on the same device gives the same features (0 apart); features 1% off
    are measured as 1% apart, in norm and in the largest element."""
    import torch

    drift = _script().feature_drift
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5), torch.nn.ReLU())
    x = torch.randn(40, 3, 2, 2)
    with torch.no_grad():
        z = backbone(x)
    assert drift(backbone, x, z, device="cpu") == (0.0, 0.0)
    norm, peak = drift(backbone, x, z / 1.01, device="cpu")
    assert abs(norm - 0.01) < 1e-6 and abs(peak - 0.01) < 1e-6
    assert next(backbone.parameters()).device.type == "cpu"  # the backbone itself is not moved

