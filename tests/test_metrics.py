"""Feature-averaging score and cosine matrix, on constructed weights."""

from __future__ import annotations

import math

import pytest
import torch

from fabench.metrics import cosine_matrix, fa_score, feature_report, unit_scores

POS = torch.tensor([True] * 5 + [False] * 5)


def basis(k: int = 10, d: int = 20) -> torch.Tensor:
    return torch.eye(k, d) * 3.0


def test_cosine_matrix_of_averaged_and_decoupled_units() -> None:
    mu = basis()
    w_avg = mu[:5].sum(0, keepdim=True)
    c = cosine_matrix(torch.cat([w_avg, mu[7:8]]), mu)
    assert torch.allclose(c[0, :5], torch.full((5,), 1 / math.sqrt(5)), atol=1e-6)
    assert torch.allclose(c[0, 5:], torch.zeros(5), atol=1e-6)
    assert c[1, 7] == pytest.approx(1.0) and float(c[1].abs().sum()) == pytest.approx(1.0)


def test_score_is_one_for_averaging_zero_for_decoupled() -> None:
    mu = basis()
    avg = torch.stack([mu[:5].sum(0), mu[5:].sum(0)])
    assert fa_score(cosine_matrix(avg, mu), torch.tensor([True, False]), POS) == pytest.approx(1.0)
    one = mu.clone()  # unit j = feature j
    assert fa_score(cosine_matrix(one, mu), POS.clone(), POS) == pytest.approx(0.0, abs=1e-9)


def test_score_in_between_and_negative_cosines_clipped() -> None:
    mu = basis()
    w = (mu[0] + mu[1] - 2 * mu[2])[None]  # aligned with two of five, negative with one
    s = unit_scores(cosine_matrix(w, mu), torch.tensor([True]), POS)
    # c = (a, a, 0, 0, 0): PR = 2/5, score = (5 * 2/5 - 1) / 4 = 0.25
    assert float(s[0]) == pytest.approx(0.25, abs=1e-6)


def test_units_without_own_class_alignment_are_left_out() -> None:
    mu = basis()
    w = torch.stack([mu[:5].sum(0), -mu[0]])  # the second unit has no positive own-class cosine
    rep = feature_report(w, torch.tensor([True, True]), ["a", "b"], mu, POS)
    assert math.isnan(float(rep.unit_scores[1]))
    assert rep.score == pytest.approx(1.0)
    own, other = rep.own_other(POS)
    assert own == pytest.approx((5 / math.sqrt(5) - 1) / 10, abs=1e-6)
    assert other == pytest.approx(0.0, abs=1e-6)
