"""Real-image loaders: MNIST and CIFAR-10 from copies of ../shared/data, verification, errors."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from _realdata import make_data_dir
from fabench import registry
from fabench.cli import main
from fabench.data import cifar, mnist, store
from fabench.errors import ConfigError, DataError
from fabench.types import no_progress

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data_dir(tmp_path_factory.mktemp("data"))


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(store.OFFLINE_ENV, "1")  # no test may touch the network


def load(kind: Any, data_dir: Path, **params: Any) -> Any:
    return kind().load({**kind.defaults, **params}, seed=0, data_dir=str(data_dir), progress=no_progress)


def one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg and msg
    return msg


# -- data directory --------------------------------------------------------------------------
def test_data_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(store.DATA_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert store.resolve_data_dir(None) == tmp_path / "xdg" / "fabench" / "data"
    monkeypatch.setenv(store.DATA_ENV, str(tmp_path / "env"))
    assert store.resolve_data_dir(None) == tmp_path / "env"
    assert store.resolve_data_dir(str(tmp_path / "explicit")) == tmp_path / "explicit"
    monkeypatch.chdir(tmp_path)
    assert store.resolve_data_dir("rel") == tmp_path / "rel"  # absolute, from an explicit path only


# -- MNIST -----------------------------------------------------------------------------------
def test_mnist_full_official(data_dir: Path) -> None:
    d = load(mnist.MNISTDigits, data_dir)
    assert d.x_train.shape == (60000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert d.x_train.dtype == torch.float32 and float(d.x_train.min()) == 0.0 and float(d.x_train.max()) == 1.0
    assert d.bounds == (0.0, 1.0) and d.num_classes == 10 and d.positive_classes == (0, 1, 2, 3, 4)
    assert torch.bincount(d.fine_train).tolist()[:3] == [5923, 6742, 5958]  # the official counts
    assert d.info["data_subset"] is False
    assert d.info["verified_md5"] == sorted(mnist.official_files())
    assert d.features.shape == (10, 1, 28, 28)
    assert torch.allclose(d.features[3], d.x_train[d.fine_train == 3].mean(0), atol=1e-5)
    assert (d.y_train == (d.fine_train < 5).long()).all()
    for p in (data_dir / "MNIST" / "raw").iterdir():  # nothing written next to the data
        assert p.name.endswith(".gz")


def test_mnist_balanced_subset_is_seeded_and_flagged(data_dir: Path) -> None:
    a = load(mnist.MNISTDigits, data_dir, n_train=1000, n_test=200)
    b = load(mnist.MNISTDigits, data_dir, n_train=1000, n_test=200)
    assert torch.bincount(a.fine_train).tolist() == [100] * 10
    assert torch.bincount(a.fine_test).tolist() == [20] * 10
    assert torch.equal(a.x_train, b.x_train)
    assert a.info["data_subset"] is True and "n_train" in a.info["subset_reason"]


def test_more_images_than_the_files_hold_is_an_error_not_a_second_key(data_dir: Path) -> None:
    """``n_test`` at the number of images takes them all, as 0 does; above it (which used to be
    taken as all of them, under a key of its own) it is one error naming what the files hold."""
    assert len(load(mnist.MNISTDigits, data_dir, n_test=10000).x_test) == 10000
    with pytest.raises(ConfigError) as err:
        load(mnist.MNISTDigits, data_dir, n_test=10001)
    assert one_line(err.value) == "mnist: n_test=10001 but the files here hold 10000 test images (0 = all of them)"
    with pytest.raises(ConfigError, match="n_train=60001 but the files here hold 60000 training images"):
        load(mnist.MNISTDigits, data_dir, n_train=60001)
    with pytest.raises(ConfigError, match="n_test=1018 but the files here hold 1017 test images"):
        load(cifar.CIFAR10Images, data_dir, n_test=1018)


def test_parity_is_a_task_file_only(data_dir: Path) -> None:
    task = registry.tasks.entry("mnist-parity").obj
    assert getattr(task, "kind") == "mnist"
    d = task.load(task.meta.params, seed=0, data_dir=str(data_dir))
    assert d.positive_classes == (0, 2, 4, 6, 8) and d.name == "mnist-parity"
    assert (d.y_test == (d.fine_test % 2 == 0).long()).all()
    assert d.radii[-1] == 2.0 and len(d.radii) == 21 and d.headline_radii == (0.4, 0.8, 1.2, 1.6, 2.0)


def test_mnist_missing_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load(mnist.MNISTDigits, tmp_path)
    msg = one_line(err.value)
    assert "train-images-idx3-ubyte.gz" in msg and str(tmp_path / "MNIST" / "raw") in msg and "--data-dir" in msg
    assert not any(tmp_path.rglob("*.gz"))  # nothing half-written


def test_mnist_missing_via_cli_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["evaluate", "--task", "mnist5v5", "--recipe", "binary", "--data-dir", str(tmp_path),
               "--out", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith("fabench: error: MNIST:") and "train-images-idx3-ubyte.gz" in err


@pytest.mark.parametrize("damage", ["flip a byte", "truncate"])
def test_mnist_bad_file_is_refused(data_dir: Path, tmp_path: Path, damage: str) -> None:
    d = make_data_dir(tmp_path / "d", cifar=False)
    target = d / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(target.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        raw[100] ^= 0xFF
    target.write_bytes(bytes(raw))
    with pytest.raises(DataError) as err:
        load(mnist.MNISTDigits, d)
    msg = one_line(err.value)
    assert str(target) in msg and "wrong md5" in msg


@pytest.mark.parametrize("truncate", [0, 10])
def test_mnist_unpacked_file_without_its_gz_is_refused(tmp_path: Path, truncate: int) -> None:
    """An unpacked idx file cannot be verified (no official checksum): refused, even when intact."""
    d = make_data_dir(tmp_path / "d", cifar=False)
    gz = d / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    raw = gzip.decompress(gz.read_bytes())
    gz.unlink()
    gz.with_suffix("").write_bytes(raw[: len(raw) - truncate])  # torchvision's unpacked layout
    with pytest.raises(DataError, match="only the official gzip files can be verified"):
        load(mnist.MNISTDigits, d)


def test_bad_positive_classes(data_dir: Path) -> None:
    with pytest.raises(ConfigError):
        load(mnist.MNISTDigits, data_dir, positive_classes=(0, 1, 2, 3, 4, 5, 6, 7, 8, 9))
    with pytest.raises(ConfigError):
        load(mnist.MNISTDigits, data_dir, positive_classes=(11,))


# -- CIFAR-10 --------------------------------------------------------------------------------
def test_cifar_subset_loads_and_says_so(data_dir: Path) -> None:
    d = load(cifar.CIFAR10Images, data_dir)
    assert d.x_train.shape == (8068, 3, 32, 32) and d.x_test.shape == (1017, 3, 32, 32)
    assert float(d.x_train.min()) >= 0.0 and float(d.x_train.max()) <= 1.0
    assert d.info["data_subset"] is True
    assert d.info["n_train_available"] == 8068 and d.info["n_test_available"] == 1017
    assert d.info["batch_sizes"] == {"data_batch_1": 4000, "data_batch_2": 1017, "data_batch_3": 1017,
                                     "data_batch_4": 1017, "data_batch_5": 1017, "test_batch": 1017}
    assert d.info["verified_md5"] == ["batches.meta"]  # the subset batches cannot match the official sums
    assert d.class_names[:5] == ("airplane", "automobile", "bird", "cat", "deer")
    assert d.features.shape == (10, 3, 32, 32)
    # the first test image of the official test batch is a cat (label 3)
    assert int(d.fine_test[0]) == 3


def test_cifar_found_in_the_shared_layout(tmp_path: Path) -> None:
    root = tmp_path / "d"
    (root / "cifar-10-subset").mkdir(parents=True)
    make_data_dir(tmp_path / "tmp", mnist=False)
    os.replace(tmp_path / "tmp" / "cifar-10-batches-py", root / "cifar-10-subset" / "cifar-10-batches-py")
    d = load(cifar.CIFAR10Images, root, n_train=500, n_test=100)
    assert len(d.x_train) == 500 and torch.bincount(d.fine_train).tolist() == [50] * 10


def _write_batch(path: Path, n: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    batch = {"batch_label": "fake", "labels": rng.integers(0, 10, n).tolist(),
             "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "filenames": [f"{i}.png" for i in range(n)]}
    blob = pickle.dumps(batch, protocol=2)
    path.write_bytes(blob)
    return blob


def test_cifar_official_length_with_wrong_bytes_is_refused(tmp_path: Path) -> None:
    d = make_data_dir(tmp_path / "d", mnist=False)
    target = d / "cifar-10-batches-py" / "data_batch_2"
    _write_batch(target, cifar.OFFICIAL_BATCH_LEN)
    with pytest.raises(DataError) as err:
        load(cifar.CIFAR10Images, d)
    msg = one_line(err.value)
    assert str(target) in msg and "official length but the wrong md5" in msg


def test_cifar_official_md5_is_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch of official length whose md5 is the official one is accepted as official."""
    d = make_data_dir(tmp_path / "d", mnist=False)
    target = d / "cifar-10-batches-py" / "data_batch_2"
    blob = _write_batch(target, cifar.OFFICIAL_BATCH_LEN)
    train, test, meta, url, tgz = cifar.official()
    train["data_batch_2"] = hashlib.md5(blob).hexdigest()  # pretend these bytes are the official ones
    monkeypatch.setattr(cifar, "official", lambda: (train, test, meta, url, tgz))
    data = load(cifar.CIFAR10Images, d)
    assert data.info["verified_md5"] == ["batches.meta", "data_batch_2"]
    assert data.info["batch_sizes"]["data_batch_2"] == cifar.OFFICIAL_BATCH_LEN
    assert data.info["data_subset"] is True  # the other batches are still short


@pytest.mark.parametrize("damage", ["truncate", "garbage", "code"])
def test_cifar_corrupt_batch_is_one_clear_error(tmp_path: Path, damage: str) -> None:
    d = make_data_dir(tmp_path / "d", mnist=False)
    target = d / "cifar-10-batches-py" / "test_batch"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-5000])
    elif damage == "garbage":
        target.write_bytes(b"not a pickle at all")
    else:  # a pickle that would run code: refused by the restricted unpickler
        class Evil:
            def __reduce__(self) -> tuple[Any, ...]:
                return (os.system, ("echo pwned",))

        target.write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(DataError) as err:
        load(cifar.CIFAR10Images, d)
    msg = one_line(err.value)
    assert str(target) in msg and "truncated or corrupt" in msg


def test_cifar_missing_batch_names_it(tmp_path: Path) -> None:
    d = make_data_dir(tmp_path / "d", mnist=False)
    (d / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DataError) as err:
        load(cifar.CIFAR10Images, d)
    assert "data_batch_4" in one_line(err.value) and "--data-dir" in str(err.value)


def test_cifar_missing_offline(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load(cifar.CIFAR10Images, tmp_path)
    msg = one_line(err.value)
    assert "cifar-10-python.tar.gz" in msg and "FABENCH_OFFLINE" in msg and "--data-dir" in msg
    assert list(tmp_path.iterdir()) == []


def test_restricted_unpickler_reads_python2_style_batches(tmp_path: Path) -> None:
    p = tmp_path / "b"
    rng = np.random.default_rng(1)
    blob = pickle.dumps({b"labels": [1, 2], b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8)}, protocol=2)
    p.write_bytes(blob)
    x, y, subset = cifar.read_batch(p, "0" * 32, hint="h", verified=[])
    assert x.shape == (2, 3072) and y.tolist() == [1, 2] and subset


def test_cifar_subset_note_in_cli_and_record(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI and the record say that CIFAR-10 here is a subset (robust recipe on pixels: no training)."""
    import json

    rc = main(["evaluate", "--task", "cifar5v5", "--recipe", "robust", "--set", "backbone=pixels",
               "--attacks", "analytic", "--n-eval", "50", "--data-dir", str(data_dir),
               "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "NOTE: data subset (8068 train / 1017 test)" in out.err
    rec = json.loads(out.out)
    assert rec["data_info"]["data_subset"] is True and rec["data_info"]["n_train"] == 8068
    assert "shorter than the official" in rec["data_info"]["subset_reason"]
