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


BASE = 'kind = "synthetic"\n[params]\nd = 16\nk = 4\n[radii]\nstart = 0.0\nstop = 2.0\nstep = 1.0\n'


@pytest.mark.parametrize(
    "text, needle",
    [
        ("colour = 3\n" + BASE, "unknown key 'colour'; allowed: name, kind, description"),
        (BASE + "foo = 1\n", "[radii]: unknown key 'foo'; allowed: start, stop, step, headline"),
        (BASE.replace("start = 0.0\nstop = 2.0\nstep = 1.0", "start = false\nstop = true\nstep = true"),
         "[radii] start must be a number, got False"),
        (BASE + "headline = [nan]\n", "must be finite and non-negative"),
        (BASE + "headline = [-1]\n", "must be finite and non-negative"),
        (BASE + "headline = [0.5, 7]\n", "headline radius 0.5 is not on the grid"),
        (BASE + "headline = []\n", "non-empty list"),
        ("description = {a = 1}\n" + BASE, "description must be a string"),
        ("reference = 3\n" + BASE, "reference must be a string"),
        ('name = "a\\nb"\n' + BASE, "line break or another control character"),
        ('name = "a\\u0007b"\n' + BASE, "control character"),
        (f'name = "{"a" * 300}"\n' + BASE, "300 characters long; at most 100"),
    ],
)
def test_task_file_mistakes_found_by_the_fuzzer_are_errors(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "t.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_task_file(path, source="file:x")
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_headline_radii_are_snapped_to_the_grid_and_a_name_of_100_characters_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(f'name = "{"a" * 100}"\n' + BASE + "headline = [1, 2.0000000000001, 1]\n", encoding="utf-8")
    task = load_task_file(path, source="file:x")
    assert task.headline_radii == (1.0, 2.0) and task.meta.name == "a" * 100


def test_recipe_defaults_for_an_unregistered_recipe_warn_once(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(BASE + "[recipe_defaults.nonexist]\nm = 3\n[recipe_defaults.binary]\nm = 2\n", encoding="utf-8")
    from fabench.registry import PluginWarning

    with pytest.warns(PluginWarning, match=r"not registered here: nonexist \(a plugin not installed\?\)") as rec:
        task = load_task_file(path, source="file:x")
    assert len(rec) == 1 and task.recipe_defaults["binary"] == {"m": 2}


@pytest.mark.parametrize("kind", ['["synthetic"]', "{a = 1}", "3", "true"])
def test_a_kind_that_is_not_text_is_an_unknown_kind_not_an_internal_error(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "t.toml"
    path.write_text(BASE.replace('kind = "synthetic"', f"kind = {kind}"), encoding="utf-8")
    with pytest.raises(UnknownNameError, match="unknown kind .*; known kinds: "):
        load_task_file(path, source="file:x")


def test_a_broken_kind_on_the_tasks_path_is_skipped_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fabench.registry import PluginWarning
    from fabench.taskfiles import register_builtin_tasks

    (tmp_path / "k.toml").write_text(BASE.replace('kind = "synthetic"', 'kind = ["synthetic"]'), encoding="utf-8")
    (tmp_path / "good.toml").write_text(BASE, encoding="utf-8")
    monkeypatch.setenv("FABENCH_TASKS_PATH", str(tmp_path))
    registered: list[str] = []
    with pytest.warns(PluginWarning, match="skipping task file .*k.toml.*unknown kind") as rec:
        register_builtin_tasks(lambda task, **kw: registered.append(task.meta.name))
    assert len(rec) == 1 and "good" in registered and "k" not in registered


@pytest.mark.parametrize("name", ["foo@bar", "@", "foo@", "x.toml", "a.b.toml"])
def test_a_name_that_cannot_be_looked_up_is_refused_when_the_file_is_loaded(tmp_path: Path, name: str) -> None:
    path = tmp_path / "t.toml"
    path.write_text(f'name = "{name}"\n' + BASE, encoding="utf-8")
    with pytest.raises(ConfigError, match="'@'" if "@" in name else "ends in '.toml'"):
        load_task_file(path, source="file:x")
    # the file's own name, when the file names no task, is checked the same way
    stem = tmp_path / "foo@bar.toml"
    stem.write_text(BASE, encoding="utf-8")
    with pytest.raises(ConfigError, match="name 'foo@bar' must be"):
        load_task_file(stem, source="file:x")


def test_recipe_defaults_of_a_recipe_at_a_distribution_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(BASE + '[recipe_defaults."binary@fabench"]\nm = 3\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"key 'binary@fabench': recipe_defaults keys are recipe names, or "
                                          r"\"\*\", without @distribution \(here 'binary'\)"):
        load_task_file(path)


def test_a_task_file_path_the_system_refuses_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot be read: embedded null byte"):
        load_task_file("a\0.toml")


@pytest.mark.parametrize("start, stop, step", [(0.0, 1e-11, 1e-12), (0.0, 1e-9, 1.5e-10), (1e-12, 1e-11, 1e-12)])
def test_a_radius_grid_finer_than_its_rounding_is_refused(start: float, stop: float, step: float) -> None:
    # 0:1e-11:1e-12 was silently the grid of radius 0 alone (rounded to 10 decimal places)
    with pytest.raises(ConfigError, match="radius grid: radii are kept to 10 decimal places, too few for step"):
        radius_grid(start, stop, step)


def test_a_fine_radius_grid_that_its_rounding_keeps_is_kept_and_its_headline_snaps_to_the_nearest(
    tmp_path: Path,
) -> None:
    assert radius_grid(0.0, 1e-9, 1e-10) == tuple(round(i * 1e-10, 10) for i in range(11))  # 11 distinct radii
    assert len(set(radius_grid(0.0, 1e-9, 1e-10))) == 11
    assert radius_grid(0.0, 0.3, 0.1) == (0.0, 0.1, 0.2, 0.3)  # float drift still hidden
    path = tmp_path / "t.toml"
    path.write_text(BASE.replace("stop = 2.0\nstep = 1.0", "stop = 1e-9\nstep = 1e-10") + "headline = [2e-10]\n",
                    encoding="utf-8")
    assert load_task_file(path).headline_radii == (2e-10,)  # not 0.0, the first grid radius within 1e-9


def test_every_shipped_task_file_still_loads() -> None:
    for f in builtin_task_files():
        assert load_task_file(f).radii
