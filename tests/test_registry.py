"""Registries: listing with wildcards, unknown names, explicit providers."""

from __future__ import annotations

import pytest

from fabench import registry
from fabench.errors import PluginConflictError, UnknownNameError
from fabench.registry import Registry
from fabench.types import Meta


def test_builtins_are_registered_with_metadata() -> None:
    assert {"binary", "fine", "robust"} <= set(registry.recipes.names())
    assert {"analytic", "pairwise", "pgd", "deepfool"} <= set(registry.attacks.names())
    assert "synthetic" in registry.tasks.names()
    meta = registry.recipes.get("binary").meta
    assert meta.params["m"] == 5 and meta.params["lr"] == 0.001 and meta.params["steps"] == 100
    assert meta.params["init_std"] == 1e-5 and meta.reference


def test_wildcard_listing() -> None:
    assert registry.attacks.names("p*") == ["pairwise", "pgd"]
    assert registry.recipes.names("nothing*") == []


def test_unknown_name_suggests_closest_and_lists_known() -> None:
    with pytest.raises(UnknownNameError) as err:
        registry.recipes.get("bianry")
    msg = str(err.value)
    assert "did you mean 'binary'" in msg and "fine" in msg and "robust" in msg and "\n" not in msg


class _Thing:
    def __init__(self, name: str) -> None:
        self.meta = Meta(name=name, description="x")


def test_two_providers_conflict_unless_chosen() -> None:
    reg: Registry[_Thing] = Registry("widget", "fabench.test-none", lambda: None)
    reg.register(_Thing("w"), source="dist-a")
    reg.register(_Thing("w"), source="dist-b")
    with pytest.raises(PluginConflictError) as err:
        reg.get("w")
    assert "dist-a" in str(err.value) and "dist-b" in str(err.value)
    assert reg.entry("w@dist-b").source == "dist-b"
    with pytest.raises(UnknownNameError):
        reg.get("w@dist-c")


def test_registering_an_object_without_meta_is_a_type_error() -> None:
    reg: Registry[object] = Registry("widget", "fabench.test-none", lambda: None)
    with pytest.raises(TypeError):
        reg.register(object())
