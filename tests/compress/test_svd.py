import numpy as np
import pytest
import torch
from tiny_vit import make_model
from torch import nn

from compress import LowRankLinear, collect_input_stats, truncate_svd
from compress.svd import low_rank_factors
from compress.whitening import whitening_factor


def _energy_rank(singular: np.ndarray, tau: float) -> int:
    prefix = np.cumsum(singular**2)
    return int(np.argmax(prefix >= tau * prefix[-1])) + 1


def _linears(model):
    for index, layer in enumerate(model.model.layer):
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            yield f"model.layer.{index}.attention.{name}", getattr(layer.attention, name)
        for name in ("up_proj", "down_proj"):
            yield f"model.layer.{index}.mlp.{name}", getattr(layer.mlp, name)


@pytest.mark.parametrize("tau", [0.8, 0.97])
def test_ranks_follow_the_sigma_squared_energy_rule(model, tau):
    expected = {
        name: _energy_rank(np.linalg.svd(module.weight.detach().double().numpy(), compute_uv=False), tau)
        for name, module in _linears(model)
    }
    decisions = truncate_svd(model, tau)
    assert {decision.module: decision.kept for decision in decisions} == expected


def test_factorises_only_when_it_saves_parameters(model):
    # sigma_i^2 = 0.49^i: tau = 1 - 1e-12 needs rank 39, too much for 64x64, enough saving for 64x128
    decisions = truncate_svd(model, 1 - 1e-12)
    shapes = {name: module for name, module in _linears(make_model())}
    for decision in decisions:
        out_features, in_features = shapes[decision.module].weight.shape
        assert decision.applied == (decision.kept * (in_features + out_features) < in_features * out_features)
    assert {decision.applied for decision in decisions} == {True, False}


def test_applied_layers_become_low_rank_linears_of_the_chosen_rank(model):
    make_model_shapes = {name: tuple(module.weight.shape) for name, module in _linears(make_model())}
    decisions = {decision.module: decision for decision in truncate_svd(model, 0.9)}
    for name, module in _linears(model):
        if decisions[name].applied:
            assert isinstance(module, LowRankLinear)
            assert (module.rank, module.reduce.out_features) == (decisions[name].kept, decisions[name].kept)
            assert (module.in_features, module.out_features) == tuple(reversed(make_model_shapes[name]))
        else:
            assert isinstance(module, nn.Linear)


def test_factorised_layer_equals_the_truncated_svd_plus_bias():
    layer = make_model().model.layer[0].attention.v_proj
    weight = layer.weight.detach().double()
    left, singular, right_t = torch.linalg.svd(weight)
    rank, reduce, expand = low_rank_factors(weight, 0.9)
    torch.testing.assert_close(expand @ reduce, (left[:, :rank] * singular[:rank]) @ right_t[:rank])
    model = make_model()
    truncate_svd(model, 0.9, targets=["v"])
    factorised = model.model.layer[0].attention.v_proj
    assert factorised.reduce.bias is None
    assert torch.equal(factorised.expand.bias, layer.bias)


def test_targets_limit_which_linears_are_factorised(model):
    decisions = truncate_svd(model, 0.6, targets=("o", "down"))
    assert {decision.module.rsplit(".", 1)[1] for decision in decisions} == {"o_proj", "down_proj"}
    assert isinstance(model.model.layer[0].attention.q_proj, nn.Linear)


def test_rejects_unknown_target_role(model):
    with pytest.raises(ValueError, match="targets must name roles among"):
        truncate_svd(model, 0.5, targets=["qkv"])


def test_whitened_ranks_follow_the_energy_rule_on_w_times_l(model, calibration_batches):
    stats = collect_input_stats(model, calibration_batches)
    expected = {}
    for name, module in _linears(model):
        moment = stats[name].second_moment.numpy()
        factor = np.linalg.cholesky(moment + 1e-6 * np.mean(np.diag(moment)) * np.eye(len(moment)))
        product = module.weight.detach().double().numpy() @ factor
        expected[name] = _energy_rank(np.linalg.svd(product, compute_uv=False), 0.9)
    decisions = truncate_svd(model, 0.9, whitening=stats)
    assert {decision.module: decision.kept for decision in decisions} == expected


def test_whitened_svd_beats_raw_svd_on_correlated_inputs_at_equal_rank():
    generator = torch.Generator().manual_seed(3)
    mixing = torch.randn(32, 32, generator=generator, dtype=torch.float64) * torch.logspace(0, -3, 32, dtype=torch.float64)
    inputs = torch.randn(2000, 32, generator=generator, dtype=torch.float64) @ mixing.T
    weight = torch.randn(24, 32, generator=generator, dtype=torch.float64)
    factor = whitening_factor(inputs.T @ inputs / len(inputs))

    def error(reduce, expand):
        return torch.linalg.norm((weight - expand @ reduce) @ inputs.T).item()

    _, raw_reduce, raw_expand = low_rank_factors(weight, rank=8)
    _, white_reduce, white_expand = low_rank_factors(weight, whitening=factor, rank=8)
    assert error(white_reduce, white_expand) < 0.8 * error(raw_reduce, raw_expand)


def test_whitened_full_rank_reproduces_the_weight():
    generator = torch.Generator().manual_seed(4)
    inputs = torch.randn(500, 16, generator=generator, dtype=torch.float64)
    weight = torch.randn(8, 16, generator=generator, dtype=torch.float64)
    factor = whitening_factor(inputs.T @ inputs / 500)
    _, reduce, expand = low_rank_factors(weight, whitening=factor, rank=8)
    torch.testing.assert_close(expand @ reduce, weight)


def test_missing_whitening_statistics_name_the_linear(model, calibration_batches):
    stats = collect_input_stats(model, calibration_batches, targets=["q"])
    with pytest.raises(ValueError, match=r"no statistics for 'model\.layer\.0\.attention\.o_proj'"):
        truncate_svd(model, 0.5, whitening=stats, targets=["q", "o"])


def test_statistics_of_the_wrong_width_are_rejected(model, calibration_batches):
    stats = collect_input_stats(make_model(), calibration_batches, targets=["down"])
    from compress import prune_mlp_neurons

    prune_mlp_neurons(model, 0.5)
    with pytest.raises(ValueError, match=r"whitening\['model\.layer\.0\.mlp\.down_proj'\] is 128x128"):
        truncate_svd(model, 0.5, whitening=stats, targets=["down"])


def test_thread_count_is_restored(model):
    torch.set_num_threads(2)
    truncate_svd(model, 0.8)
    assert torch.get_num_threads() == 2
