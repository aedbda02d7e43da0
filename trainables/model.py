"""DINOv3 ViT backbones by name, the classifier (backbone + head) every trial trains, and how a
fine-tune method sets it up (frozen parts, PEFT LoRA adapters, merged back by `finalize_model`).

Weights are loaded apart from the architecture: `build_classifier` takes a backbone name
(which fixes the architecture) and, optionally, where its weights come from — a local
directory in Hugging Face layout (config.json + safetensors) or a Hugging Face id.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn
from transformers import AutoConfig, DINOv3ViTConfig, DINOv3ViTModel

from compress.classifier import ViTClassifier
from compress.config import HEADS, POOLINGS
from trainables.backbones import BACKBONES, HF_IDS

if TYPE_CHECKING:
    from trainables.config import TrialConfig

log = logging.getLogger(__name__)

__all__ = ["BACKBONES", "HF_IDS", "HEADS", "POOLINGS", "ViTClassifier", "backbone_config", "build_classifier",
           "check_local_checkpoint", "load_backbone"]


def backbone_config(name: str, **overrides: Any) -> DINOv3ViTConfig:
    """Return the DINOv3ViTConfig of a named backbone (see BACKBONES), with overrides applied."""
    if name not in BACKBONES:
        raise ValueError(f"model.backbone must be one of {', '.join(BACKBONES)}, got {name!r}")
    return DINOv3ViTConfig(**{**BACKBONES[name], **overrides})


def load_backbone(weights: str | Path, *, token: str | None = None) -> DINOv3ViTModel:
    """Return a DINOv3ViTModel loaded from a local directory or a Hugging Face id.

    Offline mode (HF_HUB_OFFLINE=1) is honoured by huggingface_hub itself; a gated model
    needs a token (argument, `hf auth login`, or HF_TOKEN in the environment).
    """
    where = str(weights)
    local = Path(where).expanduser()
    is_local = local.exists()
    if not is_local and (where.startswith((".", "/", "~")) or where.count("/") != 1):
        raise FileNotFoundError(
            f"model.weights {where!r} is neither an existing directory nor a Hugging Face id "
            "(owner/name). Pass a directory holding config.json and model.safetensors, or an id "
            f"such as {HF_IDS['dinov3-vits16']!r}."
        )
    if is_local and not (local / "config.json").is_file():
        raise FileNotFoundError(
            f"model.weights {where!r} has no config.json: expected a DINOv3 checkpoint directory "
            "as written by save_pretrained (config.json + model.safetensors)"
        )
    source = str(local) if is_local else where
    try:
        config = AutoConfig.from_pretrained(source, token=token)
    except OSError as err:
        raise _explain_load_failure(where, is_local, err) from None
    _check_model_type(where, config)
    try:
        return DINOv3ViTModel.from_pretrained(source, token=token, attn_implementation="sdpa")
    except OSError as err:
        raise _explain_load_failure(where, is_local, err) from None


def _explain_load_failure(where: str, is_local: bool, err: OSError) -> OSError:
    text = str(err)
    if is_local:
        return FileNotFoundError(
            f"model.weights {where!r}: could not load a DINOv3 checkpoint from this directory "
            f"({text.splitlines()[0]}); expected config.json and model.safetensors as written by "
            "save_pretrained"
        )
    if "gated" in text.lower() or "401" in text or "403" in text:
        return PermissionError(
            f"model.weights {where!r} is gated on Hugging Face: accept the licence on its model "
            "page, then run `hf auth login` (or set HF_TOKEN), or download it elsewhere and pass "
            "the local directory"
        )
    return OSError(
        f"model.weights {where!r} could not be fetched from Hugging Face ({text.splitlines()[0]}). "
        "Offline or no access? Download it where you have access (`hf download "
        f"{where} --local-dir DIR`) and pass DIR."
    )


def build_classifier(
    backbone: str,
    num_classes: int,
    weights: str | Path | None = None,
    pooling: str = "cls",
    *,
    head: str = "linear",
    token: str | None = None,
) -> ViTClassifier:
    """Return a ViTClassifier with the named architecture; random init unless `weights` is given.

    With `weights`, the loaded checkpoint's config must agree with the named architecture on
    width, depth and heads, so a preset cannot silently train a different model.
    """
    config = backbone_config(backbone)
    if weights is None:
        model = DINOv3ViTModel(config)
    else:
        model = load_backbone(weights, token=token)
        _check_architecture(str(weights), model.config, backbone, config)
    return ViTClassifier(model, num_classes, pooling, head)


def _check_model_type(where: str, config: Any) -> None:
    if config.model_type != "dinov3_vit":
        raise ValueError(
            f"model.weights {where!r} is a {config.model_type!r} checkpoint, not a DINOv3 ViT "
            "(expected model_type 'dinov3_vit' in its config.json)"
        )


def _check_architecture(where: str, found_config: Any, backbone: str, config: DINOv3ViTConfig) -> None:
    for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size"):
        found, expected = getattr(found_config, field, None), getattr(config, field)
        if found != expected:
            raise ValueError(
                f"model.weights {where!r} has {field}={found}, but model.backbone "
                f"{backbone!r} expects {expected}; choose the matching backbone name"
            )


def check_local_checkpoint(weights: str | Path, backbone: str) -> bool:
    """Return True after checking that local directory `weights` holds a DINOv3 config matching
    `backbone`, False when `weights` is not a local path (a Hugging Face id, or a path that
    exists only on the cluster's workers); reads config.json only, never the weights."""
    where = str(weights)
    local = Path(where).expanduser()
    if not local.exists():
        return False
    if not (local / "config.json").is_file():
        raise FileNotFoundError(
            f"model.weights {where!r} has no config.json: expected a DINOv3 checkpoint directory "
            "as written by save_pretrained (config.json + model.safetensors)"
        )
    try:
        found = AutoConfig.from_pretrained(str(local))
    except (OSError, ValueError) as err:
        raise ValueError(f"model.weights {where!r}: unreadable config.json ({str(err).splitlines()[0]})") from None
    _check_model_type(where, found)
    _check_architecture(where, found, backbone, backbone_config(backbone))
    return True


def configure_method(model: nn.Module, cfg: TrialConfig) -> nn.Module:
    """Return the model set up for the fine-tune method: frozen parts, LoRA adapters."""
    ft = cfg.finetune
    if ft.method == "full":
        return model
    if ft.method == "head_only":
        for name, param in model.backbone.named_parameters():
            param.requires_grad = ft.train_norms_biases and _is_norm_or_bias(name)
        return model
    alpha = ft.lora_alpha or 2.0 * ft.lora_rank
    wrapped = wrap_lora(model, rank=ft.lora_rank, alpha=alpha, include_mlp=ft.lora_mlp)
    if ft.train_norms_biases:
        # PEFT froze every base weight; the notes' LoRA recipe may train norms and biases too.
        for name, param in model.backbone.named_parameters():
            if "lora_" not in name and _is_norm_or_bias(name):
                param.requires_grad = True
    return wrapped


def _is_norm_or_bias(name: str) -> bool:
    """Return whether a backbone parameter name is a bias or belongs to a LayerNorm."""
    return name.endswith("bias") or ".norm" in name or name.startswith("norm.")


def wrap_lora(model: nn.Module, *, rank: int, alpha: float, include_mlp: bool,
              linear_names: list[str] | None = None) -> nn.Module:
    """Return a PEFT LoRA model over the attention (and optionally MLP) linears; head trains."""
    from peft import LoraConfig, get_peft_model

    from compress.adapters import adapter_for

    adapter = adapter_for(model)
    roles = ("q", "k", "v", "o") + (("up", "down", "gate") if include_mlp else ())
    targets = linear_names or [adapter.linear_attribute(role) for role in roles]
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets,
                        modules_to_save=["head"])
    peft_model = get_peft_model(model, config)
    _freeze_tap_projections(peft_model)
    return peft_model


def _freeze_tap_projections(model: nn.Module) -> None:
    """Keep SVD-taps projections frozen (PEFT unfreezes the whole head it copies): the detached
    SVD gives them no gradient, and DDP would wait for one."""
    from compress.svd_taps import SVDTapsHead

    for module in model.modules():
        if isinstance(module, SVDTapsHead):
            module.projections.requires_grad_(False)


def linear_names(model: nn.Module) -> list[str]:
    """Return module-name suffixes of every Linear in the backbone (compressed ones included)."""
    names = {name.split(".")[-1] for name, mod in model.backbone.named_modules()
             if isinstance(mod, nn.Linear)}
    return sorted(names)


def finalize_model(model: nn.Module) -> nn.Module:
    """Return a plain model: LoRA merged into ordinary Linears, DDP unwrapped, frozen flags reset."""
    model = getattr(model, "module", model)
    if hasattr(model, "peft_config"):
        model = model.merge_and_unload()
    for param in model.parameters():
        param.requires_grad = True
    return model

