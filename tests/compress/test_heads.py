import numpy as np
import pytest
import torch
from tiny_vit import make_model
from torch import nn

from compress import prune_attention_heads

HEAD_DIM = 16


def _expected_heads(o_weight: torch.Tensor, num_heads: int, tau: float) -> list[int]:
    weight = o_weight.detach().double().numpy()
    energy = np.array([np.sum(weight[:, h * HEAD_DIM : (h + 1) * HEAD_DIM] ** 2) for h in range(num_heads)])
    order = np.argsort(-energy, kind="stable")
    prefix = np.cumsum(energy[order])
    count = int(np.argmax(prefix >= tau * prefix[-1])) + 1
    return sorted(order[:count].tolist())


@pytest.mark.parametrize("tau", [0.5, 0.8, 0.95])
def test_kept_heads_match_output_projection_energy(model, tau):
    expected = [_expected_heads(layer.attention.o_proj.weight, 4, tau) for layer in model.model.layer]
    decisions = prune_attention_heads(model, tau)
    assert [list(decision.kept_indices) for decision in decisions] == expected


def test_pruned_model_equals_masking_the_dropped_heads(model, pixels):
    masked = make_model()
    decisions = prune_attention_heads(model, 0.8)
    with torch.no_grad():
        for layer, decision in zip(masked.model.layer, decisions):
            dropped = [h for h in range(4) if h not in decision.kept_indices]
            for h in dropped:
                layer.attention.o_proj.weight[:, h * HEAD_DIM : (h + 1) * HEAD_DIM] = 0
    assert any(decision.applied for decision in decisions)
    torch.testing.assert_close(model(pixels).last_hidden_state, masked(pixels).last_hidden_state)


def test_head_count_and_projection_shapes_follow_the_kept_heads(model):
    decisions = prune_attention_heads(model, 0.6)
    for layer, decision in zip(model.model.layer, decisions):
        width = decision.kept * HEAD_DIM
        attention = layer.attention
        assert attention.num_heads == decision.kept
        assert [attention.q_proj.out_features, attention.k_proj.out_features, attention.v_proj.out_features] == [width] * 3
        assert (attention.o_proj.in_features, attention.o_proj.out_features) == (width, 64)


def test_kept_rows_and_bias_come_from_the_kept_heads(model):
    original = make_model().model.layer[0].attention
    decision = prune_attention_heads(model, 0.6)[0]
    channels = decision.input_channels()
    attention = model.model.layer[0].attention
    assert torch.equal(attention.q_proj.weight, original.q_proj.weight[channels])
    assert torch.equal(attention.v_proj.bias, original.v_proj.bias[channels])
    assert torch.equal(attention.o_proj.weight, original.o_proj.weight[:, channels])
    assert torch.equal(attention.o_proj.bias, original.o_proj.bias)


def test_accepts_a_wrapper_around_the_backbone(classifier, pixels):
    decisions = prune_attention_heads(classifier, 0.6)
    assert decisions[0].module == "backbone.model.layer.0.attention"
    assert classifier(pixels).shape == (2, 3)


def test_rejects_a_model_without_dinov3_layers():
    with pytest.raises(TypeError, match="model must contain .*DINOv3ViTLayer"):
        prune_attention_heads(nn.Sequential(nn.Linear(4, 4)), 0.5)


def test_rejects_non_finite_weights_naming_the_parameter(model):
    with torch.no_grad():
        model.model.layer[1].attention.k_proj.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"finite: model\.layer\.1\.attention\.k_proj\.weight"):
        prune_attention_heads(model, 0.5)


@pytest.mark.parametrize("tau", [0.0, 1.5])
def test_rejects_tau_outside_unit_interval(model, tau):
    with pytest.raises(ValueError, match=r"tau must be in \(0, 1\]"):
        prune_attention_heads(model, tau)
