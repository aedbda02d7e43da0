"""Inference-time patch-token pruning for DINOv3 ViTs, guided by CLS attention.

Each layer keeps the patch tokens its CLS query attends to most (averaged over heads)
and drops the rest before its MLP, so later layers run on fewer tokens. CLS and
register tokens are never dropped, and each kept token carries its own rotary
cos/sin rows, because DINOv3 applies RoPE by position to patch tokens only.

With fuse=True the dropped tokens are not discarded but averaged, weighted by their
CLS attention, into one extra token (as in EViT); it sits right after the registers,
gets no RoPE (it has no single position) and absorbs the tokens dropped by later layers.

Enabling swaps the encoder's class for a subclass whose forward prunes; the
parameters, buffers and state_dict are untouched, so deep copies, pickling and
save/load keep working, and disabling swaps the original class back.
"""

import logging
import math

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.dinov3_vit.modeling_dinov3_vit import (
    DINOv3ViTEncoder,
    DINOv3ViTModel,
    apply_rotary_pos_emb,
    eager_attention_forward,
)

logger = logging.getLogger(__name__)

_STATE_ATTR = "_token_pruning"


def keep_schedule(num_patches: int, num_layers: int, r_max: float, alpha: float) -> list[int]:
    """Return the patch tokens kept at each layer's output.

    n_l = max(1, floor(n_{l-1} * (1 - r_max * ((l + 1) / L) ** alpha))), l = 0..L-1,
    n_{-1} = num_patches (the token-pruning notes' rule: 144 patches, 8 layers, r_max 0.6,
    alpha 2 keep 142, 136, 124, 105, 80, 53, 28, 11).
    """
    _check_positive_int("num_patches", num_patches)
    _check_positive_int("num_layers", num_layers)
    _check_r_max(r_max)
    _check_alpha(alpha)
    schedule = []
    kept = num_patches
    for layer in range(num_layers):
        keep_fraction = 1.0 - r_max * ((layer + 1) / num_layers) ** alpha
        # The 1e-9 keeps a product that is an integer in exact arithmetic (1000 * 0.93 evaluates to
        # 929.9999999999999) from flooring one below it.
        kept = max(1, math.floor(kept * keep_fraction + 1e-9))
        schedule.append(kept)
    return schedule


def enable_token_pruning(model: nn.Module, r_max: float, alpha: float, fuse: bool = False) -> dict:
    """Turn on CLS-attention token pruning in every DINOv3ViTModel inside `model`; return a summary.

    The summary holds r_max, alpha, fuse and the schedule (keep_schedule) at the
    configured image size; at forward time the schedule follows the input's patch count.
    fuse=True adds one token holding the CLS-attention-weighted mean of all dropped
    tokens: fused = sum_i a_i x_i / sum_i a_i over the dropped tokens and, from the
    second pruning layer on, the previous fused token. Enabling again replaces the
    previous settings.
    """
    _check_r_max(r_max)
    _check_alpha(alpha)
    if not isinstance(fuse, bool):
        raise TypeError(f"fuse must be a bool, got {type(fuse).__name__}")
    backbones = _find_backbones(model)
    for backbone in backbones:
        encoder = backbone.model
        if type(encoder) is DINOv3ViTEncoder:
            encoder.__class__ = _TokenPruningEncoder
        elif type(encoder) is not _TokenPruningEncoder:
            raise TypeError(
                f"token pruning needs the encoder to be exactly DINOv3ViTEncoder, got {type(encoder).__name__}"
            )
        setattr(encoder, _STATE_ATTR, {"r_max": float(r_max), "alpha": float(alpha), "fuse": fuse})

    config = backbones[0].config
    num_patches = _configured_num_patches(config)
    num_layers = len(backbones[0].model.layer)
    summary = {
        "r_max": float(r_max),
        "alpha": float(alpha),
        "fuse": fuse,
        "num_patches": num_patches,
        "num_layers": num_layers,
        "schedule": keep_schedule(num_patches, num_layers, r_max, alpha),
    }
    logger.info("token pruning enabled on %d backbone(s): %s", len(backbones), summary)
    return summary


def disable_token_pruning(model: nn.Module) -> None:
    """Restore the unpruned forward of every DINOv3ViTModel inside `model` (no-op where not enabled)."""
    for backbone in _find_backbones(model):
        encoder = backbone.model
        if type(encoder) is _TokenPruningEncoder:
            encoder.__class__ = DINOv3ViTEncoder
        if hasattr(encoder, _STATE_ATTR):
            delattr(encoder, _STATE_ATTR)


def token_pruning_settings(model: nn.Module) -> dict | None:
    """Return {"r_max", "alpha", "fuse"} of the first DINOv3ViTModel inside `model`, or None when pruning is off."""
    settings = getattr(_find_backbones(model)[0].model, _STATE_ATTR, None)
    return None if settings is None else dict(settings)


def schedule_at(model: nn.Module, image_size: int) -> list[int]:
    """Return the patch tokens kept at each layer's output for square `image_size` inputs (keep_schedule;
    all patches at every layer when pruning is off)."""
    _check_positive_int("image_size", image_size)
    backbone = _find_backbones(model)[0]
    patch_h, patch_w = _pair(backbone.config.patch_size)
    num_patches = (image_size // patch_h) * (image_size // patch_w)
    num_layers = len(backbone.model.layer)
    settings = getattr(backbone.model, _STATE_ATTR, None)
    if settings is None:
        return [num_patches] * num_layers
    return keep_schedule(num_patches, num_layers, settings["r_max"], settings["alpha"])


class _TokenPruningEncoder(DINOv3ViTEncoder):
    """DINOv3ViTEncoder whose layers drop low-attention patch tokens before their MLP."""

    def forward(self, hidden_states, position_embeddings=None, **kwargs):
        settings = getattr(self, _STATE_ATTR)
        cos, sin = position_embeddings
        num_patches = cos.shape[-2]
        schedule = keep_schedule(num_patches, len(self.layer), settings["r_max"], settings["alpha"])
        if schedule[-1] == num_patches:
            # Nothing is ever dropped: run the unmodified encoder so outputs are bit-identical.
            return super().forward(hidden_states, position_embeddings=position_embeddings, **kwargs)

        if _flag(kwargs, "output_attentions", self.config):
            raise ValueError("output_attentions is not available with token pruning; disable it first")
        output_hidden_states = _flag(kwargs, "output_hidden_states", self.config)
        kwargs.pop("return_dict", None)
        num_prefix = hidden_states.shape[1] - num_patches
        all_hidden_states = [hidden_states] if output_hidden_states else None

        has_fused = False
        for layer, num_keep in zip(self.layer, schedule):
            if num_keep == cos.shape[-2]:
                hidden_states = layer(hidden_states, position_embeddings=(cos, sin), **kwargs)
            else:
                hidden_states, cos, sin = _pruned_layer_forward(
                    layer, hidden_states, cos, sin, num_prefix, num_keep, kwargs, settings["fuse"], has_fused
                )
                has_fused = settings["fuse"]
            if all_hidden_states is not None:
                all_hidden_states.append(hidden_states)

        return BaseModelOutput(
            last_hidden_state=hidden_states,
            hidden_states=tuple(all_hidden_states) if all_hidden_states is not None else None,
        )


def _flag(kwargs: dict, name: str, config) -> bool:
    """Pop an output_* flag from kwargs, falling back to the config's value when it is absent."""
    value = kwargs.pop(name, None)
    return bool(getattr(config, name, False) if value is None else value)


def _pruned_layer_forward(layer, hidden_states, cos, sin, num_prefix, num_keep, kwargs, fuse, has_fused):
    """Run one DINOv3ViTLayer, keeping the `num_keep` patch tokens with the highest CLS attention.

    `num_prefix` counts CLS and registers; with `has_fused` a fused token follows them.

    Mirrors DINOv3ViTLayer.forward, except that the token set shrinks between the
    attention block and the MLP (both are per token there, so this equals pruning
    at the layer output) and the CLS attention row softmax(q_cls K^T * scale),
    averaged over heads, is computed alongside the attention: O(N) extra work.
    """
    attention = layer.attention
    batch_size, num_tokens, _ = hidden_states.shape

    normed = layer.norm1(hidden_states)
    head_shape = (batch_size, num_tokens, attention.num_heads, attention.head_dim)
    query = attention.q_proj(normed).view(head_shape).transpose(1, 2)
    key = attention.k_proj(normed).view(head_shape).transpose(1, 2)
    value = attention.v_proj(normed).view(head_shape).transpose(1, 2)
    query, key = apply_rotary_pos_emb(query, key, cos, sin)

    attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
        attention.config._attn_implementation, eager_attention_forward
    )
    attended, _ = attention_interface(
        attention,
        query,
        key,
        value,
        None,
        dropout=attention.dropout if attention.training else 0.0,
        scaling=attention.scaling,
        **kwargs,
    )
    attended = attention.o_proj(attended.reshape(batch_size, num_tokens, -1))
    hidden_states = layer.drop_path(layer.layer_scale1(attended)) + hidden_states

    # CLS gets no RoPE, so its query row is the same before and after rotation.
    cls_logits = torch.matmul(query[:, :, :1], key.transpose(-1, -2)) * attention.scaling
    cls_attention = cls_logits.softmax(dim=-1).mean(dim=1)[:, 0]
    if fuse:
        hidden_states, keep_index = _keep_and_fuse(hidden_states, cls_attention, num_prefix, has_fused, num_keep)
    else:
        hidden_states, keep_index = _keep(hidden_states, cls_attention, num_prefix, num_keep)
    cos, sin = _gather_rotary(cos, keep_index), _gather_rotary(sin, keep_index)
    return _mlp_block(layer, hidden_states), cos, sin


def _mlp_block(layer, hidden_states: torch.Tensor) -> torch.Tensor:
    """Return hidden_states after the layer's MLP residual block (as in DINOv3ViTLayer.forward)."""
    residual = hidden_states
    hidden_states = layer.mlp(layer.norm2(hidden_states))
    return layer.drop_path(layer.layer_scale2(hidden_states)) + residual


def _keep(hidden_states, cls_attention, num_prefix, num_keep):
    """Return (prefix + the `num_keep` top-attention patches in their original order, kept patch indices)."""
    batch_size = hidden_states.shape[0]
    keep_index = cls_attention[:, num_prefix:].topk(num_keep, dim=-1, sorted=False).indices.sort(dim=-1).values
    # One row selection over prefix + kept patches instead of slicing and concatenating.
    prefix_index = torch.arange(num_prefix, device=keep_index.device).expand(batch_size, -1)
    token_index = torch.cat((prefix_index, keep_index + num_prefix), dim=1)
    return _select_tokens(hidden_states, token_index), keep_index


def _select_tokens(hidden_states: torch.Tensor, token_index: torch.Tensor) -> torch.Tensor:
    """Return hidden_states[b, token_index[b]] for every b, shaped (batch, k, width).

    Whole rows are copied with one index_select over the flattened batch; `gather` with an
    index expanded over the width reads one index per element and is ~10x slower on CPU.
    """
    batch_size, num_tokens, width = hidden_states.shape
    offsets = torch.arange(batch_size, device=token_index.device).unsqueeze(1) * num_tokens
    rows = (token_index + offsets).reshape(-1)
    return hidden_states.reshape(-1, width).index_select(0, rows).view(batch_size, -1, width)


def _keep_and_fuse(hidden_states, cls_attention, num_prefix, has_fused, num_keep):
    """Return (prefix + fused token + kept patches, kept patch indices); the fused token is the weighted mean.

    fused = sum_i a_i x_i / sum_i a_i over dropped patches i (and the previous fused token),
    a_i being the CLS attention averaged over heads.
    """
    patch_start = num_prefix + int(has_fused)
    patch_scores = cls_attention[:, patch_start:]
    order = patch_scores.argsort(dim=-1, descending=True)
    keep_index = order[:, :num_keep].sort(dim=-1).values
    drop_index = order[:, num_keep:]

    drop_weights = patch_scores.gather(1, drop_index).unsqueeze(-1)
    dropped = _select_tokens(hidden_states, drop_index + patch_start)
    fused_sum = (drop_weights * dropped).sum(dim=1)
    weight_sum = drop_weights.sum(dim=1)
    if has_fused:
        previous_weight = cls_attention[:, num_prefix : num_prefix + 1]
        fused_sum = fused_sum + previous_weight * hidden_states[:, num_prefix]
        weight_sum = weight_sum + previous_weight
    fused = (fused_sum / weight_sum).unsqueeze(1)

    kept = _select_tokens(hidden_states, keep_index + patch_start)
    return torch.cat((hidden_states[:, :num_prefix], fused, kept), dim=1), keep_index


def _gather_rotary(table: torch.Tensor, keep_index: torch.Tensor) -> torch.Tensor:
    """Return the rotary rows of the kept patches, shaped (batch, 1, kept, head_dim) to broadcast over heads."""
    if table.dim() == 2:
        return table[keep_index].unsqueeze(1)
    head_dim = table.shape[-1]
    return table.gather(2, keep_index[:, None, :, None].expand(-1, 1, -1, head_dim))


def _find_backbones(model: nn.Module) -> list[DINOv3ViTModel]:
    """Return every DINOv3ViTModel inside `model` (the model itself included)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    backbones = [module for module in model.modules() if isinstance(module, DINOv3ViTModel)]
    if not backbones:
        raise TypeError(f"model ({type(model).__name__}) contains no transformers DINOv3ViTModel")
    return backbones


def _configured_num_patches(config) -> int:
    """Return the patch count at the config's image size."""
    image_h, image_w = _pair(config.image_size)
    patch_h, patch_w = _pair(config.patch_size)
    return (image_h // patch_h) * (image_w // patch_w)


def _pair(value) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 1, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value}")


def _check_r_max(r_max) -> None:
    if isinstance(r_max, bool) or not isinstance(r_max, (int, float)):
        raise TypeError(f"r_max must be a number in [0, 1), got {type(r_max).__name__}")
    if not (math.isfinite(r_max) and 0.0 <= r_max < 1.0):
        raise ValueError(f"r_max must be in [0, 1), got {r_max}")


def _check_alpha(alpha) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a number > 0, got {type(alpha).__name__}")
    if not (math.isfinite(alpha) and alpha > 0.0):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha}")
