"""Data sources: each module defines one task kind (see :mod:`fabench.taskfiles`)."""

from fabench.data import synthetic  # noqa: F401  (registers the kind)
