"""evaluation.resolve and compute: one configuration key per computation, checks before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from fabench import registry
from fabench.errors import ConfigError
from fabench.evaluation import RunConfig, evaluate, resolve

TINY = [("d", 16), ("k", 4), ("n_train", 20), ("n_test", 10), ("steps", 5)]


def _key(task: str = "synthetic", **over: object) -> str:
    return resolve(RunConfig(task=task, recipe="binary", attacks=["analytic"], radii=[0, 1],
                             overrides=[*TINY, *over.items()] if task == "synthetic" else list(over.items()))).key


def test_positive_classes_in_any_order_or_as_the_default_split_give_one_key(tmp_path: Path) -> None:
    default = _key()
    # k = 4: the default () is clusters 0 and 1, in any order or spelling
    assert _key(positive_classes="1,0") == _key(positive_classes=(1, 0)) == _key(positive_classes=[0, 1]) == default
    assert _key(positive_classes="0,2") == _key(positive_classes="2,0") != default
    res = resolve(RunConfig(task="synthetic", recipe="binary", attacks=["analytic"],
                            overrides=[*TINY, ("positive_classes", "1,0")]))
    assert res.task_params["positive_classes"] == ()  # the form the published records have
    # a task file that spells the default split out has the built-in task's parameters
    f = tmp_path / "synthetic.toml"
    f.write_text('kind = "synthetic"\n[params]\nk = 4\npositive_classes = [1, 0]\n[radii]\nstart = 0.0\nstop = 1.0\nstep = 1.0\n')
    from_file = resolve(RunConfig(task=str(f), recipe="binary", attacks=["analytic"], overrides=TINY))
    assert from_file.task_params == res.task_params
    # the image kinds keep their explicit list (the published form), sorted
    mnist = resolve(RunConfig(task="mnist5v5", recipe="binary", attacks=["analytic"],
                              overrides=[("positive_classes", "4,3,2,1,0")]))
    assert mnist.task_params["positive_classes"] == (0, 1, 2, 3, 4)
    assert mnist.key == resolve(RunConfig(task="mnist5v5", recipe="binary", attacks=["analytic"])).key


@pytest.mark.parametrize("n_eval", [-1, True, "3", 1.5, None, 10**23])
def test_a_bad_n_eval_is_refused_when_resolved(n_eval: object) -> None:
    with pytest.raises(ConfigError, match="--n-eval .*: expected an integer from 0"):
        resolve(RunConfig(task="synthetic", recipe="binary", attacks=["analytic"], n_eval=n_eval))  # type: ignore[arg-type]


def test_n_eval_above_the_test_set_is_refused_once_loaded_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_fit(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained before n_eval was checked")

    monkeypatch.setattr(registry.recipes.get("binary"), "fit", no_fit)
    cfg = RunConfig(task="synthetic", recipe="binary", attacks=["analytic"], radii=[0, 1], n_eval=11, overrides=TINY)
    with pytest.raises(ConfigError, match="--n-eval 11 but the test set holds 10 points"):
        evaluate(cfg, out_dir=tmp_path)
    assert not any(tmp_path.rglob("*.json"))
