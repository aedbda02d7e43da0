import numpy as np
import pytest
import torch
from tiny_vit import make_model

from compress import prune_mlp_neurons


def _expected_units(up, down, tau, gate=None):
    score = np.linalg.norm(up.detach().double().numpy(), axis=1) * np.linalg.norm(down.detach().double().numpy(), axis=0)
    if gate is not None:
        score = score * np.linalg.norm(gate.detach().double().numpy(), axis=1)
    energy = score**2
    order = np.argsort(-energy, kind="stable")
    prefix = np.cumsum(energy[order])
    count = int(np.argmax(prefix >= tau * prefix[-1])) + 1
    return sorted(order[:count].tolist())


@pytest.mark.parametrize("tau", [0.5, 0.9, 0.99])
def test_kept_units_match_row_times_column_salience(model, tau):
    expected = [_expected_units(layer.mlp.up_proj.weight, layer.mlp.down_proj.weight, tau) for layer in model.model.layer]
    decisions = prune_mlp_neurons(model, tau)
    assert [list(decision.kept_indices) for decision in decisions] == expected


def test_pruned_model_equals_zeroing_the_dropped_units(model, pixels):
    masked = make_model()
    decisions = prune_mlp_neurons(model, 0.8)
    with torch.no_grad():
        for layer, decision in zip(masked.model.layer, decisions):
            dropped = sorted(set(range(128)) - set(decision.kept_indices))
            layer.mlp.down_proj.weight[:, dropped] = 0
    torch.testing.assert_close(model(pixels).last_hidden_state, masked(pixels).last_hidden_state)


def test_widths_follow_the_kept_units(model):
    decisions = prune_mlp_neurons(model, 0.7)
    for layer, decision in zip(model.model.layer, decisions):
        assert (layer.mlp.up_proj.out_features, layer.mlp.down_proj.in_features) == (decision.kept, decision.kept)
        assert layer.mlp.intermediate_size == decision.kept
        assert decision.kept < 128


def test_gated_mlp_score_includes_the_gate_row():
    model = make_model(gated=True)
    mlp = model.model.layer[0].mlp
    expected = _expected_units(mlp.up_proj.weight, mlp.down_proj.weight, 0.8, gate=mlp.gate_proj.weight)
    assert list(prune_mlp_neurons(model, 0.8)[0].kept_indices) == expected


def test_gated_mlp_keeps_gate_rows_alongside_up_rows(pixels):
    model, masked = make_model(gated=True), make_model(gated=True)
    original_gate = masked.model.layer[0].mlp.gate_proj.weight.clone()
    decisions = prune_mlp_neurons(model, 0.8)
    kept = list(decisions[0].kept_indices)
    assert torch.equal(model.model.layer[0].mlp.gate_proj.weight, original_gate[kept])
    with torch.no_grad():
        for layer, decision in zip(masked.model.layer, decisions):
            layer.mlp.down_proj.weight[:, sorted(set(range(128)) - set(decision.kept_indices))] = 0
    torch.testing.assert_close(model(pixels).last_hidden_state, masked(pixels).last_hidden_state)


def test_rejects_non_finite_weights_naming_the_parameter(model):
    with torch.no_grad():
        model.model.layer[0].mlp.down_proj.bias[3] = float("inf")
    with pytest.raises(ValueError, match=r"model\.layer\.0\.mlp\.down_proj\.bias"):
        prune_mlp_neurons(model, 0.5)
