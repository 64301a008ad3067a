"""Backbones: what the head sees. ``pixels`` is the flattened input (no backbone).

Backbones are registered by name in :data:`BACKBONES`; a name ``prefix:rest`` is dispatched to
the builder registered for ``prefix:`` (e.g. ``robustbench:Standard``). A builder returns a frozen
``nn.Module`` mapping inputs to penultimate features, or ``None`` for the identity.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Mapping

import torch
from torch import nn

from fabench.errors import UnknownNameError
from fabench.types import FitContext, Params, TaskData

BackboneBuilder = Callable[[str, TaskData, Params, FitContext], "nn.Module | None"]

BACKBONES: dict[str, BackboneBuilder] = {}

#: Parameters every head recipe accepts for its backbone (merged into the recipes' metadata).
BACKBONE_PARAMS: dict[str, Any] = {"backbone": "pixels"}


def backbone(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Decorator: register a backbone builder (``name`` ending in ``:`` for a prefix family)."""

    def add(fn: BackboneBuilder) -> BackboneBuilder:
        BACKBONES[name] = fn
        return fn

    return add


@backbone("pixels")
def _pixels(name: str, data: TaskData, params: Params, context: FitContext) -> nn.Module | None:
    return None


def build_backbone(data: TaskData, params: Params, *, context: FitContext) -> nn.Module | None:
    """Build (or load from cache) the backbone that ``params['backbone']`` names."""
    name = str(params.get("backbone", "pixels"))
    prefix, sep, _ = name.partition(":")
    builder = BACKBONES.get(prefix + sep) if sep else BACKBONES.get(name)
    if builder is None:
        known = sorted(BACKBONES)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownNameError(f"unknown backbone {name!r}{hint} Known backbones: {', '.join(known)}")
    module = builder(name, data, params, context)
    if module is not None:
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
    return module


@torch.no_grad()
def head_inputs(
    module: nn.Module | None, x: torch.Tensor, *, batch_size: int = 512
) -> torch.Tensor:
    """The head's inputs for ``x``: flattened inputs, or the backbone's features."""
    if module is None:
        return x.flatten(1)
    return torch.cat([module(x[i : i + batch_size]).flatten(1) for i in range(0, len(x), batch_size)])


def describe(params: Mapping[str, Any]) -> str:
    return str(params.get("backbone", "pixels"))
