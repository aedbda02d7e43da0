"""The SVD-taps head on its own: parameter figures, the spectral summary, frozen projections."""

import pytest
import torch
from torch import nn

from compress.svd_taps import SVDTapsHead, spectral_summary, summary_width, tap_layers


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def mlp_classifier(d: int, classes: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d), nn.Dropout(0.1), nn.Linear(d, classes))


def test_parameter_figures_match_the_notes():
    head = SVDTapsHead(384, 384, 100, num_taps=4, rank=32)
    without_taps = mlp_classifier(384, 100)
    assert count(head) == 337_636
    assert count(without_taps) == 187_108
    assert count(head) - count(without_taps) == 150_528 == 21_676_900 - 21_526_372


def test_taps_sit_at_quarters_of_the_depth():
    assert tap_layers(12) == [3, 6, 9, 12]
    assert tap_layers(4) == [1, 2, 3, 4]
    assert tap_layers(2) == [1, 2]


def test_summary_layout_and_normalisation():
    torch.manual_seed(0)
    z = torch.randn(5, 40, 8)
    summary = spectral_summary(z)
    assert summary.shape == (5, summary_width(1, 8))
    shares = summary[:, :8]
    assert torch.allclose(shares.sum(-1), torch.ones(5), atol=1e-5)
    assert torch.all(shares[:, :-1] >= shares[:, 1:])  # descending singular values
    reference = torch.linalg.svdvals(z)
    assert torch.allclose(shares, reference / reference.sum(-1, keepdim=True), atol=1e-4)
    diagonal, off_diagonal, entropy = summary[:, 8:16], summary[:, 16], summary[:, 17]
    # V is orthogonal: diagonal energy + off-diagonal energy = k entries of unit rows / k.
    assert torch.allclose((diagonal ** 2).sum(-1) / 8 + off_diagonal, torch.ones(5), atol=1e-4)
    assert torch.all(entropy > 0) and torch.all(entropy <= torch.log(torch.tensor(8.0)) + 1e-5)


def test_summary_is_sign_invariant_and_detached():
    z = torch.randn(2, 30, 6, requires_grad=True)
    summary = spectral_summary(z)
    assert not summary.requires_grad
    assert torch.allclose(summary, spectral_summary(-z), atol=1e-5)


def test_blank_tap_gives_zeros_not_nan():
    summary = spectral_summary(torch.zeros(3, 10, 4))
    assert torch.isfinite(summary).all()
    assert torch.equal(summary[:, :4], torch.zeros(3, 4))


def test_summary_is_float32_under_bf16_autocast():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        summary = spectral_summary(torch.randn(2, 20, 4).to(torch.bfloat16))
    assert summary.dtype == torch.float32


def test_only_the_classifier_receives_gradients():
    head = SVDTapsHead(16, 16, 3, num_taps=2, rank=4)
    taps = [torch.randn(4, 12, 16) for _ in range(2)]
    head(torch.randn(4, 16), taps).sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in head.projections.parameters())
    assert all(p.grad is not None for p in head.classifier.parameters())


def test_wrong_tap_count_is_refused():
    head = SVDTapsHead(16, 16, 3, num_taps=2, rank=4)
    with pytest.raises(ValueError, match="expects 2 taps"):
        head(torch.randn(1, 16), [torch.randn(1, 5, 16)])
