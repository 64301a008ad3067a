"""Image backbones trained from scratch on a task's fine labels: a small CNN and a CIFAR ResNet-18.

Each is a :class:`FeatureNet`: input normalisation (inside the model, so inputs stay pixels in
``[0, 1]`` and attack radii are L2 distances in pixel space), a body that maps images to
penultimate features, and a linear layer over the ``k`` fine classes used only while training.
The paper's heads (Li, Pan, Lyu, Li, ICLR 2025, real-data experiments) then sit on the frozen
penultimate features (:meth:`FeatureNet.extractor`).
"""

from __future__ import annotations

import torch
from torch import nn


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; the statistics are buffers (saved with the weights)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.reshape(1, -1, 1, 1).clone().float())
        self.register_buffer("std", std.reshape(1, -1, 1, 1).clone().float().clamp_min(1e-6))

    mean: torch.Tensor
    std: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of ``N x C x H x W`` images."""
    flat = x.transpose(0, 1).reshape(x.shape[1], -1).double()
    return flat.mean(dim=1).float(), flat.std(dim=1).float()


class FeatureNet(nn.Module):
    """``fc(body(normalize(x)))``; :meth:`extractor` is the frozen feature map the head sees."""

    def __init__(self, normalize: Normalize, body: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.normalize = normalize
        self.body = body
        self.fc = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(self.normalize(x))
        return out.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(self.features(x))
        return out

    def extractor(self) -> nn.Module:
        """Images to penultimate features (``N x feature_dim``), sharing this net's modules."""
        return nn.Sequential(self.normalize, self.body, nn.Flatten(1))


class ChannelsLast(nn.Module):
    """Hands the next layers a 4-d input in ``channels_last`` memory order (the values unchanged)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def small_cnn(
    input_shape: tuple[int, ...], num_classes: int, *, width: int = 32, feature_dim: int = 128,
    mean: torch.Tensor | None = None, std: torch.Tensor | None = None,
) -> FeatureNet:
    """Three conv-BN-ReLU-maxpool stages (``width``, ``2 width``, ``4 width`` channels), then a
    ReLU layer of ``feature_dim`` units: the penultimate features. Fast on a CPU."""
    c, h, w = input_shape
    if h < 8 or w < 8:
        raise ValueError(f"the cnn backbone needs images of at least 8 x 8 pixels, got {input_shape}")
    body = nn.Sequential(
        *_conv(c, width), nn.MaxPool2d(2),
        *_conv(width, 2 * width), nn.MaxPool2d(2),
        *_conv(2 * width, 4 * width), nn.MaxPool2d(2),
        nn.Flatten(1),
        nn.Linear(4 * width * (h // 8) * (w // 8), feature_dim), nn.ReLU(),
    )
    norm = Normalize(mean if mean is not None else torch.zeros(c), std if std is not None else torch.ones(c))
    return FeatureNet(norm, body, feature_dim, num_classes)


def resnet18_cifar(
    input_shape: tuple[int, ...], num_classes: int, *, mean: torch.Tensor | None = None,
    std: torch.Tensor | None = None, imagenet_state: dict[str, torch.Tensor] | None = None,
) -> FeatureNet:
    """torchvision's ResNet-18 with the CIFAR stem (3x3 stride-1 first conv, no max-pool).

    ``imagenet_state`` (torchvision's ImageNet weights) initialises every layer but the stem and
    the classifier, which do not fit 32 x 32 inputs and ``k`` classes.
    """
    from torchvision.models import resnet18

    c = input_shape[0]
    net = resnet18(num_classes=1000)
    if imagenet_state is not None:
        net.load_state_dict(imagenet_state)
    net.conv1 = nn.Conv2d(c, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    norm = Normalize(mean if mean is not None else torch.zeros(c), std if std is not None else torch.ones(c))
    return FeatureNet(norm, net, 512, num_classes)
