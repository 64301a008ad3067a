"""Models: two-layer heads, backbones, and the classifier that joins them (2-logit view).

The names below are imported on first access (they import torch); ``fabench.models.backbones``
declares the recipes' backbone parameters and can be imported without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from fabench.models.classifier import Classifier
    from fabench.models.heads import BinaryHead, FineHead, Head, RobustHead

__all__ = ["Classifier", "Head", "BinaryHead", "FineHead", "RobustHead"]
_HOME = {"Classifier": "classifier", "Head": "heads", "BinaryHead": "heads", "FineHead": "heads",
         "RobustHead": "heads"}


def __getattr__(name: str) -> Any:
    """Lazy access to the model classes (so registering the recipes imports no torch)."""
    if name in _HOME:
        return getattr(importlib.import_module(f"fabench.models.{_HOME[name]}"), name)
    raise AttributeError(f"module 'fabench.models' has no attribute {name!r}")
