"""Parameter parsing and routing of --set overrides."""

from __future__ import annotations

import pytest

from fabench.errors import ConfigError, UnknownNameError
from fabench.evaluation import route_overrides
from fabench.params import parse_assignments, parse_value, resolve


@pytest.mark.parametrize(
    "text,default,expected",
    [("12", 5, 12), ("0.5", 1.0, 0.5), ("1e-3", 1.0, 1e-3), ("true", False, True), ("off", True, False),
     ("adam", "gd", "adam"), ("1,3", (), (1, 3)), ("0.1, 0.2", (0.0,), (0.1, 0.2))],
)
def test_parse_value_to_the_default_type(text, default, expected) -> None:
    assert parse_value(text, default) == expected


@pytest.mark.parametrize("text,default", [("x", 5), ("1.5", 5), ("nan", 1.0), ("maybe", True), ("a,b", (0,))])
def test_parse_value_rejects(text, default) -> None:
    with pytest.raises(ConfigError):
        parse_value(text, default)


def test_resolve_unknown_key_suggests() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'steps'"):
        resolve({"steps": 1, "lr": 0.1}, {"step": 3}, owner="recipe binary")
    assert resolve({"lr": 0.1}, {"lr": 1}, owner="r") == {"lr": 1.0}


def test_malformed_assignments() -> None:
    for bad in ["d", "=3", "d=", " =1"]:
        with pytest.raises(ConfigError):
            parse_assignments([bad])
    assert parse_assignments(["d=3", "pgd.steps=10"]) == [("d", "3"), ("pgd.steps", "10")]


def test_route_overrides_by_scope_and_ambiguity() -> None:
    t, r, a = route_overrides([("d", "64"), ("lr", "0.1"), ("pgd.steps", "7"), ("task.k", "4")],
                              {"d": 1, "k": 10}, {"lr": 0.001}, {"pgd": {"steps": 50}})
    assert t == {"d": 64, "k": 4} and r == {"lr": 0.1} and a == {"pgd": {"steps": 7}}
    with pytest.raises(ConfigError, match="task.x or recipe.x"):
        route_overrides([("x", "1")], {"x": 1}, {"x": 2}, {})
    with pytest.raises(UnknownNameError):
        route_overrides([("deepfool.steps", "3")], {}, {}, {"pgd": {"steps": 1}})
    with pytest.raises(UnknownNameError):
        route_overrides([("nope", "3")], {"d": 1}, {"lr": 1.0}, {})


def test_record_config_holds_only_the_backbone_parameters_that_matter() -> None:
    from fabench.evaluation import RunConfig, resolve

    pixels = resolve(RunConfig(task="synthetic", recipe="binary")).recipe_params
    assert pixels["backbone"] == "pixels" and not any(k.startswith("backbone_") for k in pixels)
    cnn = resolve(RunConfig(task="cifar5v5", recipe="fine")).recipe_params
    assert cnn["backbone"] == "cnn" and cnn["backbone_width"] >= 1 and "backbone_epochs" in cnn
    assert "backbone_threat_model" not in cnn and "backbone_pretrained" not in cnn
    # an irrelevant setting does not change the key; a relevant one does
    base = resolve(RunConfig(task="synthetic", recipe="fine")).key
    assert resolve(RunConfig(task="synthetic", recipe="fine", overrides=[("backbone_width", "64")])).key == base
    assert resolve(RunConfig(task="synthetic", recipe="fine", overrides=[("h", "2")])).key != base
    with pytest.raises(UnknownNameError, match="unknown backbone"):
        resolve(RunConfig(task="synthetic", recipe="fine", overrides=[("backbone", "vgg")]))


@pytest.mark.parametrize("text", ["0,0", "0,1,0", "1, 1"])
def test_a_repeated_list_item_is_an_error_not_a_second_key(text: str) -> None:
    with pytest.raises(ConfigError, match="is given more than once"):
        parse_value(text, (0, 1), key="positive_classes")
    with pytest.raises(ConfigError, match="is given more than once"):  # from a task file
        resolve({"positive_classes": (0, 1)}, {"positive_classes": [int(t) for t in text.split(",")]}, owner="t")


@pytest.mark.parametrize("kv", ["lr=1e308", "init_std=1e308", "backbone_lr=1e308", "sigma=1e308",
                                "recipe.lr=1e7", "task.sigma=2e6"])
def test_huge_float_parameters_are_refused_by_their_declared_range(kv: str) -> None:
    from fabench.evaluation import RunConfig
    from fabench.evaluation import resolve as resolve_run

    key, _, value = kv.partition("=")
    with pytest.raises(ConfigError, match="is outside its range"):
        resolve_run(RunConfig(task="synthetic", recipe="binary", attacks=["analytic"], overrides=[(key, value)]))


def test_huge_bias_fraction_is_refused_and_defaults_are_unchanged() -> None:
    from fabench import registry
    from fabench.evaluation import RunConfig
    from fabench.evaluation import resolve as resolve_run

    with pytest.raises(ConfigError, match="bias_fraction=1e\\+308 is outside its range"):
        resolve_run(RunConfig(task="synthetic", recipe="robust", attacks=["analytic"],
                              overrides=[("bias_fraction", "1e308")]))
    assert registry.recipes.get("binary").meta.params["lr"] == 0.001  # keys depend on the defaults
    assert registry.recipes.get("robust").meta.params["bias_fraction"] == 0.25


@pytest.mark.parametrize("text", ["1,0", "0,1", " 1, 0"])
def test_a_list_parameter_is_a_set_sorted_into_one_form(text: str) -> None:
    assert parse_value(text, (0, 1), key="positive_classes") == (0, 1)
    assert resolve({"positive_classes": ()}, {"positive_classes": [int(t) for t in text.split(",")]},
                   owner="t") == {"positive_classes": (0, 1)}


@pytest.mark.parametrize("items", [[1.0, 0], [True, 0], [0, [1]], ["x"]])
def test_the_items_of_a_list_parameter_have_the_default_items_type(items: list) -> None:
    with pytest.raises(ConfigError):  # 1.0 or true would be a second key for 1
        resolve({"positive_classes": (0, 1)}, {"positive_classes": items}, owner="t")
    assert resolve({"positive_classes": ()}, {"positive_classes": ["1", 0]}, owner="t") == {"positive_classes": (0, 1)}
