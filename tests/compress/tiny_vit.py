"""Tiny DINOv3 models for the compress tests (importable by name so load_compressed can rebuild them)."""

import torch
from torch import nn
from transformers import DINOv3ViTConfig, DINOv3ViTModel

TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_register_tokens=2,
    image_size=32,
    patch_size=8,
)


def tiny_config(**overrides) -> DINOv3ViTConfig:
    """Return the tiny DINOv3 config (64 wide, 2 layers, 4 heads of 16, 16 patches of 8x8)."""
    return DINOv3ViTConfig(**{**TINY, **overrides})


class TinyClassifier(nn.Module):
    """A DINOv3 backbone with a linear head on the CLS token, following the spec()/from_spec protocol."""

    def __init__(self, config: DINOv3ViTConfig, num_classes: int = 3) -> None:
        super().__init__()
        self.backbone = DINOv3ViTModel(config)
        self.head = nn.Linear(config.hidden_size, num_classes)
        self.num_classes = num_classes

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(pixel_values).pooler_output)

    def spec(self) -> dict:
        return {"config": self.backbone.config.to_dict(), "num_classes": self.num_classes}

    @classmethod
    def from_spec(cls, spec: dict) -> "TinyClassifier":
        return cls(DINOv3ViTConfig.from_dict(spec["config"]), spec["num_classes"])


def shape_spectra(model: nn.Module, decay: float = 0.7, seed: int = 0) -> nn.Module:
    """Give every attention/MLP weight geometric singular values decay^i, and heads/units unequal scales.

    Random init has flat spectra (SVD never applies, all heads look alike); these weights make
    every method's decision depend on the formulas. Head and unit scales are shuffled so the
    kept set is not simply the first ones.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module_name, module in model.named_modules():
            if not isinstance(module, nn.Linear) or "layer." not in module_name:
                continue
            out_features, in_features = module.weight.shape
            rank = min(out_features, in_features)
            left, _ = torch.linalg.qr(torch.randn(out_features, rank, generator=generator, dtype=torch.float64))
            right, _ = torch.linalg.qr(torch.randn(in_features, rank, generator=generator, dtype=torch.float64))
            singular = decay ** torch.arange(rank, dtype=torch.float64)
            module.weight.copy_((left * singular) @ right.T)
        for module in model.modules():
            if hasattr(module, "o_proj") and hasattr(module, "num_heads"):
                heads, width = module.num_heads, module.head_dim
                scales = (0.5 ** torch.arange(heads, dtype=torch.float32))[torch.randperm(heads, generator=generator)]
                module.o_proj.weight.mul_(scales.repeat_interleave(width))
            if hasattr(module, "up_proj") and hasattr(module, "down_proj"):
                units = module.up_proj.out_features
                scales = torch.exp(torch.randn(units, generator=generator))
                module.up_proj.weight.mul_(scales[:, None])
    return model


def make_model(gated: bool = False, shaped: bool = True, dtype: torch.dtype = torch.float32, seed: int = 0):
    """Return a tiny DINOv3ViTModel in eval mode (shaped spectra unless shaped=False)."""
    torch.manual_seed(seed)
    model = DINOv3ViTModel(tiny_config(use_gated_mlp=gated)).eval()
    if shaped:
        shape_spectra(model, seed=seed)
    return model.to(dtype)


def make_classifier(seed: int = 0) -> TinyClassifier:
    """Return a tiny TinyClassifier (backbone + head) with shaped spectra, in eval mode."""
    torch.manual_seed(seed)
    classifier = TinyClassifier(tiny_config()).eval()
    shape_spectra(classifier, seed=seed)
    return classifier
