"""The classifier every trial trains and exports: a DINOv3 ViT backbone with a linear head.

It lives in `compress` so that a saved model (compress.save_compressed) can be rebuilt by
`compress.load_compressed` alone, without the training code in `trainables`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import DINOv3ViTConfig, DINOv3ViTModel

POOLINGS = ("cls", "mean", "cls+mean")


class ViTClassifier(nn.Module):
    """A DINOv3 ViT backbone with a linear head on pooled features; forward returns logits."""

    def __init__(self, backbone: DINOv3ViTModel, num_classes: int, pooling: str = "cls"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"model.pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"model.num_classes must be an integer >= 2, got {num_classes!r}")
        self.backbone = backbone
        self.pooling = pooling
        self.num_classes = num_classes
        width = backbone.config.hidden_size * (2 if pooling == "cls+mean" else 1)
        self.head = nn.Linear(width, num_classes)

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Return pooled features (batch, width) from the backbone's normalised tokens."""
        tokens = self.backbone(pixel_values=pixel_values).last_hidden_state
        cls = tokens[:, 0]
        # Mean over patch tokens only: register tokens carry no spatial content.
        prefix = 1 + self.backbone.config.num_register_tokens
        mean = tokens[:, prefix:].mean(dim=1)
        if self.pooling == "cls":
            return cls
        if self.pooling == "mean":
            return mean
        return torch.cat([cls, mean], dim=-1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixel_values))

    def spec(self) -> dict[str, Any]:
        """Return the JSON-able description `from_spec` rebuilds this architecture from."""
        return {
            "backbone_config": self.backbone.config.to_dict(),
            "num_classes": self.num_classes,
            "pooling": self.pooling,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "ViTClassifier":
        """Return a randomly initialised classifier with the architecture `spec` describes."""
        config = DINOv3ViTConfig.from_dict(dict(spec["backbone_config"]))
        return cls(DINOv3ViTModel(config), spec["num_classes"], spec["pooling"])
