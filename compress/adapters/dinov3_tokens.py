"""The DINOv3 half of token pruning: an encoder whose layers drop patch tokens before their MLP.

Enabling swaps a DINOv3ViTEncoder's class for `_TokenPruningEncoder`, whose forward prunes;
parameters, buffers and state_dict are untouched, so deep copies, pickling and save/load keep
working, and disabling swaps the original class back. Patch tokens get RoPE by position and
CLS/registers none, so each kept token carries its own cos/sin rows.
"""

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

from compress.token_select import gather_rotary, keep_and_fuse, keep_schedule, keep_top

_STATE_ATTR = "_token_pruning"


def backbones(model: nn.Module) -> list[DINOv3ViTModel]:
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




def switch_on(backbone: DINOv3ViTModel, settings: dict) -> None:
    """Make `backbone` prune tokens with `settings` ({"r_max", "alpha", "fuse"}); replaces earlier settings."""
    encoder = backbone.model
    if type(encoder) is DINOv3ViTEncoder:
        encoder.__class__ = _TokenPruningEncoder
    elif type(encoder) is not _TokenPruningEncoder:
        raise TypeError(
            f"token pruning needs the encoder to be exactly DINOv3ViTEncoder, got {type(encoder).__name__}"
        )
    setattr(encoder, _STATE_ATTR, dict(settings))


def switch_off(backbone: DINOv3ViTModel) -> None:
    """Restore the unpruned forward of `backbone` (no-op where pruning is off)."""
    encoder = backbone.model
    if type(encoder) is _TokenPruningEncoder:
        encoder.__class__ = DINOv3ViTEncoder
    if hasattr(encoder, _STATE_ATTR):
        delattr(encoder, _STATE_ATTR)


def settings_of(backbone: DINOv3ViTModel) -> dict | None:
    """Return the pruning settings of `backbone`, or None when pruning is off."""
    settings = getattr(backbone.model, _STATE_ATTR, None)
    return None if settings is None else dict(settings)


def num_layers(backbone: DINOv3ViTModel) -> int:
    return len(backbone.model.layer)


def num_patches(backbone: DINOv3ViTModel, image_size: int | None = None) -> int:
    """Return the patch count of square `image_size` inputs (default: the config's image size)."""
    if image_size is None:
        return _configured_num_patches(backbone.config)
    patch_h, patch_w = _pair(backbone.config.patch_size)
    return (image_size // patch_h) * (image_size // patch_w)


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
        hidden_states, keep_index = keep_and_fuse(hidden_states, cls_attention, num_prefix, has_fused, num_keep)
    else:
        hidden_states, keep_index = keep_top(hidden_states, cls_attention, num_prefix, num_keep)
    cos, sin = gather_rotary(cos, keep_index), gather_rotary(sin, keep_index)
    return _mlp_block(layer, hidden_states), cos, sin


def _mlp_block(layer, hidden_states: torch.Tensor) -> torch.Tensor:
    """Return hidden_states after the layer's MLP residual block (as in DINOv3ViTLayer.forward)."""
    residual = hidden_states
    hidden_states = layer.mlp(layer.norm2(hidden_states))
    return layer.drop_path(layer.layer_scale2(hidden_states)) + residual
