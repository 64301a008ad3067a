"""fabench: feature averaging and its cost in L2 adversarial robustness.

Li, Pan, Lyu, Li, "Feature Averaging: An Implicit Bias of Gradient Descent Leading to
Non-Robustness in Neural Networks" (ICLR 2025). The command line is ``fabench``; the Python API is
:func:`evaluate`, :func:`list_tasks`, :func:`list_recipes`, :func:`list_attacks` and
:func:`task_variant` (see :mod:`fabench.api`). ``import fabench`` is light: torch and the rest are
imported on first use.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: ``import fabench`` imports nothing (see fabench._entry)
if TYPE_CHECKING:  # pragma: no cover - typed names for checkers; imported lazily at run time
    from typing import Any

    from fabench.api import evaluate, list_attacks, list_recipes, list_tasks, task_variant

    __version__: str

__all__ = ["__version__", "evaluate", "list_tasks", "list_recipes", "list_attacks", "task_variant"]
_API = {"evaluate", "list_tasks", "list_recipes", "list_attacks", "task_variant"}


def __getattr__(name: str) -> Any:
    """Lazy access to :mod:`fabench.api` (so ``import fabench`` imports no torch) and to
    ``__version__`` (the installed distribution's version, ``0+unknown`` in a source tree that is not
    installed; looked up on first use: ``importlib.metadata`` alone takes 20 ms to import)."""
    if name in _API:
        from fabench import api

        return getattr(api, name)
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        global __version__
        try:
            __version__ = version("fabench")
        except PackageNotFoundError:  # pragma: no cover - a source tree that is not installed
            __version__ = "0+unknown"
        return __version__
    raise AttributeError(f"module 'fabench' has no attribute {name!r}")
