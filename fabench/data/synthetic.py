"""The synthetic task of the paper: Definition 2.1 under Assumptions 1-2.

``k`` clusters with pairwise orthogonal centres ``mu_j``, ``||mu_j|| = sqrt(d)``; a point of
cluster ``j`` is ``x = mu_j + xi`` with ``xi ~ N(0, sigma^2 I_d)``; its binary label is ``+1`` for
``j in J+`` (the first ``k/2`` clusters unless ``positive_classes`` says otherwise). Clusters are
drawn uniformly. Everything is seeded: the same seed gives the same centres and points.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from fabench._lazy import lazy
from fabench.errors import ConfigError
from fabench.taskfiles import task_kind
from fabench.types import Params, ProgressFn, TaskData

if TYPE_CHECKING:  # pragma: no cover - heavy imports are lazy (see fabench._lazy)
    import torch
else:
    torch = lazy("torch")

#: The most memory (bytes) the synthetic data may take; larger sizes are refused before allocation.
MEMORY_BUDGET = 4 * 2**30
#: The largest noise scale accepted: far above any that is studied (the paper's is 1; the clusters'
#: centres have norm about sqrt(d)), and beyond float32's reach once squared distances are taken.
MAX_SIGMA = 1e6


def orthogonal_centres(k: int, d: int, *, generator: torch.Generator) -> torch.Tensor:
    """``k`` random pairwise-orthogonal vectors of norm ``sqrt(d)`` in ``R^d`` (rows)."""
    if k > d:
        raise ConfigError(f"need k <= d for orthogonal centres, got k={k}, d={d}")
    g = torch.randn(d, k, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    q = q * torch.sign(torch.diagonal(r))  # a unique, uniformly random orthonormal frame
    return (q.T * math.sqrt(d)).to(torch.float32)


def sample_clusters(
    centres: torch.Tensor, n: int, sigma: float, *, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points ``mu_j + N(0, sigma^2 I)`` with ``j`` uniform; returns ``(x, j)``."""
    k, d = centres.shape
    j = torch.randint(0, k, (n,), generator=generator)
    x = centres[j] + sigma * torch.randn(n, d, generator=generator)
    return x, j


@task_kind
class SyntheticClusters:
    """Task kind ``synthetic``: the orthogonal-cluster data of Definition 2.1."""

    name: ClassVar[str] = "synthetic"
    defaults: ClassVar[Mapping[str, Any]] = {
        "k": 10,
        "d": 3072,
        "n_train": 1000,
        "n_test": 1000,
        "sigma": 1.0,
        "positive_classes": (),
    }
    bounds: ClassVar[Mapping[str, tuple[float | None, float | None]]] = {
        "k": (2, 100_000), "d": (1, 100_000_000), "n_train": (1, 100_000_000), "n_test": (1, 100_000_000),
        "sigma": (0.0, MAX_SIGMA), "positive_classes": (0, 99_999),
    }

    @staticmethod
    def canonical_params(params: Params) -> dict[str, Any]:
        """``params`` in the one form their configuration key is taken of: ``positive_classes``
        that name the default split, the first ``k/2`` clusters, are the default ``()`` (as the
        published records have it), not a second key for the same data."""
        pos, k = tuple(params["positive_classes"]), int(params["k"])
        return {**params, "positive_classes": ()} if pos == tuple(range(k // 2)) else dict(params)

    def load(
        self, params: Params, *, seed: int, data_dir: str | None, progress: ProgressFn
    ) -> TaskData:
        k, d = int(params["k"]), int(params["d"])
        n_train, n_test = int(params["n_train"]), int(params["n_test"])
        sigma = float(params["sigma"])
        if k < 2 or d < 1 or n_train < 1 or n_test < 1 or sigma < 0:
            raise ConfigError(
                f"synthetic task needs k >= 2, d, n_train, n_test >= 1 and sigma >= 0 (got {dict(params)})"
            )
        size = (n_train + n_test + k) * d * 4
        if size > MEMORY_BUDGET:
            raise ConfigError(
                f"synthetic task: (n_train + n_test + k) * d = {(n_train + n_test + k) * d:,} float32 values "
                f"({size / 2**30:.1f} GiB) exceed fabench's budget of {MEMORY_BUDGET / 2**30:.0f} GiB"
            )
        pos = tuple(int(j) for j in params["positive_classes"]) or tuple(range(k // 2))
        if not all(0 <= j < k for j in pos) or len(set(pos)) in (0, k):
            raise ConfigError(f"positive_classes must be a proper non-empty subset of 0..{k - 1}")
        gen = torch.Generator().manual_seed(seed)
        centres = orthogonal_centres(k, d, generator=gen)
        x_train, j_train = sample_clusters(centres, n_train, sigma, generator=gen)
        x_test, j_test = sample_clusters(centres, n_test, sigma, generator=gen)
        progress("data", 1, 1)
        return TaskData(
            name=self.name,
            x_train=x_train,
            fine_train=j_train,
            x_test=x_test,
            fine_test=j_test,
            positive_classes=tuple(sorted(set(pos))),
            num_classes=k,
            features=centres,
            bounds=(-math.inf, math.inf),
            radii=(),
            class_names=tuple(f"cluster {j}" for j in range(k)),
            info={"feature_source": "true centres"},
        )
