"""The backbone's inference form: batch norms folded, channels_last on a CPU, checked against the
backbone it replaces (and left alone where that check or tracing fails)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fabench.models.backbones import inference_form
from fabench.models.cnn import resnet18_cifar, small_cnn


def _with_statistics(net: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """``net`` with non-trivial batch-norm statistics and affine parameters, frozen, in eval mode."""
    torch.manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 2.0)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(64, *shape) * 2)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("arch", ["cnn", "resnet18"])
def test_same_function_and_input_gradient(arch: str) -> None:
    shape = (1, 28, 28) if arch == "cnn" else (3, 32, 32)
    if arch == "cnn":
        net = small_cnn(shape, 10, width=8)
    else:
        net = resnet18_cifar(shape, 10)
    extractor = _with_statistics(net, shape).extractor()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in extractor.modules())
    x = torch.rand(16, *shape)
    fast, how = inference_form(extractor, x[:8], device="cpu")
    assert how.startswith(f"{n_bn} of {n_bn} batch norms folded, channels_last (")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert all(not p.requires_grad for p in fast.parameters())
    with torch.no_grad():  # float32, on points other than the probe: round-off apart
        assert _rel(fast(x), extractor(x)) < 1e-5
    # In float64 (no ReLU gate flipped by round-off), the same features and input gradient.
    extractor64 = extractor.double()
    fast64, how64 = inference_form(extractor64, x[:8].double(), device="cpu")
    assert how64.startswith(f"{n_bn} of {n_bn} batch norms folded")
    xa, xb = x.double().requires_grad_(True), x.double().requires_grad_(True)
    fa, fb = extractor64(xa), fast64(xb)
    direction = torch.randn(fa.shape, dtype=torch.float64)
    (ga,) = torch.autograd.grad((fa * direction).sum(), xa)
    (gb,) = torch.autograd.grad((fb * direction).sum(), xb)
    assert _rel(fb.detach(), fa.detach()) < 1e-12 and _rel(gb, ga) < 1e-10
    # the backbone as built is untouched (the head trains on its features)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in extractor.modules()) == n_bn


def test_no_channels_last_off_the_cpu() -> None:
    extractor = _with_statistics(small_cnn((1, 28, 28), 10, width=4), (1, 28, 28)).extractor()
    fast, how = inference_form(extractor, torch.rand(4, 1, 28, 28), device="cuda")  # the check runs where the module is
    assert "3 of 3 batch norms folded (" in how and "channels_last" not in how


def test_nothing_to_do_is_returned_as_built() -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU())
    fast, how = inference_form(mlp, torch.rand(4, 3, 2, 2), device="cpu")
    assert fast is mlp and how == "as built"


class _Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return y if float(y.sum()) > 0 else -y


def test_untraceable_module_is_returned_as_built() -> None:
    net = _Branchy().eval()
    fast, how = inference_form(net, torch.rand(4, 1, 6, 6), device="cpu")
    assert fast is net and how.startswith("as built (torch.fx cannot trace it: ")


def test_a_fold_that_changes_the_function_is_refused() -> None:
    """torch.fx traces ``forward`` and skips the module's forward hooks: the check on the probe
    inputs catches the different function and keeps the module."""
    net = _with_statistics(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU()), (1, 6, 6))
    net.register_forward_hook(lambda module, inputs, out: out * 2 + 1)
    fast, how = inference_form(net, torch.rand(4, 1, 6, 6), device="cpu")
    assert fast is net and how.startswith("as built (the folded module is ") and "apart on 4 inputs" in how
