"""Head training on real-data features: standardised GD folded back exactly, and the convergence stop."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fabench.models.heads import BinaryHead, FineHead
from fabench.recipes.training import (
    CONVERGENCE_TOL, STD_FLOOR, convergence, descend, fold_standardization, late_decrease, standardizer,
)


def features(n: int = 600, d: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-negative, unevenly scaled inputs like a CNN's penultimate layer: 4 classes, ReLU'd,
    coordinate scales from 0.1 to 30 and a few coordinates that are always 0."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    centres = 2.0 * torch.randn(4, d, generator=g)
    z = torch.relu(centres[labels] + torch.randn(n, d, generator=g))
    z = z * torch.logspace(-1, torch.log10(torch.tensor(30.0)).item(), d)
    z[:, :3] = 0.0
    return z.double(), labels


def test_fold_standardization_is_the_same_function_of_the_raw_inputs() -> None:
    z, _ = features()
    mean, scale = standardizer(z, centre=True)
    std = z.std(0)
    floor = STD_FLOOR * float(std[std > 0].median())
    assert torch.all(scale[:3] == floor) and torch.all(mean[:3] == 0.0)  # constant coordinates: the floor
    assert torch.all(scale >= floor) and torch.all(scale[std >= floor] == std[std >= floor])
    zs = (z - mean) / scale
    big = std >= floor
    assert int(big.sum()) > z.shape[1] // 2
    assert torch.allclose(zs[:, big].mean(0), torch.zeros(int(big.sum()), dtype=z.dtype), atol=1e-9)
    assert torch.allclose(zs[:, big].std(0), torch.ones(int(big.sum()), dtype=z.dtype), atol=1e-9)
    assert float(zs[:, ~big].std(0).max()) <= 1.0  # nearly dead coordinates are not blown up
    g = torch.Generator().manual_seed(1)
    binary = BinaryHead(z.shape[1], 5, init_std=0.3, generator=g).double()
    fine = FineHead(z.shape[1], 4, 3, torch.tensor([True, True, False, False]), init_std=0.3, bias=True,
                    generator=g).double()
    for head in (binary, fine):
        before = head.margin(zs).detach().clone()
        assert (before != 0).any()
        fold_standardization(head.weight, head.bias, mean, scale)
        assert torch.allclose(head.margin(z), before, rtol=1e-9, atol=1e-9)
    # without biases only the scale is folded (centre=False keeps the mean at 0)
    mean0, scale0 = standardizer(z, centre=False)
    nobias = FineHead(z.shape[1], 4, 3, torch.tensor([True, False, True, False]), init_std=0.3,
                      generator=g).double()
    before = nobias.margin(z / scale0).detach().clone()
    fold_standardization(nobias.weight, nobias.bias, mean0, scale0)
    assert torch.all(nobias.bias == 0) and torch.allclose(nobias.margin(z), before, rtol=1e-9, atol=1e-9)


def train_binary(z: torch.Tensor, y: torch.Tensor, *, lr: float, steps: int, stop_tol: float) -> tuple[BinaryHead, list[float]]:
    head = BinaryHead(z.shape[1], 5, init_std=1e-3, generator=torch.Generator().manual_seed(0)).double()
    sign = y.double() * 2 - 1

    def loss(idx: torch.Tensor) -> torch.Tensor:
        return F.softplus(-sign[idx] * head.margin(z[idx])).mean()

    return head, descend(list(head.parameters()), loss, len(z), lr=lr, steps=steps, stop_tol=stop_tol)


def test_convergence_stop_and_standardised_gd_on_unevenly_scaled_features() -> None:
    z, labels = features()
    y = (labels < 2).long()
    mean, scale = standardizer(z)
    zs = (z - mean) / scale
    head, hist = train_binary(zs, y, lr=2.0, steps=3000, stop_tol=0.001)
    # stopped early, after at least 100 steps, on a multiple of 10, once the tail had flattened
    assert 100 <= len(hist) < 3000 and len(hist) % 10 == 0
    assert late_decrease(hist) <= 0.001 < late_decrease(hist[:-10])
    fold_standardization(head.weight, head.bias, mean, scale)
    acc = float(((y.double() * 2 - 1) * head.margin(z) > 0).double().mean())
    assert acc > 0.95 and hist[-1] < 0.2
    verdict = convergence(hist, train_accuracy=acc)
    assert verdict["converged"] is True and verdict["late_decrease"] <= CONVERGENCE_TOL  # type: ignore[operator]
    # stop_tol = 0 runs every step
    _, full = train_binary(zs, y, lr=2.0, steps=150, stop_tol=0.0)
    assert len(full) == 150
    # the same lr on the raw inputs (scales up to 30) diverges or kills units: standardising is what converges
    raw_head, raw = train_binary(z, y, lr=2.0, steps=300, stop_tol=0.0)
    raw_acc = float(((y.double() * 2 - 1) * raw_head.margin(z) > 0).double().mean())
    assert not (raw_acc > 0.95 and raw[-1] < 0.2)


def test_gd_takes_torch_sgds_steps_bit_for_bit() -> None:
    """``descend(optimizer="gd")`` (a two-line update, no ``torch.optim`` import) gives the weights
    ``torch.optim.SGD`` (no momentum) gives, bit for bit, on both heads and with mini-batches."""
    z, labels = features(n=200, d=16)
    y = (labels < 2).long()
    sign = y.double() * 2 - 1
    for batch in (0, 64):
        heads = [BinaryHead(16, 3, init_std=0.1, generator=torch.Generator().manual_seed(2)).double()
                 for _ in range(2)]

        def loss_of(head: BinaryHead):
            return lambda idx: F.softplus(-sign[idx] * head.margin(z[idx])).mean()

        hist = descend(list(heads[0].parameters()), loss_of(heads[0]), len(z), lr=0.05, steps=40,
                       batch_size=batch, seed=3)
        opt = torch.optim.SGD(list(heads[1].parameters()), lr=0.05)
        gen, pos, ref = torch.Generator().manual_seed(3), 0, []
        order = torch.randperm(len(z), generator=gen)
        for _ in range(40):
            if batch == 0:
                idx = torch.arange(len(z))
            else:
                if pos + batch > len(z):
                    order, pos = torch.randperm(len(z), generator=gen), 0
                idx, pos = order[pos: pos + batch], pos + batch
            opt.zero_grad(set_to_none=True)
            value = loss_of(heads[1])(idx)
            value.backward()
            opt.step()
            ref.append(float(value.detach()))
        assert hist == ref and hist[-1] < hist[0]
        for a, b in zip(heads[0].parameters(), heads[1].parameters()):
            assert torch.equal(a, b)
