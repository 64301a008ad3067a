"""Task kind ``cifar10``: CIFAR-10 images as a binary task with ten fine classes.

The ten classes are the clusters ``j`` of Definition 2.1 (Li, Pan, Lyu, Li, ICLR 2025);
``positive_classes`` is ``J+`` (airplane, automobile, bird, cat, deer for ``cifar5v5``). Inputs
are pixels in ``[0, 1]`` (``N x 3 x 32 x 32``); the input-space features ``mu_j`` are the
class-mean training images (the paper's real-data experiments, Figure 3).

The loader reads the official python batches (``cifar-10-batches-py/data_batch_1..5``,
``test_batch``, ``batches.meta``) itself, with a restricted unpickler that only rebuilds numpy
arrays. A batch of the official length (10000 images) must have the official md5 sum (the one in
``torchvision.datasets.CIFAR10``); a shorter batch is accepted as a *subset* of the real data, and
the task data then says so (``info['data_subset'] = True`` with the counts), as does every record
made from it. When no batches are found they are downloaded (verified archive, unpacked into a
temporary directory and moved into place) unless offline.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import tarfile
import tempfile
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

FOLDER = "cifar-10-batches-py"
#: Where a CIFAR folder may sit inside the data directory (the official name first).
CANDIDATES = (Path(FOLDER), Path("cifar-10-subset") / FOLDER)
OFFICIAL_BATCH_LEN = 10000
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("copy_reg", "_reconstructor"),
    ("copyreg", "_reconstructor"),
    ("__builtin__", "object"),
    ("builtins", "object"),
    ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
}


def official() -> tuple[dict[str, str], dict[str, str], dict[str, str], str, str]:
    """``(train md5s, test md5s, meta, archive url, archive md5)`` from torchvision's ``CIFAR10``."""
    from torchvision.datasets import CIFAR10

    return (dict((n, m) for n, m in CIFAR10.train_list), dict((n, m) for n, m in CIFAR10.test_list),
            dict(CIFAR10.meta), CIFAR10.url, CIFAR10.tgz_md5)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts of lists, strings and numpy arrays only (no arbitrary code)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        elif module in ("copy_reg", "__builtin__"):
            module = {"copy_reg": "copyreg", "__builtin__": "builtins"}[module]
        return super().find_class(module, name)


def _unpickle(path: Path, hint: str) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise store.guarded("CIFAR-10", path, hint)(exc) from None
    try:
        obj = _ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as exc:  # truncated or corrupt pickles raise many different types
        raise DataError(f"CIFAR-10: {path} is truncated or corrupt ({type(exc).__name__}); {hint}") from None
    if not isinstance(obj, dict):
        raise DataError(f"CIFAR-10: {path} is not a CIFAR batch (no dict inside); {hint}")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def find_folder(root: Path) -> Path | None:
    for c in CANDIDATES:
        if (root / c).is_dir():
            return root / c
    return None


def download(root: Path, hint: str) -> Path:
    """Fetch and unpack the official archive into ``root/cifar-10-batches-py`` (atomically)."""
    _, _, _, url, tgz_md5 = official()
    archive = root / "cifar-10-python.tar.gz"
    if not archive.is_file():
        store.download_verified([url], archive, tgz_md5, what="CIFAR-10", hint=hint)
    elif store.md5sum(archive) != tgz_md5:
        raise DataError(f"CIFAR-10: {archive} has the wrong md5 sum; delete it and {hint}")
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=root))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(tmp, filter="data")
        os.replace(tmp / FOLDER, root / FOLDER)
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise DataError(f"CIFAR-10: cannot unpack {archive} ({type(exc).__name__}); delete it and {hint}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root / FOLDER


def read_batch(path: Path, md5: str, *, hint: str, verified: list[str]) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(images N x 3072 uint8, labels, is_subset)`` of one batch, verified as described above."""
    if not path.is_file():
        raise DataError(f"CIFAR-10: {path} is missing; {hint}")
    try:
        official_md5 = store.md5sum(path) == md5
    except OSError as exc:
        raise store.guarded("CIFAR-10", path, hint)(exc) from None
    batch = _unpickle(path, hint)
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"CIFAR-10: {path} has no uint8 N x 3072 'data' array; {hint}")
    lab = np.asarray(labels if labels is not None else [], dtype=np.int64)
    if lab.shape != (len(data),) or (len(lab) and (lab.min() < 0 or lab.max() > 9)):
        raise DataError(f"CIFAR-10: {path} has {len(lab)} labels in 0..9 for {len(data)} images; {hint}")
    if official_md5:
        verified.append(path.name)
        return data, lab, False
    if len(data) == OFFICIAL_BATCH_LEN:
        raise DataError(f"CIFAR-10: {path} has the official length but the wrong md5 sum (official {md5}): "
                        f"not the official file; delete it and {hint}")
    return data, lab, True


def read_meta(folder: Path, meta: Mapping[str, str], *, hint: str, verified: list[str]) -> tuple[str, ...]:
    path = folder / meta["filename"]
    if not path.is_file():
        raise DataError(f"CIFAR-10: {path} is missing; {hint}")
    names = _unpickle(path, hint).get(meta["key"])
    if not isinstance(names, list) or len(names) != 10:
        raise DataError(f"CIFAR-10: {path} has no list of 10 {meta['key']}; {hint}")
    if store.md5sum(path) == meta["md5"]:
        verified.append(path.name)
    return tuple(str(n) for n in names)


@task_kind
class CIFAR10Images:
    """Task kind ``cifar10``: CIFAR-10 (official batches or a subset of them), ten clusters."""

    name: ClassVar[str] = "cifar10"
    defaults: ClassVar[Mapping[str, Any]] = {
        "positive_classes": (0, 1, 2, 3, 4),
        "n_train": 0,  # 0 = every image in the batches; else a seeded class-balanced subset
        "n_test": 0,
    }
    bounds: ClassVar[Mapping[str, tuple[float | None, float | None]]] = {
        "positive_classes": (0, 9), "n_train": (0, store.MAX_IMAGES), "n_test": (0, store.MAX_IMAGES),
    }

    def load(
        self, params: Params, *, seed: int, data_dir: str | None, progress: ProgressFn
    ) -> TaskData:
        pos = store.positive_classes(params, 10, task="cifar10")
        n_train, n_test = store.subset_sizes(params, task="cifar10")
        root = store.resolve_data_dir(data_dir)
        hint = (f"copy the official python batches (data_batch_1..5, test_batch, batches.meta) to "
                f"{root / FOLDER}/ or pass --data-dir (or set {store.DATA_ENV}) to a directory that has them")
        train_md5, test_md5, meta, _, _ = official()
        folder = find_folder(root)
        if folder is None:
            folder = download(root, hint)
        hint = hint.replace(str(root / FOLDER), str(folder))
        verified: list[str] = []
        parts: dict[str, list[tuple[np.ndarray, np.ndarray, bool]]] = {"train": [], "test": []}
        files = [("train", n, m) for n, m in train_md5.items()] + [("test", n, m) for n, m in test_md5.items()]
        for i, (split, name, md5) in enumerate(files):
            parts[split].append(read_batch(folder / name, md5, hint=hint, verified=verified))
            progress("data", i + 1, len(files))
        class_names = read_meta(folder, meta, hint=hint, verified=verified)

        def join(split: str) -> tuple[torch.Tensor, torch.Tensor]:
            x = np.concatenate([p[0] for p in parts[split]]).reshape(-1, 3, 32, 32)
            y = np.concatenate([p[1] for p in parts[split]])
            return torch.from_numpy(x.astype(np.float32) / 255.0), torch.from_numpy(y)

        x_tr, j_tr = join("train")
        x_te, j_te = join("test")
        files_subset = any(p[2] for ps in parts.values() for p in ps)
        reason = (f"batches shorter than the official {OFFICIAL_BATCH_LEN} images "
                  f"({len(j_tr)} train / {len(j_te)} test of 50000 / 10000)") if files_subset else ""
        return store.image_task_data(
            self.name, (x_tr, j_tr), (x_te, j_te), n_train=n_train, n_test=n_test, seed=seed,
            positive=pos, class_names=class_names, files_subset_reason=reason,
            info={
                "source": "CIFAR-10 (python batches)",
                "data_dir": str(folder),
                "verified_md5": sorted(verified),
                "batch_sizes": {name: int(len(p[0])) for (_, name, _), p in
                                zip(files, parts["train"] + parts["test"])},
            },
        )
