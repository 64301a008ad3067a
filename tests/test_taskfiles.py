"""Task files: kinds, radius grids, recipe defaults (shared "*" and per recipe), bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from fabench.errors import ConfigError, UnknownNameError
from fabench.evaluation import RunConfig, resolve
from fabench.taskfiles import builtin_task_files, load_task_file, radius_grid

TEXT = """
name = "toy"
kind = "synthetic"
[params]
k = 4
d = 32
[radii]
start = 0.0
stop = 1.0
step = 0.25
headline = [0.5, 1.0]
[recipe_defaults."*"]
lr = 0.5
init_std = 0.01
[recipe_defaults.fine]
lr = 0.2
"""


def test_builtin_task_files_are_shipped() -> None:
    names = {p.stem for p in builtin_task_files()}
    assert {"synthetic", "mnist5v5", "mnist-parity", "cifar5v5"} <= names


def test_shared_and_specific_recipe_defaults(tmp_path: Path) -> None:
    path = tmp_path / "toy.toml"
    path.write_text(TEXT)
    task = load_task_file(path)
    assert task.radii == (0.0, 0.25, 0.5, 0.75, 1.0) and task.headline_radii == (0.5, 1.0)
    binary = resolve(RunConfig(task=str(path), recipe="binary")).recipe_params
    fine = resolve(RunConfig(task=str(path), recipe="fine")).recipe_params
    robust = resolve(RunConfig(task=str(path), recipe="robust")).recipe_params
    assert binary["lr"] == 0.5 and binary["init_std"] == 0.01
    assert fine["lr"] == 0.2 and fine["init_std"] == 0.01  # the recipe's own table wins
    assert "lr" not in robust  # "*" only sets the parameters a recipe has
    # --set wins over both
    cfg = RunConfig(task=str(path), recipe="fine", overrides=[("lr", "0.7")])
    assert resolve(cfg).recipe_params["lr"] == 0.7


@pytest.mark.parametrize(
    "text,error,needle",
    [
        ('kind = "nope"\n[radii]\nstart=0\nstop=1\nstep=1\n', UnknownNameError, "unknown kind"),
        ('kind = "synthetic"\n[radii]\nstart=0\n', ConfigError, "needs start, stop, step"),
        ('kind = "synthetic"\n[params]\nwidth = 3\n[radii]\nstart=0\nstop=1\nstep=1\n', UnknownNameError, "width"),
        ('kind = "synthetic"\n[params]\nd = "big"\n[radii]\nstart=0\nstop=1\nstep=1\n', ConfigError, "expected int"),
        ("kind = [", ConfigError, "not valid TOML"),
    ],
)
def test_bad_task_files(tmp_path: Path, text: str, error: type, needle: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(error, match=needle):
        load_task_file(path)


def test_radius_grid_inclusive_and_validated() -> None:
    assert radius_grid(0.0, 0.8, 0.08)[-1] == 0.8 and len(radius_grid(0.0, 0.8, 0.08)) == 11
    with pytest.raises(ConfigError):
        radius_grid(0.0, 1.0, 0.0)
