"""Shared fixtures: small seeded synthetic problems (d small for speed, same maths)."""

from __future__ import annotations

import math
import warnings

import pytest

warnings.filterwarnings("ignore", category=DeprecationWarning)

# The theory checks run at d = 1500: large enough that the noise does not blur the radii
# (sqrt(d/k) = 12.2, sqrt(d/2) = 27.4), small enough to train and attack in seconds.
SMALL = {"k": 10, "d": 1500, "n_train": 500, "n_test": 200}


@pytest.fixture(autouse=True)
def _no_debug_traces(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests check what a user sees: without the developer's ``FABENCH_DEBUG`` traces (set,
    e.g., by ``scripts/gpu_checks.sh``), which turn every clean one-line error into a traceback.
    A test of the traces sets it itself."""
    monkeypatch.delenv("FABENCH_DEBUG", raising=False)


@pytest.fixture(scope="session")
def small_params() -> dict[str, float]:
    return dict(SMALL)


@pytest.fixture(scope="session")
def radii_small() -> dict[str, float]:
    d, k = SMALL["d"], SMALL["k"]
    return {"averaged": math.sqrt(d / k), "decoupled": math.sqrt(d / 2)}
