"""Where real datasets live, how they are verified, and how subsets are drawn.

The data directory is, in order: ``--data-dir`` (``data_dir`` of :meth:`fabench.types.Task.load`),
the environment variable ``FABENCH_DATA``, or the per-user cache
``${XDG_CACHE_HOME:-~/.cache}/fabench/data``; never the working directory. Loaders only *read*
the data directory; the one thing they may write there is a download (to a temporary file, moved
into place with ``os.replace`` once its md5 sum is verified), so an interrupted run never leaves a
half-written file behind. ``FABENCH_OFFLINE=1`` forbids downloads.

Everything here is shared by the real-image task kinds (:mod:`fabench.data.mnist`,
:mod:`fabench.data.cifar`), whose features ``mu_j`` are the class-mean training inputs (Li, Pan,
Lyu, Li, ICLR 2025, real-data experiments).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from fabench._lazy import lazy
from fabench.errors import ConfigError, DataError
from fabench.metrics import class_means
from fabench.types import TaskData

if TYPE_CHECKING:  # pragma: no cover - heavy imports are lazy (see fabench._lazy)
    import torch
else:
    torch = lazy("torch")

DATA_ENV = "FABENCH_DATA"
OFFLINE_ENV = "FABENCH_OFFLINE"


def default_data_dir() -> Path:
    """``$FABENCH_DATA``, else ``${XDG_CACHE_HOME:-~/.cache}/fabench/data``."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "fabench" / "data"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: the explicit one, else :func:`default_data_dir` (absolute)."""
    return (Path(data_dir).expanduser() if data_dir else default_data_dir()).absolute()


def offline() -> bool:
    """True when ``FABENCH_OFFLINE`` forbids downloads."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def md5sum(path: Path, *, chunk: int = 1 << 20) -> str:
    """The md5 hex digest of a file (the official CIFAR/MNIST checksums are md5)."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download_verified(
    urls: Sequence[str], dest: Path, md5: str, *, what: str, hint: str,
) -> None:
    """Download ``dest`` from the first URL that works, verify its md5, then move it into place.

    The file is fetched into a temporary directory next to ``dest`` and only ``os.replace``-d
    once its checksum matches, so a failed or interrupted download leaves nothing behind. Raises
    :class:`DataError` (one line, naming ``dest`` and ``hint``) when offline or when every URL fails.
    """
    if offline():
        raise DataError(f"{what}: {dest} is missing and downloads are disabled ({OFFLINE_ENV}=1); {hint}")
    from torchvision.datasets.utils import download_url

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{what}: {dest} is missing and {dest.parent} is not writable ({exc.strerror}); {hint}") from None
    errors = []
    for url in urls:
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=dest.parent))
        try:
            download_url(url, str(tmp), filename=dest.name, md5=None)
            got = tmp / dest.name
            if md5sum(got) != md5:
                errors.append(f"{url}: wrong md5")
                continue
            os.replace(got, dest)
            return
        except Exception as exc:  # network errors come in many types; each becomes one line
            errors.append(f"{url}: {type(exc).__name__}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    raise DataError(
        f"{what}: {dest} is missing and could not be downloaded (the network is needed: "
        f"{'; '.join(errors)}); {hint}"
    )


#: The largest ``n_train``/``n_test`` an image task accepts (its declared range; the files bound it further).
MAX_IMAGES = 100_000_000


def class_balanced_subset(labels: torch.Tensor, n: int, *, seed: int, num_classes: int) -> torch.Tensor:
    """A seeded, class-balanced subset of ``n`` indices (sorted); all indices when ``n`` is 0.

    Each class's indices are shuffled; the subset takes the first index of every class, then the
    second, and so on (ties between classes broken at random), so class counts differ by at most
    one unless a class runs out.
    """
    total = len(labels)
    if n < 0:
        raise ConfigError(f"subset size must be >= 0 (0 = all), got {n}")
    if n == 0 or n >= total:
        return torch.arange(total)
    g = torch.Generator().manual_seed(seed)
    rank = torch.empty(total, dtype=torch.float64)
    for j in range(num_classes):
        idx = (labels == j).nonzero().squeeze(1)
        rank[idx[torch.randperm(len(idx), generator=g)]] = torch.arange(len(idx), dtype=torch.float64)
    rank += torch.rand(total, generator=g, dtype=torch.float64) * 0.5  # random tie-break within a round
    return torch.argsort(rank)[:n].sort().values


def positive_classes(params: Mapping[str, Any], num_classes: int, *, task: str) -> tuple[int, ...]:
    """``J+`` from ``params['positive_classes']``: a proper, non-empty subset of ``0..k-1``."""
    pos = tuple(sorted({int(j) for j in params["positive_classes"]}))
    if not pos or len(pos) == num_classes or not all(0 <= j < num_classes for j in pos):
        raise ConfigError(
            f"{task}: positive_classes must be a proper non-empty subset of 0..{num_classes - 1}, got {pos}"
        )
    return pos


def subset_sizes(params: Mapping[str, Any], *, task: str) -> tuple[int, int]:
    n_train, n_test = int(params["n_train"]), int(params["n_test"])
    if n_train < 0 or n_test < 0:
        raise ConfigError(f"{task}: n_train and n_test must be >= 0 (0 = all), got {n_train}, {n_test}")
    return n_train, n_test


def guarded(what: str, path: Path, hint: str) -> Callable[[BaseException], DataError]:
    """A factory of one-line :class:`DataError` for an unreadable ``path``."""

    def make(exc: BaseException) -> DataError:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc) or type(exc).__name__)
        return DataError(f"{what}: cannot read {path} ({reason}); {hint}")

    return make


def image_task_data(
    name: str,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    *,
    n_train: int,
    n_test: int,
    seed: int,
    positive: tuple[int, ...],
    class_names: tuple[str, ...],
    info: Mapping[str, Any],
    files_subset_reason: str = "",
) -> TaskData:
    """The :class:`TaskData` of a 10-class image dataset with pixels in ``[0, 1]``.

    Takes seeded class-balanced subsets (``n_train``/``n_test``; 0 = all; more than the files hold is
    a :class:`ConfigError`), uses the class-mean
    training images as the features ``mu_j``, and records whether (and why) the data is a subset:
    ``files_subset_reason`` when the files themselves are shorter than the official ones.
    """
    (x_tr, j_tr), (x_te, j_te) = train, test
    n_tr_avail, n_te_avail = len(j_tr), len(j_te)
    for what, split, asked, avail in (("n_train", "training", n_train, n_tr_avail), ("n_test", "test", n_test, n_te_avail)):
        if asked > avail:  # it would take them all, under another key than 0 (= all) for the same data
            raise ConfigError(f"{name}: {what}={asked} but the files here hold {avail} {split} images (0 = all of them)")
    tr = class_balanced_subset(j_tr, n_train, seed=seed, num_classes=10)
    te = class_balanced_subset(j_te, n_test, seed=seed + 1, num_classes=10)
    x_tr, j_tr, x_te, j_te = x_tr[tr], j_tr[tr], x_te[te], j_te[te]
    reasons = [files_subset_reason] if files_subset_reason else []
    if len(tr) < n_tr_avail or len(te) < n_te_avail:
        reasons.append("seeded class-balanced sample (n_train/n_test)")
    return TaskData(
        name=name,
        x_train=x_tr,
        fine_train=j_tr,
        x_test=x_te,
        fine_test=j_te,
        positive_classes=positive,
        num_classes=10,
        features=class_means(x_tr, j_tr, 10),
        bounds=(0.0, 1.0),
        radii=(),
        class_names=class_names,
        info={
            **info,
            "data_subset": bool(reasons),
            "subset_reason": "; ".join(reasons),
            "n_train_available": n_tr_avail,
            "n_test_available": n_te_avail,
            "feature_source": "class-mean training images",
        },
    )
