"""Task kind ``mnist``: the official MNIST digits as a binary task with ten fine classes.

The ten digits are the clusters ``j`` of Definition 2.1 (Li, Pan, Lyu, Li, ICLR 2025);
``positive_classes`` is ``J+`` (digits 0-4 for ``mnist5v5``, the even digits for ``mnist-parity``).
Inputs are pixels in ``[0, 1]`` (``N x 1 x 28 x 28``), so attack radii are L2 distances in pixel
space; the input-space features ``mu_j`` are the class-mean training images (the paper's real-data experiments).

Files are torchvision's layout, ``DATA/MNIST/raw/*-ubyte.gz``, and are verified against the md5
sums that ``torchvision.datasets.MNIST`` checks. When a file is missing it is downloaded from
torchvision's mirrors (verified, written atomically); offline that is one clear error saying
which file to copy where. The gzip files are decoded in memory: nothing is unpacked or cached,
so a read-only data directory (such as a shared one) works as it is.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from fabench._lazy import lazy
from fabench.data import store
from fabench.errors import DataError
from fabench.taskfiles import task_kind
from fabench.types import Params, ProgressFn, TaskData

if TYPE_CHECKING:  # pragma: no cover - heavy imports are lazy (see fabench._lazy)
    import numpy as np
    import torch
else:
    np = lazy("numpy")
    torch = lazy("torch")

SUBDIR = Path("MNIST") / "raw"
_IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}  # unsigned-byte idx files of 3 (images) or 1 (labels) dims
EXPECTED = {"train": 60000, "t10k": 10000}


def official_files() -> dict[str, str]:
    """``{file name: md5}`` of the official gzip files, as torchvision checks them."""
    from torchvision.datasets import MNIST

    return {name: md5 for name, md5 in MNIST.resources}


def mirrors() -> list[str]:
    from torchvision.datasets import MNIST

    return list(MNIST.mirrors)


def _hint(root: Path) -> str:
    return (f"copy the official MNIST files (train-images-idx3-ubyte.gz, ...) to {root / SUBDIR}/ "
            f"or pass --data-dir (or set {store.DATA_ENV}) to a directory that has MNIST/raw/")


def parse_idx(raw: bytes, *, ndim: int, count: int, path: Path, hint: str) -> np.ndarray:
    """Decode an unsigned-byte idx file; a wrong header or length is a :class:`DataError`."""
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"MNIST: {path} is truncated (no idx header); {hint}")
    magic = int.from_bytes(raw[:4], "big")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if magic != _IDX_MAGIC[ndim] or dims[0] != count:
        raise DataError(f"MNIST: {path} is not the expected idx file (magic {magic:#x}, dims {dims}); {hint}")
    size = int(np.prod(dims))
    if len(raw) != header + size:
        raise DataError(f"MNIST: {path} is truncated or corrupt ({len(raw) - header} of {size} bytes); {hint}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_file(root: Path, name: str, md5: str, *, verified: list[str]) -> bytes:
    """The decompressed bytes of one official file (downloaded if missing, md5-verified)."""
    hint = _hint(root)
    gz = root / SUBDIR / name
    unpacked = gz.with_suffix("")  # what torchvision leaves after unpacking
    if not gz.is_file() and unpacked.is_file():
        # There is no official checksum of an unpacked file, so it cannot be verified: refused
        # rather than reported as the official data.
        raise DataError(f"MNIST: found {unpacked} but not {gz.name}, and only the official gzip files can be "
                        f"verified (md5); put {gz.name} next to it; {hint}")
    if not gz.is_file():
        store.download_verified([m + name for m in mirrors()], gz, md5, what="MNIST", hint=hint)
    try:
        got = store.md5sum(gz)
    except OSError as exc:
        raise store.guarded("MNIST", gz, hint)(exc) from None
    if got != md5:
        raise DataError(f"MNIST: {gz} has the wrong md5 sum ({got}, official {md5}): truncated or "
                        f"not the official file; delete it and {hint}")
    verified.append(name)
    try:
        return gzip.decompress(gz.read_bytes())
    except (OSError, EOFError, zlib.error) as exc:
        raise store.guarded("MNIST", gz, hint)(exc) from None


def load_split(root: Path, split: str, *, verified: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (``N x 1 x 28 x 28`` float in [0, 1]) and digit labels of ``train`` or ``t10k``."""
    files = official_files()
    count = EXPECTED[split]
    hint = _hint(root)
    img_name, lab_name = f"{split}-images-idx3-ubyte.gz", f"{split}-labels-idx1-ubyte.gz"
    images = parse_idx(read_file(root, img_name, files[img_name], verified=verified), ndim=3, count=count,
                       path=root / SUBDIR / img_name, hint=hint)
    labels = parse_idx(read_file(root, lab_name, files[lab_name], verified=verified), ndim=1, count=count,
                       path=root / SUBDIR / lab_name, hint=hint)
    if labels.max() > 9:
        raise DataError(f"MNIST: {root / SUBDIR / lab_name} has labels outside 0..9; {hint}")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


@task_kind
class MNISTDigits:
    """Task kind ``mnist``: official MNIST, ten digit clusters, ``positive_classes`` = ``J+``."""

    name: ClassVar[str] = "mnist"
    defaults: ClassVar[Mapping[str, Any]] = {
        "positive_classes": (0, 1, 2, 3, 4),
        "n_train": 0,  # 0 = all 60000; else a seeded class-balanced subset
        "n_test": 0,  # 0 = all 10000
    }
    bounds: ClassVar[Mapping[str, tuple[float | None, float | None]]] = {
        "positive_classes": (0, 9), "n_train": (0, store.MAX_IMAGES), "n_test": (0, store.MAX_IMAGES),
    }

    def load(
        self, params: Params, *, seed: int, data_dir: str | None, progress: ProgressFn
    ) -> TaskData:
        pos = store.positive_classes(params, 10, task="mnist")
        n_train, n_test = store.subset_sizes(params, task="mnist")
        root = store.resolve_data_dir(data_dir)
        verified: list[str] = []
        x_tr, j_tr = load_split(root, "train", verified=verified)
        progress("data", 1, 2)
        x_te, j_te = load_split(root, "t10k", verified=verified)
        progress("data", 2, 2)
        return store.image_task_data(
            self.name, (x_tr, j_tr), (x_te, j_te), n_train=n_train, n_test=n_test, seed=seed,
            positive=pos, class_names=tuple(str(d) for d in range(10)),
            info={
                "source": "MNIST (official idx files)",
                "data_dir": str(root / SUBDIR),
                "verified_md5": sorted(verified),
            },
        )
