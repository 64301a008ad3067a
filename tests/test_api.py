"""The Python API refuses arguments of the wrong type with a FabenchError (one line), before any work."""

from __future__ import annotations

import pathlib
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import fabench
from fabench import registry
from fabench.errors import ConfigError, FabenchError

PARAMS = {"d": 16, "k": 4, "n_train": 20, "n_test": 10, "steps": 5}
BASE: dict[str, Any] = dict(task="synthetic", recipe="binary", attacks=["analytic"], radii=[0, 1, 2], params=PARAMS)


@pytest.fixture(autouse=True)
def _fresh_registries() -> Iterator[None]:
    yield
    for reg in registry.REGISTRIES.values():  # forget the variants a test registered
        reg.reload()


@pytest.mark.parametrize("change", [
    {"radii": "0,1,2"}, {"radii": 5}, {"radii": [None]}, {"radii": [10**400]}, {"radii": ["1"]},
    {"attacks": [1]}, {"attacks": 5}, {"attacks": "analytic"}, {"recipe": None}, {"recipe": ["binary"]},
    {"params": [("d", 16)]}, {"params": {1: 2}}, {"n_eval": "3"}, {"n_eval": None}, {"n_eval": 1.5},
    {"n_eval": True}, {"n_eval": 10**23}, {"out": 5}, {"out": "a\0b"}, {"task": None}, {"task": 5},
    {"task": pathlib.Path("synthetic")}, {"task": "a\0.toml"}, {"data_dir": 5}, {"cache_dir": "a\0"},
    {"force": "no"}, {"progress": 5}, {"notice": 5}, {"seed": "0"},
], ids=lambda c: repr(c)[:40])
def test_evaluate_refuses_wrong_types_with_a_one_line_fabench_error(change: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(FabenchError) as info:
        fabench.evaluate(**{**BASE, "out": tmp_path / "res", **change})
    assert "\n" not in str(info.value)
    assert not any(tmp_path.rglob("*.json"))


def test_a_path_task_is_a_task_file(tmp_path: Path) -> None:
    f = tmp_path / "tiny.toml"
    f.write_text('kind = "synthetic"\n[params]\nd = 16\nk = 4\nn_train = 20\nn_test = 10\n'
                 '[radii]\nstart = 0.0\nstop = 2.0\nstep = 1.0\n')
    rec = fabench.evaluate(task=f, recipe="binary", attacks=["analytic"], params={"steps": 5}, out=tmp_path / "res")
    assert rec.task == "tiny" and rec.radii == [0.0, 1.0, 2.0]
    with pytest.raises(ConfigError, match=r"a path must be a task file \(\*\.toml\)"):
        fabench.evaluate(task=pathlib.Path("synthetic"), recipe="binary", out=tmp_path / "res")


@pytest.mark.parametrize("call", [lambda: fabench.list_tasks(5), lambda: fabench.list_recipes(None),  # type: ignore[arg-type]
                                  lambda: fabench.list_attacks(["p*"])])  # type: ignore[arg-type]
def test_list_patterns_are_text(call: Callable[[], Any]) -> None:
    with pytest.raises(ConfigError, match="pattern must be a str"):
        call()


@pytest.mark.parametrize("args,kwargs", [
    ((None, "v"), {}), (("synthetic", "v"), {"params": [1]}), (("synthetic", "v"), {"radii": "0,1"}),
    (("synthetic", "v"), {"headline_radii": ["x"]}), (("synthetic", "v"), {"description": 5}),
    (("synthetic", "v"), {"register": "yes"}),
], ids=lambda c: repr(c)[:40])
def test_task_variant_refuses_wrong_types(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    with pytest.raises(FabenchError):
        fabench.task_variant(*args, **kwargs)
    assert "v" not in fabench.list_tasks()


@pytest.mark.parametrize("base,name", [("synthetic", "synthetic"), ("mnist5v5", "mnist5v5"),
                                       ("synthetic", "mnist5v5")])
def test_task_variant_refuses_the_name_of_a_registered_task(base: str, name: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"task variant {name!r}: a task of that name is already registered"):
        fabench.task_variant(base, name, params={"d": 16, "k": 4} if base == "synthetic" else {})
    # the built-in task still works (a clash used to make every later look-up a PluginConflictError)
    assert fabench.list_tasks(name) == [name] and registry.tasks.entry(name).source == "fabench"


def test_task_variant_of_one_base_may_be_made_again_under_its_name() -> None:
    fabench.task_variant("synthetic", "syn-v", params={"d": 16})  # e.g. a notebook cell run twice
    assert fabench.task_variant("synthetic", "syn-v", params={"d": 32}).meta.params["d"] == 32
    assert registry.tasks.entry("syn-v").obj.meta.params["d"] == 32
    with pytest.raises(ConfigError, match="already registered"):  # another base: another task
        fabench.task_variant("mnist5v5", "syn-v")


@pytest.mark.parametrize("name", ["a/b", "..", " v", "a\nb", "", "a@b"])
def test_task_variant_names_are_checked_as_task_file_names(name: str) -> None:
    with pytest.raises(ConfigError, match="task variant"):
        fabench.task_variant("synthetic", name)


@pytest.mark.parametrize("headline,needle", [([55.0], "is not on the grid"), ([], "non-empty list"),
                                             ([float("nan")], "must be finite"), ("1", "must be a list")])
def test_task_variant_headline_radii_are_checked_as_a_task_files(headline: Any, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        fabench.task_variant("synthetic", "syn-h", radii=[0, 1, 2], headline_radii=headline)
    variant = fabench.task_variant("synthetic", "syn-h", radii=[0, 1, 2], headline_radii=[2, 1.0000000001])
    assert variant.headline_radii == (2.0, 1.0)
