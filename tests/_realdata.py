"""Helpers for the real-image tests: copies of ../shared/data (never written to) and offline mode."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

#: ``$FABENCH_DATA`` where set (the same layout, e.g. a copy carried to a GPU machine), else
#: ``../shared/data`` next to the repository.
SHARED_DATA = Path(os.environ.get("FABENCH_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
MNIST_RAW = SHARED_DATA / "MNIST" / "raw"
CIFAR_SUBSET = SHARED_DATA / "cifar-10-subset" / "cifar-10-batches-py"


def require(path: Path) -> None:
    """Skip when the real data is absent, except in CI (``CI`` set), where it must be there."""
    if not path.is_dir():
        message = f"real data not found at {path} (see ../shared/data/README.md)"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false"):
            pytest.fail(message + "; CI must run the real-data tests")
        pytest.skip(message)


def copy_tree(src: Path, dst: Path) -> Path:
    """Copy ``src`` to ``dst`` with the files made writable (the shared copy is read-only)."""
    shutil.copytree(src, dst)
    for p in dst.rglob("*"):
        p.chmod(p.stat().st_mode | stat.S_IWUSR)
    return dst


def make_data_dir(root: Path, *, mnist: bool = True, cifar: bool = True) -> Path:
    """A data directory in fabench's layout holding copies of the shared real data."""
    root.mkdir(parents=True, exist_ok=True)
    if mnist:
        require(MNIST_RAW)
        copy_tree(MNIST_RAW, root / "MNIST" / "raw")
    if cifar:
        require(CIFAR_SUBSET)
        copy_tree(CIFAR_SUBSET, root / "cifar-10-batches-py")
    return root
