"""Where things live in transformers' DINOv3 ViT: layers, q/k/v/o and MLP linears, head counts, config."""

from typing import Any

from torch import nn
from transformers import DINOv3ViTConfig, DINOv3ViTModel
from transformers.models.dinov3_vit.modeling_dinov3_vit import DINOv3ViTLayer

_LINEAR_PATHS = {
    "q": ("attention", "q_proj"),
    "k": ("attention", "k_proj"),
    "v": ("attention", "v_proj"),
    "o": ("attention", "o_proj"),
    "up": ("mlp", "up_proj"),
    "down": ("mlp", "down_proj"),
    "gate": ("mlp", "gate_proj"),
}


class DINOv3Adapter:
    """Family adapter for DINOv3ViTModel (alone or inside any wrapper module)."""

    family = "dinov3_vit"
    layer_class_names = ("DINOv3ViTLayer",)
    linear_roles = tuple(_LINEAR_PATHS)
    attention_path = "attention"
    mlp_path = "mlp"
    # Roles whose output rows belong to a head / neuron, and the role whose input columns do.
    head_output_roles = ("q", "k", "v")
    head_input_role = "o"
    neuron_output_roles = ("up", "gate")
    neuron_input_role = "down"
    # Parameter names (substrings) an optimiser should not decay: vectors and tokens, LayerScale.
    no_decay_parameter_names = ("bias", "norm", "cls_token", "register_tokens", "mask_token", "lambda1")
    # Parameters a classifier's forward never uses (mask_token is for masked-image pretraining).
    unused_parameter_names = ("mask_token",)

    def layers(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """Return (qualified name, layer) for every DINOv3ViTLayer in `model`, in forward order."""
        return [(name, module) for name, module in model.named_modules() if isinstance(module, DINOv3ViTLayer)]

    def linear_path(self, role: str) -> str:
        """Return the dotted path of the `role` linear inside a layer, e.g. 'attention.q_proj'."""
        return ".".join(_LINEAR_PATHS[role])

    def linear_attribute(self, role: str) -> str:
        """Return the attribute name of the `role` linear, e.g. 'q_proj' (what PEFT's target_modules match)."""
        return _LINEAR_PATHS[role][1]

    def linear(self, layer: nn.Module, role: str) -> nn.Module | None:
        """Return the `role` linear of `layer`, or None when this layer has none (gate in a plain MLP)."""
        block, attribute = _LINEAR_PATHS[role]
        return getattr(getattr(layer, block), attribute, None)

    def set_linear(self, layer: nn.Module, role: str, module: nn.Module) -> None:
        """Replace the `role` linear of `layer` with `module`."""
        block, attribute = _LINEAR_PATHS[role]
        setattr(getattr(layer, block), attribute, module)

    def head_count(self, layer: nn.Module) -> int:
        """Return the number of attention heads `layer` runs."""
        return layer.attention.num_heads

    def head_dim(self, layer: nn.Module) -> int:
        """Return the width of one head (unchanged by pruning)."""
        return layer.attention.head_dim

    def set_head_count(self, layer: nn.Module, count: int) -> None:
        """Make `layer` reshape q/k/v into `count` heads (DINOv3 reads num_heads on every forward)."""
        layer.attention.num_heads = count

    def mlp_width(self, layer: nn.Module) -> int:
        """Return the number of hidden units of the layer's MLP."""
        return layer.mlp.up_proj.out_features

    def set_mlp_width(self, layer: nn.Module, width: int) -> None:
        """Record the MLP's new hidden width on the module (forward does not read it; repr and users do)."""
        layer.mlp.intermediate_size = width

    def backbone(self, model: nn.Module) -> tuple[str, nn.Module] | None:
        """Return (qualified name, module) of the DINOv3ViTModel inside `model`, or None."""
        for name, module in model.named_modules():
            if isinstance(module, DINOv3ViTModel):
                return name, module
        return None

    def backbone_config(self, backbone: nn.Module) -> dict[str, Any]:
        """Return the JSON-able config needed to rebuild `backbone` (attention implementation included)."""
        config = backbone.config.to_dict()
        config["_attn_implementation"] = backbone.config._attn_implementation
        return config

    def build_backbone(self, config: dict[str, Any]) -> nn.Module:
        """Return a freshly initialised DINOv3ViTModel for a config written by backbone_config."""
        settings = dict(config)
        attn_implementation = settings.pop("_attn_implementation", None)
        model = DINOv3ViTModel(DINOv3ViTConfig.from_dict(settings))
        if attn_implementation is not None:
            model.set_attn_implementation(attn_implementation)
        return model


ADAPTER = DINOv3Adapter()
