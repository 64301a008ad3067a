"""RobustBench model-zoo classifiers as frozen feature extractors (``robustbench:<name>``).

A zoo model (e.g. ``Standard``, or an L2 adversarially trained one such as
``Sehwag2021Proxy_R18``) maps CIFAR-10 images in ``[0, 1]`` to logits, with any normalisation
inside. Its penultimate features, the input of its last linear layer, are what the paper's heads
see (Li, Pan, Lyu, Li, ICLR 2025, real-data experiments), so a zoo backbone shows whether feature averaging in
the head costs robustness on top of a (robust or standard) representation.

Weights come from the network on first use (``robustbench.utils.load_model`` downloads them into
``CACHE/robustbench/<dataset>/<threat model>/<name>.pt``); later runs, and offline runs with a
checkpoint placed there, load that file.
"""

from __future__ import annotations

import importlib.util
import sys
import time
import types
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fabench import cache
from fabench.data import store
from fabench.errors import ConfigError, DataError, UnknownNameError

DATASET = "cifar10"
INPUT_SHAPE = (3, 32, 32)
THREAT_MODELS = ("L2", "Linf", "corruptions")


def import_robustbench_utils() -> Any:
    """Import ``robustbench.utils`` (and the model zoo) without running ``robustbench/__init__``.

    ``robustbench/__init__`` imports ``robustbench.eval``, which imports the ``autoattack``
    package; that package is not on PyPI (only ``pyautoattack`` is), so a plain
    ``import robustbench`` fails here. We need none of the evaluation code, only the model zoo and
    its loader, so we put a bare package module with robustbench's ``__path__`` in
    ``sys.modules``: submodule imports then work and ``__init__`` never runs. If the real package
    was already imported (because ``autoattack`` is installed), it is used as it is.
    """
    if "robustbench.utils" in sys.modules:
        return sys.modules["robustbench.utils"]
    if "robustbench" not in sys.modules:
        spec = importlib.util.find_spec("robustbench")
        if spec is None or spec.submodule_search_locations is None:
            raise DataError("the robustbench backbone needs the robustbench package: pip install robustbench")
        pkg = types.ModuleType("robustbench")
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__spec__ = spec
        pkg.__file__ = spec.origin
        sys.modules["robustbench"] = pkg
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pkg_resources and torch.jit deprecation warnings
        import robustbench.utils as utils

    return utils


def zoo_models(threat_model: str) -> list[str]:
    """Names of the CIFAR-10 zoo models for ``threat_model``."""
    import_robustbench_utils()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    return list(model_dicts[BenchmarkDataset(DATASET)][ThreatModel(threat_model)])


def checkpoint_path(model_dir: Path, name: str, threat_model: str) -> Path:
    """Where ``robustbench.utils.load_model`` looks for (and downloads) a zoo checkpoint."""
    return model_dir / DATASET / threat_model / f"{name}.pt"


class Penultimate(nn.Module):
    """The input of a model's last ``nn.Linear`` (its penultimate features), via a forward hook.

    The full model runs (so it stays exactly the zoo's code); the hook keeps the tensor that
    enters the last linear layer, and gradients flow through it for the attacks.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ConfigError(f"{type(model).__name__} has no linear layer to take features from")
        self._captured: list[torch.Tensor] = []
        linears[-1].register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self._captured.append(inputs[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._captured.clear()
        self.model(x)
        if not self._captured:  # pragma: no cover - the last linear layer always runs
            raise RuntimeError("the zoo model did not call its last linear layer")
        z = self._captured[-1].flatten(1)
        self._captured.clear()
        return z


def load_zoo_backbone(name: str, *, threat_model: str, cache_dir: str | None, input_shape: tuple[int, ...]) -> nn.Module:
    """Load ``name`` from the RobustBench zoo as a frozen :class:`Penultimate` extractor."""
    if tuple(input_shape) != INPUT_SHAPE:
        raise ConfigError(f"robustbench:{name} takes CIFAR-10 images {INPUT_SHAPE}, the task has {tuple(input_shape)}")
    if threat_model not in THREAT_MODELS:
        raise ConfigError(f"backbone_threat_model must be one of {', '.join(THREAT_MODELS)}, got {threat_model!r}")
    t0 = time.perf_counter()
    utils = import_robustbench_utils()
    known = zoo_models(threat_model)
    if name not in known:
        import difflib

        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean robustbench:{close[0]}?" if close else ""
        raise UnknownNameError(f"no RobustBench CIFAR-10 {threat_model} model {name!r}{hint} "
                               f"(e.g. {', '.join(known[:4])}, ...)")
    model_dir = cache.cache_root(cache_dir) / "robustbench"
    ckpt = checkpoint_path(model_dir, name, threat_model)
    hit = ckpt.is_file()
    if not hit and store.offline():
        raise DataError(f"robustbench:{name} needs the network on first use to download its weights to {ckpt} "
                        f"(downloads are disabled by {store.OFFLINE_ENV}=1); place the checkpoint there or go online")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = utils.load_model(model_name=name, model_dir=str(model_dir), dataset=DATASET,
                                     threat_model=threat_model)
    except Exception as exc:  # download (gdown/requests) and loading errors come in many types
        if not hit:
            raise DataError(f"robustbench:{name}: could not download its weights to {ckpt}; the network is "
                            f"needed on first use ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        raise DataError(f"robustbench:{name}: cannot load {ckpt} ({type(exc).__name__}); delete it to download again") from None
    model.eval()
    extractor = Penultimate(model)
    stat = ckpt.stat() if ckpt.is_file() else None
    setattr(extractor, "build_info", {
        "name": f"robustbench:{name}", "threat_model": threat_model, "path": str(ckpt),
        "cache": "hit" if hit else "downloaded",
        "key": cache.hash_key({"what": "robustbench", "name": name, "threat_model": threat_model,
                               "checkpoint": [stat.st_size, stat.st_mtime_ns] if stat else None}),
        "timings": {f"backbone robustbench:{name} (load)": time.perf_counter() - t0},
    })
    return extractor
