"""Inference-time patch-token pruning for DINOv3 ViTs, guided by CLS attention.

Each layer keeps the patch tokens its CLS query attends to most (averaged over heads)
and drops the rest before its MLP, so later layers run on fewer tokens. CLS and
register tokens are never dropped, and each kept token carries its own rotary
cos/sin rows, because DINOv3 applies RoPE by position to patch tokens only.

With fuse=True the dropped tokens are not discarded but averaged, weighted by their
CLS attention, into one extra token (as in EViT); it sits right after the registers,
gets no RoPE (it has no single position) and absorbs the tokens dropped by later layers.

The schedule and the selection are model-independent (compress.token_select); the
encoder that applies them lives with the DINOv3 adapter (compress.adapters.dinov3_tokens).
"""

import logging

from torch import nn

from compress.adapters import dinov3_tokens as family
from compress.token_select import check_alpha, check_positive_int, check_r_max, keep_schedule

logger = logging.getLogger(__name__)


def enable_token_pruning(model: nn.Module, r_max: float, alpha: float, fuse: bool = False) -> dict:
    """Turn on CLS-attention token pruning in every DINOv3ViTModel inside `model`; return a summary.

    The summary holds r_max, alpha, fuse and the schedule (keep_schedule) at the
    configured image size; at forward time the schedule follows the input's patch count.
    fuse=True adds one token holding the CLS-attention-weighted mean of all dropped
    tokens: fused = sum_i a_i x_i / sum_i a_i over the dropped tokens and, from the
    second pruning layer on, the previous fused token. Enabling again replaces the
    previous settings.
    """
    check_r_max(r_max)
    check_alpha(alpha)
    if not isinstance(fuse, bool):
        raise TypeError(f"fuse must be a bool, got {type(fuse).__name__}")
    backbones = family.backbones(model)
    for backbone in backbones:
        family.switch_on(backbone, {"r_max": float(r_max), "alpha": float(alpha), "fuse": fuse})
    num_patches = family.num_patches(backbones[0])
    num_layers = family.num_layers(backbones[0])
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
    for backbone in family.backbones(model):
        family.switch_off(backbone)


def token_pruning_settings(model: nn.Module) -> dict | None:
    """Return {"r_max", "alpha", "fuse"} of the first DINOv3ViTModel inside `model`, or None when pruning is off."""
    return family.settings_of(family.backbones(model)[0])


def schedule_at(model: nn.Module, image_size: int) -> list[int]:
    """Return the patch tokens kept at each layer's output for square `image_size` inputs (keep_schedule;
    all patches at every layer when pruning is off)."""
    check_positive_int("image_size", image_size)
    backbone = family.backbones(model)[0]
    num_patches = family.num_patches(backbone, image_size)
    num_layers = family.num_layers(backbone)
    settings = family.settings_of(backbone)
    if settings is None:
        return [num_patches] * num_layers
    return keep_schedule(num_patches, num_layers, settings["r_max"], settings["alpha"])


__all__ = ["disable_token_pruning", "enable_token_pruning", "keep_schedule", "schedule_at", "token_pruning_settings"]
