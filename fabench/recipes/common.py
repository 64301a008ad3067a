"""What the head recipes share: the backbone, the head's training inputs, the seeded init.

The heads of the paper (Li, Pan, Lyu, Li, ICLR 2025) are trained on fixed inputs: the pixels, or
a frozen backbone's penultimate features. Those features are extracted once per backbone and
training set and cached on disk (:mod:`fabench.cache`), keyed by the backbone's own cache key and
a content fingerprint of the training images, so a second recipe neither retrains nor re-extracts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fabench._lazy import lazy, no_grad
from fabench import cache
from fabench.metrics import class_means
from fabench.models.backbones import build_backbone, head_inputs, inference_form
from fabench.recipes.training import convergence
from fabench.types import FitContext, Params, TaskData

if TYPE_CHECKING:  # pragma: no cover - heavy imports are lazy (see fabench._lazy)
    import torch
    from torch import nn

    from fabench.models.heads import Head
else:
    torch = lazy("torch")
    nn = lazy("torch.nn")

FEATURES_CODE_VERSION = 1
#: Training inputs on which the backbone's inference form is checked against the backbone.
PROBE_INPUTS = 64


@dataclass
class HeadSetup:
    backbone: nn.Module | None
    z_train: torch.Tensor
    """The head's training inputs, on :attr:`device`."""
    generator: torch.Generator
    """A CPU generator: initialise a head on the CPU, then move it, so the initial weights do not
    depend on the device."""
    info: dict[str, Any] = field(default_factory=dict)
    """For ``Classifier.info``: ``timings`` (stage -> seconds) and ``backbone`` (its build info)."""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    """Where the head trains (``FitContext.device``); the backbone is already there."""

    @property
    def dim(self) -> int:
        return int(self.z_train.shape[1])

    def feature_means(self, data: TaskData) -> torch.Tensor:
        """The features ``mu_j`` as the head sees them: the task's own features when the head sees
        the input, else the class means of the (cached) training features. On the CPU."""
        if self.backbone is None:
            return data.features.flatten(1).float()
        return class_means(self.z_train.cpu(), data.fine_train.cpu(), data.num_classes)


def extract_features(
    backbone: nn.Module | None, data: TaskData, *, context: FitContext, timings: dict[str, float],
) -> tuple[torch.Tensor, str]:
    """The head's training inputs ``backbone(x_train)``: from the cache, or extracted and cached.

    Returns ``(z_train, how)`` with ``how`` one of ``pixels``, ``hit``, ``miss``, ``uncached``.
    """
    if backbone is None:
        return head_inputs(None, data.x_train), "pixels"
    build = dict(getattr(backbone, "build_info", {}))
    t0 = time.perf_counter()
    if "key" not in build:  # a plugin backbone without a cache key: always extract
        z = head_inputs(backbone, data.x_train)
        timings["extract features"] = time.perf_counter() - t0
        return z, "uncached"
    key = cache.hash_key({"what": "features", "version": FEATURES_CODE_VERSION, "backbone": build["key"],
                          "x_train": cache.tensor_fingerprint(data.x_train)})
    path = cache.entry_path(cache.cache_root(context.cache_dir), "features", key, label=str(build.get("name", "")))
    entry = cache.load_entry(path)
    cached = entry.get("z") if entry is not None else None
    if isinstance(cached, torch.Tensor) and cached.shape[0] == len(data.x_train):
        timings["load features"] = time.perf_counter() - t0
        return cached, "hit"
    context.progress("extract features", 0, 1)
    z = head_inputs(backbone, data.x_train)
    context.progress("extract features", 1, 1)
    timings["extract features"] = time.perf_counter() - t0
    cache.save_entry(path, {"z": z})
    return z, "miss"


def setup_head(data: TaskData, params: Params, *, context: FitContext) -> HeadSetup:
    """Build the frozen backbone, get the head's training inputs once (cached), seed the init.

    The backbone is built (trained, or loaded) and run on ``context.device``; the cached features
    are CPU tensors, moved to ``context.device`` for the head's training. The backbone handed on
    (to the classifier the evaluation runs) is its :func:`~fabench.models.backbones.inference_form`:
    the same function up to round-off, cheaper to differentiate."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    backbone = build_backbone(data, params, context=context)
    build = dict(getattr(backbone, "build_info", {})) if backbone is not None else {}
    if backbone is not None:
        timings.update(build.pop("timings", None) or {"backbone": time.perf_counter() - t0})
    z, how = extract_features(backbone, data, context=context, timings=timings)
    info: dict[str, Any] = {"timings": timings, "backbone": {"name": str(params.get("backbone", "pixels")),
                                                             **build, "features_cache": how}}
    if backbone is not None:  # the head trains on the features above, the evaluation runs this
        backbone, info["backbone"]["inference"] = inference_form(
            backbone, data.x_train[:PROBE_INPUTS], device=context.device)
    device = torch.device(context.device)
    return HeadSetup(backbone, z.to(device), torch.Generator().manual_seed(context.seed), info, device)


@no_grad
def training_report(head: Head, s: HeadSetup, data: TaskData, history: list[float]) -> dict[str, Any]:
    """``Classifier.info`` entries of a trained head: final loss, training accuracy of the binary
    decision (strict, as the protocol counts it) and the convergence verdict
    (:func:`fabench.recipes.training.convergence`), with its warning also under ``warnings``."""
    sign = data.y_train.float().to(s.device) * 2 - 1
    train_acc = float((sign * head.margin(s.z_train) > 0).float().mean()) if len(s.z_train) else float("nan")
    probe = s.info.get("backbone", {}).get("test_accuracy")
    verdict = convergence(history, train_accuracy=train_acc,
                          probe_accuracy=float(probe) if isinstance(probe, (int, float)) else None)
    out: dict[str, Any] = {"final_loss": history[-1] if history else None, "training": verdict}
    if verdict["warning"]:
        out["warnings"] = [verdict["warning"]]
    return out
