"""Tests for compress.tokens: CLS-attention token pruning of DINOv3 ViTs."""

import copy
import json
import math
import pickle

import pytest
import torch
from torch import nn
from transformers import DINOv3ViTConfig, DINOv3ViTModel

from compress.tokens import disable_token_pruning, enable_token_pruning, keep_schedule, token_pruning_settings

NUM_REGISTERS = 2
NUM_PREFIX = 1 + NUM_REGISTERS


def tiny_config(**overrides) -> DINOv3ViTConfig:
    settings = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_register_tokens=NUM_REGISTERS,
        image_size=32,
        patch_size=4,
    )
    settings.update(overrides)
    return DINOv3ViTConfig(**settings)


@pytest.fixture
def model() -> DINOv3ViTModel:
    torch.manual_seed(0)
    return DINOv3ViTModel(tiny_config()).eval()


@pytest.fixture
def pixels() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 3, 32, 32)


def formula_schedule(num_patches, num_layers, r_max, alpha):
    kept, schedule = num_patches, []
    for layer in range(num_layers):
        kept = max(1, math.floor(kept * (1 - r_max * ((layer + 1) / num_layers) ** alpha) + 1e-9))
        schedule.append(kept)
    return schedule


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def reference_forward(model, pixels, r_max, alpha, carry_rope=True, fuse=False):
    """Return last_hidden_state of a token-pruned forward written out with eager attention.

    carry_rope=False uses the first rows of the rotary table instead of the kept tokens' rows.
    fuse=True keeps, after the registers, one token averaging the dropped ones by CLS attention.
    """
    hidden = model.embeddings(pixels)
    cos_table, sin_table = model.rope_embeddings(pixels)
    batch = pixels.shape[0]
    num_patches = cos_table.shape[0]
    positions = torch.arange(num_patches).expand(batch, -1)
    schedule = formula_schedule(num_patches, len(model.model.layer), r_max, alpha)
    prefix = NUM_PREFIX
    for layer, num_keep in zip(model.model.layer, schedule):
        attention = layer.attention
        tokens = hidden.shape[1]
        normed = layer.norm1(hidden)

        def heads(projection):
            return projection(normed).view(batch, tokens, attention.num_heads, attention.head_dim).transpose(1, 2)

        query, key, value = heads(attention.q_proj), heads(attention.k_proj), heads(attention.v_proj)
        rope_rows = positions if carry_rope else torch.arange(tokens - prefix).expand(batch, -1)
        cos = cos_table[rope_rows].unsqueeze(1)
        sin = sin_table[rope_rows].unsqueeze(1)

        def rotate_patches(states):
            patches = states[:, :, prefix:]
            return torch.cat((states[:, :, :prefix], patches * cos + rotate_half(patches) * sin), dim=2)

        query, key = rotate_patches(query), rotate_patches(key)
        weights = (query @ key.transpose(-1, -2) * attention.scaling).softmax(dim=-1)
        attended = (weights @ value).transpose(1, 2).reshape(batch, tokens, -1)
        hidden = hidden + layer.layer_scale1(attention.o_proj(attended))

        cls_scores = weights[:, :, 0].mean(dim=1)
        keep = cls_scores[:, prefix:].topk(num_keep, dim=-1).indices.sort(dim=-1).values
        patches = torch.stack([hidden[b, prefix:][keep[b]] for b in range(batch)])
        if fuse and num_keep < tokens - prefix:
            fused = []
            for b in range(batch):
                dropped = [i for i in range(tokens - prefix) if i not in set(keep[b].tolist())]
                members = [prefix + i for i in dropped] + list(range(NUM_PREFIX, prefix))
                member_weights = cls_scores[b, members]
                fused.append((member_weights[:, None] * hidden[b, members]).sum(0) / member_weights.sum())
            hidden = torch.cat((hidden[:, :NUM_PREFIX], torch.stack(fused)[:, None], patches), dim=1)
            prefix = NUM_PREFIX + 1
        else:
            hidden = torch.cat((hidden[:, :prefix], patches), dim=1)
        positions = torch.stack([positions[b][keep[b]] for b in range(batch)])

        hidden = hidden + layer.layer_scale2(layer.mlp(layer.norm2(hidden)))
    return model.norm(hidden)


def mlp_token_counts(model, pixels) -> list[int]:
    """Return the number of tokens each layer's MLP sees (after that layer's pruning)."""
    counts = []
    handles = [
        layer.mlp.register_forward_pre_hook(lambda module, args: counts.append(args[0].shape[1]))
        for layer in model.model.layer
    ]
    with torch.no_grad():
        model(pixels)
    for handle in handles:
        handle.remove()
    return counts


@pytest.mark.parametrize(
    ("num_patches", "num_layers", "r_max", "alpha"),
    [(196, 12, 0.6, 1.2), (64, 3, 0.5, 1.0), (64, 4, 0.9, 0.3), (1024, 24, 0.25, 2.0), (10, 6, 0.99, 1.0)],
)
def test_keep_schedule_matches_formula(num_patches, num_layers, r_max, alpha):
    expected = formula_schedule(num_patches, num_layers, r_max, alpha)
    assert keep_schedule(num_patches, num_layers, r_max, alpha) == expected


def test_keep_schedule_floors_as_the_token_pruning_notes_log():
    # The notes' 144 patches + CLS, 8 layers, r_max 0.6, alpha 2: [143, 137, ..., 12] tokens.
    assert keep_schedule(144, 8, 0.6, 2.0) == [142, 136, 124, 105, 80, 53, 28, 11]


def test_keep_schedule_does_not_floor_an_exact_integer_one_below():
    # 1000 * (1 - 0.07) is 929.9999999999999 in floating point; exactly 930.
    assert keep_schedule(1000, 1, 0.07, 1.0) == [930]


def test_keep_schedule_keeps_at_least_one_token():
    assert min(keep_schedule(4, 12, 0.99, 0.1)) == 1


def test_keep_schedule_zero_r_max_keeps_everything():
    assert keep_schedule(64, 5, 0.0, 1.7) == [64] * 5


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"r_max": -0.1}, ValueError, "r_max"),
        ({"r_max": 1.0}, ValueError, "r_max"),
        ({"r_max": math.nan}, ValueError, "r_max"),
        ({"r_max": "0.5"}, TypeError, "r_max"),
        ({"alpha": 0.0}, ValueError, "alpha"),
        ({"alpha": -1.0}, ValueError, "alpha"),
        ({"alpha": math.inf}, ValueError, "alpha"),
        ({"num_patches": 0}, ValueError, "num_patches"),
        ({"num_layers": 2.5}, TypeError, "num_layers"),
    ],
)
def test_keep_schedule_rejects_invalid_arguments(kwargs, error, name):
    arguments = {"num_patches": 64, "num_layers": 3, "r_max": 0.5, "alpha": 1.0, **kwargs}
    with pytest.raises(error, match=name):
        keep_schedule(**arguments)


def test_enable_rejects_r_max_out_of_range(model):
    with pytest.raises(ValueError, match=r"r_max must be in \[0, 1\)"):
        enable_token_pruning(model, r_max=1.2, alpha=1.0)


def test_enable_rejects_non_positive_alpha(model):
    with pytest.raises(ValueError, match="alpha"):
        enable_token_pruning(model, r_max=0.5, alpha=0.0)


def test_enable_rejects_model_without_dinov3():
    with pytest.raises(TypeError, match="DINOv3ViTModel"):
        enable_token_pruning(nn.Linear(4, 4), r_max=0.5, alpha=1.0)


def test_enable_rejects_non_bool_fuse(model):
    with pytest.raises(TypeError, match="fuse"):
        enable_token_pruning(model, r_max=0.5, alpha=1.0, fuse="yes")


def test_summary_is_json_with_configured_schedule(model):
    summary = enable_token_pruning(model, r_max=0.5, alpha=1.0)
    assert json.loads(json.dumps(summary))["schedule"] == formula_schedule(64, 3, 0.5, 1.0)


def test_settings_report_what_was_enabled(model):
    enable_token_pruning(model, r_max=0.25, alpha=2.0, fuse=True)
    assert token_pruning_settings(model) == {"r_max": 0.25, "alpha": 2.0, "fuse": True}


def test_settings_are_none_after_disable(model):
    enable_token_pruning(model, r_max=0.25, alpha=2.0)
    disable_token_pruning(model)
    assert token_pruning_settings(model) is None


def test_r_max_zero_gives_identical_outputs(model, pixels):
    with torch.no_grad():
        expected = model(pixels).last_hidden_state
        enable_token_pruning(model, r_max=0.0, alpha=1.0)
        assert torch.equal(model(pixels).last_hidden_state, expected)


def test_each_layer_keeps_schedule_count(model, pixels):
    enable_token_pruning(model, r_max=0.5, alpha=1.0)
    expected = [NUM_PREFIX + kept for kept in formula_schedule(64, 3, 0.5, 1.0)]
    assert mlp_token_counts(model, pixels) == expected


def test_schedule_follows_input_resolution(model):
    enable_token_pruning(model, r_max=0.5, alpha=1.0)
    larger = torch.randn(1, 3, 48, 48)  # 12 x 12 = 144 patches, not the configured 64
    expected = [NUM_PREFIX + kept for kept in formula_schedule(144, 3, 0.5, 1.0)]
    assert mlp_token_counts(model, larger) == expected


def test_hidden_states_shrink_layer_by_layer(model, pixels):
    enable_token_pruning(model, r_max=0.5, alpha=1.0)
    with torch.no_grad():
        hidden_states = model(pixels, output_hidden_states=True).hidden_states
    expected = [NUM_PREFIX + kept for kept in [64, *formula_schedule(64, 3, 0.5, 1.0)]]
    assert [states.shape[1] for states in hidden_states] == expected


def test_kept_tokens_are_top_cls_attention_with_their_rope(model, pixels):
    with torch.no_grad():
        expected = reference_forward(model, pixels, r_max=0.5, alpha=1.0)
        enable_token_pruning(model, r_max=0.5, alpha=1.0)
        actual = model(pixels).last_hidden_state
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_reference_is_sensitive_to_rope_rows(model, pixels):
    with torch.no_grad():
        carried = reference_forward(model, pixels, r_max=0.5, alpha=1.0)
        not_carried = reference_forward(model, pixels, r_max=0.5, alpha=1.0, carry_rope=False)
    assert not torch.allclose(carried, not_carried, atol=1e-4)


def test_prefix_tokens_are_never_dropped(model, pixels):
    enable_token_pruning(model, r_max=0.99, alpha=0.5)
    with torch.no_grad():
        expected = reference_forward(model, pixels, r_max=0.99, alpha=0.5)
        actual = model(pixels).last_hidden_state
    assert actual.shape[1] == NUM_PREFIX + 1
    torch.testing.assert_close(actual[:, :NUM_PREFIX], expected[:, :NUM_PREFIX], rtol=1e-5, atol=1e-5)


def test_fuse_adds_one_weighted_token(model, pixels):
    with torch.no_grad():
        expected = reference_forward(model, pixels, r_max=0.5, alpha=1.0, fuse=True)
        enable_token_pruning(model, r_max=0.5, alpha=1.0, fuse=True)
        actual = model(pixels).last_hidden_state
    assert actual.shape[1] == NUM_PREFIX + 1 + formula_schedule(64, 3, 0.5, 1.0)[-1]
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_fuse_differs_from_dropping(model, pixels):
    with torch.no_grad():
        dropped = reference_forward(model, pixels, r_max=0.5, alpha=1.0)
        fused = reference_forward(model, pixels, r_max=0.5, alpha=1.0, fuse=True)
    assert not torch.allclose(dropped[:, 0], fused[:, 0], atol=1e-4)


def test_fuse_with_r_max_zero_gives_identical_outputs(model, pixels):
    with torch.no_grad():
        expected = model(pixels).last_hidden_state
        enable_token_pruning(model, r_max=0.0, alpha=1.0, fuse=True)
        assert torch.equal(model(pixels).last_hidden_state, expected)


class LowRankLinear(nn.Module):
    """x -> second(first(x)), a stand-in for an SVD-factorised linear."""

    def __init__(self, in_features, out_features, rank):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.first = nn.Linear(in_features, rank, bias=False)
        self.second = nn.Linear(rank, out_features)

    def forward(self, x):
        return self.second(self.first(x))


def prune_heads(attention, keep_heads):
    """Keep the first `keep_heads` heads of a DINOv3ViTAttention by slicing its projections."""
    kept = keep_heads * attention.head_dim
    for name in ("q_proj", "k_proj", "v_proj"):
        old = getattr(attention, name)
        new = nn.Linear(old.in_features, kept, bias=old.bias is not None)
        new.weight.data.copy_(old.weight.data[:kept])
        if old.bias is not None:
            new.bias.data.copy_(old.bias.data[:kept])
        setattr(attention, name, new)
    old = attention.o_proj
    new = nn.Linear(kept, old.out_features, bias=old.bias is not None)
    new.weight.data.copy_(old.weight.data[:, :kept])
    if old.bias is not None:
        new.bias.data.copy_(old.bias.data)
    attention.o_proj = new
    attention.num_heads = keep_heads


def test_works_after_head_pruning_and_low_rank_factorisation(model, pixels):
    for layer, keep_heads in zip(model.model.layer, (2, 3, 1)):
        prune_heads(layer.attention, keep_heads)
    torch.manual_seed(2)
    model.model.layer[1].mlp.up_proj = LowRankLinear(64, 128, rank=8)
    with torch.no_grad():
        expected = reference_forward(model, pixels, r_max=0.5, alpha=1.0)
        enable_token_pruning(model, r_max=0.5, alpha=1.0)
        actual = model(pixels).last_hidden_state
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_eager_attention_matches_sdpa_when_pruned(model, pixels):
    enable_token_pruning(model, r_max=0.5, alpha=1.0)
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        expected = model(pixels).last_hidden_state
        torch.testing.assert_close(eager(pixels).last_hidden_state, expected, rtol=1e-5, atol=1e-5)


def test_disable_restores_identical_outputs(model, pixels):
    with torch.no_grad():
        expected = model(pixels).last_hidden_state
        enable_token_pruning(model, r_max=0.5, alpha=1.0)
        disable_token_pruning(model)
        assert torch.equal(model(pixels).last_hidden_state, expected)


def test_deepcopy_keeps_pruning_independently(model, pixels):
    enable_token_pruning(model, r_max=0.5, alpha=1.0)
    copied = copy.deepcopy(model)
    disable_token_pruning(model)
    with torch.no_grad():
        assert copied(pixels).last_hidden_state.shape[1] == NUM_PREFIX + formula_schedule(64, 3, 0.5, 1.0)[-1]
        assert model(pixels).last_hidden_state.shape[1] == NUM_PREFIX + 64


def test_pickle_round_trips_with_pruning(model, pixels):
    enable_token_pruning(model, r_max=0.5, alpha=1.0)
    restored = pickle.loads(pickle.dumps(model))
    with torch.no_grad():
        assert torch.equal(restored(pixels).last_hidden_state, model(pixels).last_hidden_state)


def test_state_dict_round_trips_with_pruning(model, pixels):
    keys_before = set(model.state_dict())
    enable_token_pruning(model, r_max=0.5, alpha=1.0)
    assert set(model.state_dict()) == keys_before
    torch.manual_seed(5)
    other = DINOv3ViTModel(tiny_config()).eval()
    other.load_state_dict(model.state_dict())
    enable_token_pruning(other, r_max=0.5, alpha=1.0)
    with torch.no_grad():
        assert torch.equal(other(pixels).last_hidden_state, model(pixels).last_hidden_state)


class Classifier(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.hidden_size, 2)

    def forward(self, pixels):
        tokens = self.backbone(pixels).last_hidden_state
        return self.head(tokens.mean(dim=1))


def test_wrapped_backbone_is_pruned(model, pixels):
    classifier = Classifier(model).eval()
    enable_token_pruning(classifier, r_max=0.5, alpha=1.0)
    expected = [NUM_PREFIX + kept for kept in formula_schedule(64, 3, 0.5, 1.0)]
    assert mlp_token_counts(model, pixels) == expected
    with torch.no_grad():
        assert classifier(pixels).shape == (2, 2)
