"""fabench: feature averaging and its cost in L2 adversarial robustness.

Li, Pan, Lyu, Li, "Feature Averaging: An Implicit Bias of Gradient Descent Leading to
Non-Robustness in Neural Networks" (ICLR 2025). The command line is ``fabench``; the library
entry point for one evaluation is :mod:`fabench.evaluation`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version

try:
    __version__: str = _dist_version("fabench")
except PackageNotFoundError:  # pragma: no cover - a source tree that is not installed
    __version__ = "0+unknown"
