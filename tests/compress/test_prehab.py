import math

import pytest
import torch

from compress import (
    REGULARIZERS as KINDS, collect_input_stats, collect_output_fisher, effective_rank, fisher_weighted,
    lowrank_penalty, nuclear_ratio, nuclear_ratio_plus_effective_rank, stable_rank,
)

REGULARIZERS = [stable_rank, nuclear_ratio, effective_rank, nuclear_ratio_plus_effective_rank]


@pytest.mark.parametrize(("regularizer", "expected"), [(stable_rank, 5.0), (nuclear_ratio, math.sqrt(5)),
                                                       (effective_rank, 5.0),
                                                       (nuclear_ratio_plus_effective_rank, math.sqrt(5) + 5.0)])
def test_identity_values(regularizer, expected):
    assert regularizer(torch.eye(5, dtype=torch.float64)).item() == pytest.approx(expected)


@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_rank_one_matrix_scores_one(regularizer):
    rank_one = torch.outer(torch.arange(1.0, 5.0), torch.arange(1.0, 4.0)).double()
    expected = 2.0 if regularizer is nuclear_ratio_plus_effective_rank else 1.0
    assert regularizer(rank_one).item() == pytest.approx(expected)


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


@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_gradient_matches_finite_differences_in_float64(regularizer):
    # Distinct singular values keep the SVD differentiable; gradcheck compares the analytic
    # gradient with central differences, for W and for the whitening factor L.
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(6, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    factor = torch.randn(4, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(regularizer, (weight,))
    assert torch.autograd.gradcheck(regularizer, (weight, factor))


@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_one_optimiser_step_lowers_the_surrogate(regularizer):
    generator = torch.Generator().manual_seed(2)
    weight = torch.nn.Parameter(torch.randn(12, 8, generator=generator))
    before = regularizer(weight)
    optimizer = torch.optim.SGD([weight], lr=1e-2)
    before.backward()
    optimizer.step()
    assert regularizer(weight).item() < before.item()


def test_kinds_are_named_for_what_they_compute():
    assert set(KINDS) == {"stable_rank", "nuclear_ratio", "effective_rank", "nuclear_ratio+effective_rank"}
    assert KINDS["nuclear_ratio"] is nuclear_ratio


@pytest.mark.parametrize("kind", list(KINDS))
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
    penalty = lowrank_penalty(model, "nuclear_ratio", whitening=stats, targets=["up"])
    torch.testing.assert_close(penalty, expected)
    penalty.backward()
    assert model.model.layer[0].mlp.up_proj.weight.grad.abs().sum() > 0


def test_rejects_unknown_kind(model):
    with pytest.raises(ValueError, match="kind must be one of stable_rank, nuclear_ratio, effective_rank, "
                                         "nuclear_ratio\\+effective_rank, fisher_weighted"):
        lowrank_penalty(model, "frobenius")


# --- fisher_weighted: the notes' pairing on diag(sqrt(F)) W L -------------------------------------------


def test_fisher_weighted_gradient_matches_finite_differences_in_float64():
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(6, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    factor = torch.randn(4, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    fisher = torch.rand(6, generator=generator, dtype=torch.float64) + 0.1
    assert torch.autograd.gradcheck(lambda w, f: fisher_weighted(w, f, fisher), (weight, factor))


def test_fisher_weighted_is_the_notes_pairing_on_the_row_weighted_matrix():
    generator = torch.Generator().manual_seed(4)
    weight, fisher = torch.randn(5, 3, generator=generator, dtype=torch.float64), torch.tensor([4.0, 1, 1, 9, 1])
    expected = nuclear_ratio_plus_effective_rank(torch.diag(fisher.sqrt()).double() @ weight)
    torch.testing.assert_close(fisher_weighted(weight, None, fisher), expected)
    # a uniform Fisher changes nothing (the surrogates are scale-free)
    torch.testing.assert_close(fisher_weighted(weight, None, torch.full((5,), 7.0)),
                               nuclear_ratio_plus_effective_rank(weight))


def test_fisher_on_one_output_makes_the_matrix_look_rank_one():
    fisher = torch.tensor([1.0, 1e-12, 1e-12, 1e-12], dtype=torch.float64)
    assert fisher_weighted(torch.eye(4, dtype=torch.float64), None, fisher).item() == pytest.approx(2.0, abs=1e-3)


def _labelled(batches):
    return [(x, torch.arange(len(x)) % 2) for x in batches]


def test_output_fisher_is_the_mean_squared_per_example_gradient(classifier, calibration_batches):
    batches = _labelled(calibration_batches)
    fisher = collect_output_fisher(classifier, batches, targets=["down"])
    # by definition: one example at a time, the squared gradient of its loss at the layer's output
    name = next(n for n in fisher if n.endswith("layer.0.mlp.down_proj"))
    module = dict(classifier.named_modules())[name]
    total, rows = 0.0, 0
    for x, y in batches:
        for index in range(len(x)):
            captured = {}
            handle = module.register_forward_hook(lambda _m, _i, out: captured.update(out=out) or out.retain_grad())
            loss = torch.nn.functional.cross_entropy(classifier(x[index:index + 1]), y[index:index + 1])
            loss.backward()
            handle.remove()
            grad = captured["out"].grad.reshape(-1, module.out_features).double()
            total, rows = total + grad.pow(2).sum(0), rows + grad.shape[0]
    classifier.zero_grad(set_to_none=True)
    torch.testing.assert_close(fisher[name].double(), total / rows, rtol=1e-4, atol=1e-12)


def test_output_fisher_leaves_the_models_gradients_and_mode_alone(classifier, calibration_batches):
    classifier.train()
    collect_output_fisher(classifier, _labelled(calibration_batches), targets=["q"])
    assert classifier.training and all(p.grad is None for p in classifier.parameters())


def test_fisher_weighted_penalty_needs_the_fisher_and_reaches_every_target(classifier, calibration_batches):
    with pytest.raises(ValueError, match="fisher_weighted' needs the targets' output Fisher"):
        lowrank_penalty(classifier, "fisher_weighted")
    fisher = collect_output_fisher(classifier, _labelled(calibration_batches), targets=["up", "v"])
    penalty = lowrank_penalty(classifier, "fisher_weighted", targets=["up", "v"], fisher=fisher)
    penalty.backward()
    assert torch.isfinite(penalty) and all(
        dict(classifier.named_modules())[name].weight.grad.abs().sum() > 0 for name in fisher)
