"""Backbones: what the head sees. ``pixels`` is the flattened input (no backbone).

Backbones are registered by name in :data:`BACKBONES`; a name ``prefix:rest`` is dispatched to
the builder registered for ``prefix:`` (e.g. ``robustbench:Standard``). A builder returns a frozen
``nn.Module`` mapping inputs to penultimate features, or ``None`` for the identity; the module may
carry a ``build_info`` dict (cache key, cache hit or miss, stage timings) for the record.

Built in: ``pixels``; ``cnn`` (:func:`fabench.models.cnn.small_cnn`) and ``resnet18``
(:func:`fabench.models.cnn.resnet18_cifar`), trained on the task's fine labels and cached
(:mod:`fabench.models.trained`); ``robustbench:<name>``, a RobustBench zoo model
(:mod:`fabench.models.zoo`). The heads on top are the paper's (Li, Pan, Lyu, Li, ICLR 2025).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from fabench._lazy import lazy, no_grad
from fabench.device import module_device
from fabench.errors import ConfigError, DataError, UnknownNameError
from fabench.types import FitContext, Params, TaskData

if TYPE_CHECKING:  # pragma: no cover - heavy imports are lazy (see fabench._lazy)
    import torch
    from torch import nn
else:
    torch = lazy("torch")
    nn = lazy("torch.nn")

BackboneBuilder = Callable[[str, TaskData, Params, FitContext], "nn.Module | None"]

BACKBONES: dict[str, BackboneBuilder] = {}
#: The ``backbone_*`` parameters each registered backbone reads (the others do not enter results).
BACKBONE_USES: dict[str, tuple[str, ...]] = {}

#: Parameters every head recipe accepts for its backbone (merged into the recipes' metadata).
#: ``backbone_epochs``, ``_lr``, ``_batch_size``, ``_width``, ``_augment`` (none, crop, crop+flip)
#: train ``cnn`` and ``resnet18`` (``backbone_width`` is the cnn's; ``backbone_pretrained``
#: starts ``resnet18`` from torchvision's ImageNet weights when they are in torch's hub cache);
#: ``backbone_threat_model`` picks the RobustBench leaderboard (L2, Linf, corruptions).
BACKBONE_PARAMS: dict[str, Any] = {
    "backbone": "pixels",
    "backbone_epochs": 10,
    "backbone_lr": 0.003,
    "backbone_batch_size": 128,
    "backbone_width": 16,
    "backbone_augment": "none",
    "backbone_pretrained": False,
    "backbone_threat_model": "L2",
}

#: Declared ranges and choices of :data:`BACKBONE_PARAMS` (merged into the recipes' metadata).
BACKBONE_BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "backbone_epochs": (0, 10_000), "backbone_lr": (0.0, None), "backbone_batch_size": (1, 1_000_000),
    "backbone_width": (1, 4096),
}
BACKBONE_CHOICES: dict[str, tuple[Any, ...]] = {
    "backbone_augment": ("none", "crop", "flip", "crop+flip"),
    "backbone_threat_model": ("L2", "Linf", "corruptions"),
}

#: The parameters that determine a trained backbone (its cache key).
TRAINED_BACKBONE_KEYS = ("backbone_epochs", "backbone_lr", "backbone_batch_size", "backbone_augment")


def backbone(name: str, *, uses: tuple[str, ...] = ()) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Decorator: register a backbone builder (``name`` ending in ``:`` for a prefix family) and the
    ``backbone_*`` parameters it reads."""

    def add(fn: BackboneBuilder) -> BackboneBuilder:
        BACKBONES[name] = fn
        BACKBONE_USES[name] = tuple(uses)
        return fn

    return add


def _lookup(name: str) -> str:
    """The registry key of a backbone name (``robustbench:X`` -> ``robustbench:``), or an error."""
    prefix, sep, _ = name.partition(":")
    key = prefix + sep if sep else name
    if key not in BACKBONES:
        known = sorted(BACKBONES)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownNameError(f"unknown backbone {name!r}{hint} Known backbones: {', '.join(known)}")
    return key


def effective_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` without the ``backbone_*`` parameters the chosen backbone does not read.

    A record's configuration (and so its key) then holds only what determines the result: the
    CNN's defaults, say, do not enter a pixel-space result. Unknown backbones are an error here,
    before any work is done.
    """
    if "backbone" not in params:
        return dict(params)
    uses = BACKBONE_USES[_lookup(str(params["backbone"]))]
    return {k: v for k, v in params.items() if not (k.startswith("backbone_") and k not in uses)}


@backbone("pixels")
def _pixels(name: str, data: TaskData, params: Params, context: FitContext) -> nn.Module | None:
    return None


def _settings(params: Params, *extra: str) -> dict[str, Any]:
    return {k: params.get(k, BACKBONE_PARAMS[k]) for k in (*TRAINED_BACKBONE_KEYS, *extra)}


def _image_shape(name: str, data: TaskData) -> tuple[int, int, int]:
    shape = data.input_shape
    if len(shape) != 3:
        raise ConfigError(f"backbone {name!r} needs image inputs (C x H x W); task {data.name!r} has shape {shape}")
    return (int(shape[0]), int(shape[1]), int(shape[2]))


@backbone("cnn", uses=(*TRAINED_BACKBONE_KEYS, "backbone_width"))
def _cnn(name: str, data: TaskData, params: Params, context: FitContext) -> nn.Module | None:
    from fabench.models.cnn import channel_stats, small_cnn
    from fabench.models.trained import cached_trained_backbone

    shape = _image_shape(name, data)
    if shape[1] < 8 or shape[2] < 8:
        raise ConfigError(f"backbone 'cnn' needs images of at least 8 x 8 pixels, task {data.name!r} has {shape}")
    width = int(params.get("backbone_width", BACKBONE_PARAMS["backbone_width"]))
    if width < 1:
        raise ConfigError(f"backbone_width must be >= 1, got {width}")
    mean, std = channel_stats(data.x_train)
    return cached_trained_backbone(
        "cnn", lambda: small_cnn(shape, data.num_classes, width=width, mean=mean, std=std),
        data, _settings(params, "backbone_width"), context,
    )


@backbone("resnet18", uses=(*TRAINED_BACKBONE_KEYS, "backbone_pretrained"))
def _resnet18(name: str, data: TaskData, params: Params, context: FitContext) -> nn.Module | None:
    from fabench.models.cnn import channel_stats, resnet18_cifar
    from fabench.models.trained import cached_trained_backbone

    shape = _image_shape(name, data)
    pretrained = bool(params.get("backbone_pretrained", False))
    state = imagenet_resnet18_state() if pretrained else None
    mean, std = channel_stats(data.x_train)
    return cached_trained_backbone(
        "resnet18", lambda: resnet18_cifar(shape, data.num_classes, mean=mean, std=std, imagenet_state=state),
        data, _settings(params, "backbone_pretrained"), context,
    )


def imagenet_resnet18_state() -> dict[str, torch.Tensor]:
    """torchvision's ImageNet ResNet-18 weights from torch's hub cache (there is no download here)."""
    from torchvision.models import ResNet18_Weights

    url = ResNet18_Weights.IMAGENET1K_V1.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not path.is_file():
        raise DataError(f"backbone_pretrained needs torchvision's ImageNet ResNet-18 weights at {path} "
                        f"(the network is needed to fetch them from {url}); place the file there or set "
                        f"backbone_pretrained=false")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"cannot load {path} ({type(exc).__name__}); delete it and fetch it again") from None
    return dict(state)


@backbone("robustbench:", uses=("backbone_threat_model",))
def _robustbench(name: str, data: TaskData, params: Params, context: FitContext) -> nn.Module | None:
    from fabench.models.zoo import load_zoo_backbone

    model_name = name.partition(":")[2]
    if not model_name:
        raise ConfigError("backbone 'robustbench:' needs a model name, e.g. robustbench:Standard")
    return load_zoo_backbone(
        model_name, threat_model=str(params.get("backbone_threat_model", "L2")),
        cache_dir=context.cache_dir, input_shape=data.input_shape,
    )


def build_backbone(data: TaskData, params: Params, *, context: FitContext) -> nn.Module | None:
    """Build (or load from cache) the backbone that ``params['backbone']`` names, on ``context.device``."""
    name = str(params.get("backbone", "pixels"))
    module = BACKBONES[_lookup(name)](name, data, params, context)
    if module is not None:
        module.to(context.device).eval()
        for p in module.parameters():
            p.requires_grad_(False)
    return module


def inference_form(
    module: nn.Module, probe: torch.Tensor, *, device: "torch.device | str", tolerance: float = 1e-4,
) -> tuple[nn.Module, str]:
    """The frozen backbone as the evaluation runs it, and what was done (for the record).

    Every eval-mode batch norm that follows a convolution (or linear layer) is folded into it
    (``torch.fx``: the weights scaled by ``gamma / sqrt(var + eps)``, a bias added), and on a CPU
    the activations of a convolutional net are kept in ``channels_last`` order, which oneDNN's
    convolutions run faster. The function is the same up to float32 round-off; what changes is the
    cost of the input gradient every attack step takes. Measured on a 2-core CPU: through
    ``mnist5v5``'s CNN 0.11 instead of 0.2 ms per image and through ``cifar5v5``'s 0.44 instead
    of 0.75 ms (batches of 500), through a ResNet-18 10% less (batches of 64).

    The folded module is checked on ``probe`` (a few inputs): where its features differ from the
    module's by more than ``tolerance`` (relative), or ``torch.fx`` cannot trace the module (a
    plugin's control flow; tracing also skips forward hooks, which the check catches), the module
    is returned as it is, with the reason. Only what clean accuracy, the attacks and the
    feature-space protocol run is changed: the head trains on features of the module as built (and
    cached), so a cache hit and a miss give the same head.
    """
    import warnings

    from torch.fx.experimental.optimization import fuse

    from fabench.models.cnn import ChannelsLast

    module = module.eval()
    n_bn = _batch_norms(module)
    has_conv = any(isinstance(m, nn.Conv2d) for m in module.modules())
    channels_last = has_conv and torch.device(device).type == "cpu"
    if not n_bn and not channels_last:
        return module, "as built"
    fast, done = module, []
    if n_bn:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fast = fuse(module)
        except Exception as exc:  # noqa: BLE001 - a plugin's module need not be traceable
            return module, f"as built (torch.fx cannot trace it: {type(exc).__name__})"
        done.append(f"{n_bn - _batch_norms(fast)} of {n_bn} batch norms folded")
    if channels_last:
        fast = nn.Sequential(ChannelsLast(), fast.to(memory_format=torch.channels_last))
        done.append("channels_last")
    fast.eval()
    for p in fast.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        x = probe.to(module_device(module))
        want, got = module(x).flatten(1), fast(x).flatten(1)
        diff = float((got - want).norm() / want.norm().clamp_min(1e-30))
    if not diff <= tolerance:
        return module, f"as built (the folded module is {diff:.1e} apart on {len(probe)} inputs)"
    return fast, f"{', '.join(done)} ({diff:.0e} apart on {len(probe)} training inputs)"


def _batch_norms(module: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


@no_grad
def head_inputs(
    module: nn.Module | None, x: torch.Tensor, *, batch_size: int = 512
) -> torch.Tensor:
    """The head's inputs for ``x``: flattened inputs, or the backbone's features.

    ``x`` stays where it is; its batches go to the backbone's device and the features come back
    to ``x``'s device (the data and the caches live on the CPU)."""
    if module is None:
        return x.flatten(1)
    dev = module_device(module)
    return torch.cat([module(x[i : i + batch_size].to(dev)).flatten(1).to(x.device)
                      for i in range(0, len(x), batch_size)])
