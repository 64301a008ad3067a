"""Backbones: cnn, resnet18 and robustbench zoo models; on-disk caching; one-line errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from _realdata import make_data_dir
from fabench import cache
from fabench.cli import main
from fabench.data import cifar, mnist, store
from fabench.errors import ConfigError, DataError, UnknownNameError
from fabench.models import trained
from fabench.models.backbones import BACKBONE_PARAMS, build_backbone
from fabench.recipes.common import setup_head
from fabench.types import FitContext, TaskData, no_progress

pytestmark = pytest.mark.realdata

FAST = {**BACKBONE_PARAMS, "backbone": "cnn", "backbone_epochs": 1, "backbone_width": 4,
        "backbone_batch_size": 100}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data_dir(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def mnist_small(data_dir: Path) -> TaskData:
    return mnist.MNISTDigits().load({**mnist.MNISTDigits.defaults, "n_train": 600, "n_test": 100}, seed=0,
                                    data_dir=str(data_dir), progress=no_progress)


@pytest.fixture(scope="module")
def cifar_tiny(data_dir: Path) -> TaskData:
    return cifar.CIFAR10Images().load({**cifar.CIFAR10Images.defaults, "n_train": 40, "n_test": 20}, seed=0,
                                      data_dir=str(data_dir), progress=no_progress)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(store.OFFLINE_ENV, "1")


@pytest.fixture
def train_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts backbone trainings (the real training still runs)."""
    calls: list[str] = []
    real = trained.train_fine_labels

    def counting(*args: Any, **kwargs: Any) -> list[float]:
        calls.append(str(kwargs.get("stage")))
        return real(*args, **kwargs)

    monkeypatch.setattr(trained, "train_fine_labels", counting)
    return calls


def test_cache_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(cache.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root(None) == tmp_path / "xdg" / "fabench"
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "env"))
    assert cache.cache_root(None) == tmp_path / "env"
    assert cache.cache_root(str(tmp_path / "ctx")) == tmp_path / "ctx"


def test_unknown_backbone_is_one_line(mnist_small: TaskData, tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError) as err:
        build_backbone(mnist_small, {"backbone": "cnnn"}, context=FitContext(seed=0))
    msg = str(err.value)
    assert "\n" not in msg and "'cnnn'" in msg and "did you mean 'cnn'" in msg


def test_unknown_backbone_via_cli(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["evaluate", "--task", "mnist5v5", "--recipe", "fine", "--set", "backbone=vgg99",
               "--data-dir", str(data_dir), "--out", str(tmp_path), "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "unknown backbone 'vgg99'" in err


def test_cnn_trains_caches_and_reuses(mnist_small: TaskData, tmp_path: Path, train_calls: list[str]) -> None:
    ctx = FitContext(seed=0, cache_dir=str(tmp_path))
    first = setup_head(mnist_small, FAST, context=ctx)
    assert train_calls == ["train backbone cnn"]
    assert first.z_train.shape == (600, 128) and first.info["backbone"]["cache"] == "miss"
    assert first.info["backbone"]["features_cache"] == "miss"
    assert "backbone cnn (train)" in first.info["timings"] and "extract features" in first.info["timings"]
    assert all(not p.requires_grad for p in first.backbone.parameters())  # type: ignore[union-attr]
    files = sorted(p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*.pt"))
    assert files == ["backbones", "features"]
    # a second recipe on the same backbone: no training, no extraction
    second = setup_head(mnist_small, {**FAST, "m": 99}, context=ctx)
    assert train_calls == ["train backbone cnn"]
    assert second.info["backbone"]["cache"] == "hit" and second.info["backbone"]["features_cache"] == "hit"
    # where the cached weights were trained travels with them (the key holds no device)
    assert first.info["backbone"]["trained_on"] == f"cpu (1 thread), torch {torch.__version__}"
    assert second.info["backbone"]["trained_on"] == first.info["backbone"]["trained_on"]
    assert "backbone cnn (load)" in second.info["timings"] and "load features" in second.info["timings"]
    assert torch.equal(first.z_train, second.z_train)
    x = mnist_small.x_test[:8]
    assert torch.allclose(first.backbone(x), second.backbone(x), atol=1e-6)  # type: ignore[misc]
    # anything that determines the backbone changes the key: retrain
    third = setup_head(mnist_small, {**FAST, "backbone_lr": 0.01}, context=ctx)
    assert len(train_calls) == 2 and third.info["backbone"]["cache"] == "miss"
    # other data (same name) also changes the key
    other = dataclasses.replace(mnist_small, x_train=mnist_small.x_train.flip(0).contiguous())
    setup_head(other, FAST, context=ctx)
    assert len(train_calls) == 3


def test_corrupt_cache_entry_is_a_miss(mnist_small: TaskData, tmp_path: Path, train_calls: list[str]) -> None:
    ctx = FitContext(seed=0, cache_dir=str(tmp_path))
    setup_head(mnist_small, FAST, context=ctx)
    for p in tmp_path.rglob("*.pt"):
        p.write_bytes(p.read_bytes()[:100])  # truncated entries
    again = setup_head(mnist_small, FAST, context=ctx)
    assert len(train_calls) == 2 and again.info["backbone"]["cache"] == "miss"
    assert not list(tmp_path.rglob(".tmp-*"))  # atomic writes leave no temporaries


def test_cnn_normalises_inside_and_attacks_see_pixels(mnist_small: TaskData, tmp_path: Path) -> None:
    from fabench.models import BinaryHead, Classifier

    s = setup_head(mnist_small, FAST, context=FitContext(seed=0, cache_dir=str(tmp_path)))
    assert s.backbone is not None
    built = build_backbone(mnist_small, FAST, context=FitContext(seed=0, cache_dir=str(tmp_path)))
    norm = built[0]  # type: ignore[index]
    assert abs(float(norm.mean.flatten()[0]) - float(mnist_small.x_train.mean())) < 1e-4
    model = Classifier(BinaryHead(s.dim, 3, init_std=0.1, generator=s.generator), s.backbone)
    x = mnist_small.x_test[:4].clone().requires_grad_(True)
    model(x)[:, 1].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # gradients reach the pixels


def test_resnet18_cifar_stem(cifar_tiny: TaskData, tmp_path: Path, train_calls: list[str]) -> None:
    params = {**BACKBONE_PARAMS, "backbone": "resnet18", "backbone_epochs": 1, "backbone_batch_size": 20}
    s = setup_head(cifar_tiny, params, context=FitContext(seed=0, cache_dir=str(tmp_path)))
    assert s.z_train.shape == (40, 512) and train_calls == ["train backbone resnet18"]
    # what the evaluation runs: all 20 batch norms folded into their convolutions
    assert s.info["backbone"]["inference"].startswith("20 of 20 batch norms folded, channels_last")
    body = build_backbone(cifar_tiny, params, context=FitContext(seed=0, cache_dir=str(tmp_path)))[1]  # type: ignore[index]
    assert body.conv1.kernel_size == (3, 3) and body.conv1.stride == (1, 1)
    assert isinstance(body.maxpool, torch.nn.Identity)


def test_resnet18_pretrained_needs_local_weights(cifar_tiny: TaskData, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    params = {**BACKBONE_PARAMS, "backbone": "resnet18", "backbone_pretrained": True}
    with pytest.raises(DataError, match="network is needed") as err:
        build_backbone(cifar_tiny, params, context=FitContext(seed=0, cache_dir=str(tmp_path)))
    assert "\n" not in str(err.value)


def test_cnn_rejects_non_images(tmp_path: Path) -> None:
    from fabench.data.synthetic import SyntheticClusters

    d = SyntheticClusters().load({**SyntheticClusters.defaults, "d": 20, "n_train": 10, "n_test": 5}, seed=0,
                                 data_dir=None, progress=no_progress)
    with pytest.raises(ConfigError, match="image inputs"):
        build_backbone(d, {**FAST}, context=FitContext(seed=0, cache_dir=str(tmp_path)))


# -- RobustBench -----------------------------------------------------------------------------
ZOO_NAME = "Sehwag2021Proxy_R18"  # an L2 adversarially trained ResNet-18 of the zoo (small to save)


def test_robustbench_import_does_not_need_autoattack() -> None:
    from fabench.models.zoo import import_robustbench_utils, zoo_models

    utils = import_robustbench_utils()
    assert callable(utils.load_model)
    assert "Standard" in zoo_models("L2") and ZOO_NAME in zoo_models("L2")


def test_robustbench_loads_a_local_checkpoint(cifar_tiny: TaskData, tmp_path: Path) -> None:
    """The real loading path (robustbench.utils.load_model) on a checkpoint saved where it looks."""
    from fabench.models.zoo import import_robustbench_utils

    import_robustbench_utils()  # a plain `import robustbench` needs `autoattack`, not on PyPI
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    from fabench.models.zoo import checkpoint_path

    torch.manual_seed(0)
    reference = model_dicts[BenchmarkDataset.cifar_10][ThreatModel.L2][ZOO_NAME]["model"]().eval()
    ckpt = checkpoint_path(tmp_path / "robustbench", ZOO_NAME, "L2")
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, ckpt)
    params = {**BACKBONE_PARAMS, "backbone": f"robustbench:{ZOO_NAME}"}
    s = setup_head(cifar_tiny, params, context=FitContext(seed=0, cache_dir=str(tmp_path)))
    assert s.info["backbone"]["cache"] == "hit" and s.info["backbone"]["features_cache"] == "miss"
    assert s.z_train.shape == (40, 512)
    # its features come from a forward hook, which torch.fx would skip: evaluated as built
    assert s.info["backbone"]["inference"].startswith("as built (torch.fx cannot trace it: ")
    x = cifar_tiny.x_test[:4]
    with torch.no_grad():  # the hooked features are what the zoo model's last layer sees
        expected = reference.linear(s.backbone(x)) if hasattr(reference, "linear") else None  # type: ignore[misc]
        assert expected is not None and torch.allclose(expected, reference(x), atol=1e-4)
    again = setup_head(cifar_tiny, params, context=FitContext(seed=0, cache_dir=str(tmp_path)))
    assert again.info["backbone"]["features_cache"] == "hit"


def test_robustbench_without_checkpoint_says_network_needed(cifar_tiny: TaskData, tmp_path: Path) -> None:
    params = {**BACKBONE_PARAMS, "backbone": "robustbench:Standard"}
    with pytest.raises(DataError) as err:
        build_backbone(cifar_tiny, params, context=FitContext(seed=0, cache_dir=str(tmp_path)))
    msg = str(err.value)
    assert "\n" not in msg and "needs the network" in msg
    assert str(tmp_path / "robustbench" / "cifar10" / "L2" / "Standard.pt") in msg


def test_robustbench_unknown_model_and_wrong_task(cifar_tiny: TaskData, mnist_small: TaskData, tmp_path: Path) -> None:
    ctx = FitContext(seed=0, cache_dir=str(tmp_path))
    with pytest.raises(UnknownNameError, match="did you mean robustbench:Standard"):
        build_backbone(cifar_tiny, {**BACKBONE_PARAMS, "backbone": "robustbench:Standardd"}, context=ctx)
    with pytest.raises(ConfigError, match="CIFAR-10 images"):
        build_backbone(mnist_small, {**BACKBONE_PARAMS, "backbone": "robustbench:Standard"}, context=ctx)


def test_cache_entry_from_before_the_device_was_recorded_says_none(
    mnist_small: TaskData, tmp_path: Path, train_calls: list[str]
) -> None:
    ctx = FitContext(seed=0, cache_dir=str(tmp_path))
    setup_head(mnist_small, FAST, context=ctx)
    (path,) = (tmp_path / "backbones").glob("*.pt")
    entry = cache.load_entry(path)
    assert entry is not None and entry.pop("trained_on").startswith("cpu (1 thread), torch ")
    assert cache.save_entry(path, entry)  # as an older fabench wrote it
    again = setup_head(mnist_small, {**FAST, "m": 7}, context=ctx)
    assert train_calls == ["train backbone cnn"] and again.info["backbone"]["cache"] == "hit"
    assert again.info["backbone"]["trained_on"] is None


@pytest.mark.parametrize("pinned", [True, False])
def test_backbone_weights_do_not_depend_on_the_thread_count(
    mnist_small: TaskData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pinned: bool
) -> None:
    """A CPU trains every backbone at ``TRAINING_THREADS`` threads, so ``--threads 1`` and
    ``--threads 2`` train the same weights, bit for bit, and the process's count is restored after.
    Unpinned (the control), the convolutions' weight gradients are summed in per-thread partial
    sums and the same training ends elsewhere: the check can fail."""
    import contextlib

    from fabench.device import TRAINING_THREADS

    if not pinned:
        monkeypatch.setattr(trained, "training_threads", lambda device: contextlib.nullcontext(0))
    before = torch.get_num_threads()
    weights = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            s = setup_head(mnist_small, FAST, context=FitContext(seed=0, cache_dir=str(tmp_path / str(threads))))
            assert s.info["backbone"]["cache"] == "miss" and torch.get_num_threads() == threads
            weights.append(torch.cat([p.detach().flatten() for p in s.backbone.parameters()]))  # type: ignore[union-attr]
    finally:
        torch.set_num_threads(before)
    assert TRAINING_THREADS == 1
    if not pinned and torch.equal(weights[0], weights[1]):
        pytest.skip("this CPU's kernels sum the weight gradients alike at 1 and 2 threads: no control here")
    assert torch.equal(weights[0], weights[1]) == pinned
