"""Data sources: each module defines one task kind (see :mod:`fabench.taskfiles`)."""

from fabench.data import cifar, mnist, synthetic  # noqa: F401  (register the kinds)
