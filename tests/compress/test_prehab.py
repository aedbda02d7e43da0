import math

import pytest
import torch

from compress import collect_input_stats, effective_rank, lowrank_penalty, nuclear_ratio, stable_rank

REGULARIZERS = [stable_rank, nuclear_ratio, effective_rank]


@pytest.mark.parametrize(("regularizer", "expected"), [(stable_rank, 5.0), (nuclear_ratio, math.sqrt(5)), (effective_rank, 5.0)])
def test_identity_values(regularizer, expected):
    assert regularizer(torch.eye(5, dtype=torch.float64)).item() == pytest.approx(expected)


@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_rank_one_matrix_scores_one(regularizer):
    rank_one = torch.outer(torch.arange(1.0, 5.0), torch.arange(1.0, 4.0)).double()
    assert regularizer(rank_one).item() == pytest.approx(1.0)


def test_stable_rank_of_a_known_spectrum():
    # sigma = 2, 1: (4 + 1) / 4
    assert stable_rank(torch.diag(torch.tensor([2.0, 1.0]))).item() == pytest.approx(1.25)


@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_whitened_value_is_taken_on_w_times_l(regularizer):
    generator = torch.Generator().manual_seed(0)
    weight, factor = torch.randn(6, 4, generator=generator), torch.randn(4, 4, generator=generator)
    torch.testing.assert_close(regularizer(weight, factor), regularizer(weight @ factor))


@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_gradient_is_finite_on_a_rank_one_matrix(regularizer):
    weight = torch.outer(torch.arange(1.0, 5.0), torch.arange(1.0, 4.0)).requires_grad_()
    regularizer(weight).backward()
    assert torch.isfinite(weight.grad).all()


@pytest.mark.parametrize("kind", ["stable_rank", "nuclear", "effective_rank"])
def test_penalty_gradient_reaches_every_target(kind, model):
    lowrank_penalty(model, kind).backward()
    layer = model.model.layer[1]
    for module in (layer.attention.q_proj, layer.attention.o_proj, layer.mlp.down_proj):
        assert torch.isfinite(module.weight.grad).all() and module.weight.grad.abs().sum() > 0
    assert layer.mlp.up_proj.bias.grad is None


def test_penalty_sums_the_per_linear_values(model):
    expected = sum(stable_rank(layer.attention.v_proj.weight) for layer in model.model.layer)
    torch.testing.assert_close(lowrank_penalty(model, "stable_rank", targets=["v"]), expected)


def test_whitened_penalty_uses_each_linears_statistics(model, calibration_batches):
    stats = collect_input_stats(model, calibration_batches, targets=["up"])
    expected = sum(
        nuclear_ratio(layer.mlp.up_proj.weight, stats[f"model.layer.{i}.mlp.up_proj"].whitening().factor.float())
        for i, layer in enumerate(model.model.layer)
    )
    penalty = lowrank_penalty(model, "nuclear", whitening=stats, targets=["up"])
    torch.testing.assert_close(penalty, expected)
    penalty.backward()
    assert model.model.layer[0].mlp.up_proj.weight.grad.abs().sum() > 0


def test_rejects_unknown_kind(model):
    with pytest.raises(ValueError, match="kind must be one of stable_rank, nuclear, effective_rank"):
        lowrank_penalty(model, "frobenius")
