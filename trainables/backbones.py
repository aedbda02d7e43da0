"""The backbones a trial can name, as plain numbers (no torch): model.backbone is validated
against these names; trainables.model builds them."""

from typing import Any

# Architectures by name. The two real ones follow Meta's released configs (LVD-1689M
# checkpoints); `digits-vit` is a small ViT for the embedded 32x32 digits dataset.
BACKBONES: dict[str, dict[str, Any]] = {
    "dinov3-vits16": dict(
        hidden_size=384, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=6,
        num_register_tokens=4, patch_size=16, image_size=224, layerscale_value=1e-5,
    ),
    "dinov3-vitb16": dict(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        num_register_tokens=4, patch_size=16, image_size=224, layerscale_value=1e-5,
    ),
    "digits-vit": dict(
        hidden_size=96, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
        num_register_tokens=2, patch_size=4, image_size=32, layerscale_value=1.0,
        pos_embed_rescale=None,
    ),
}

HF_IDS = {
    "dinov3-vits16": "facebook/dinov3-vits16-pretrain-lvd1689m",
    "dinov3-vitb16": "facebook/dinov3-vitb16-pretrain-lvd1689m",
}
