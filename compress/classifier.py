"""The classifier every trial trains and exports: a DINOv3 ViT backbone with a head (linear, mlp or svd_taps).

It lives in `compress` so that a saved model (compress.save_compressed) can be rebuilt by
`compress.load_compressed` alone, without the training code in `trainables`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import DINOv3ViTConfig, DINOv3ViTModel

from compress.config import HEADS, POOLINGS
from compress.svd_taps import TAP_DROPOUT, SVDTapsHead, tap_layers
from compress.tokens import keep_schedule, token_pruning_settings

MLP_DROPOUT = TAP_DROPOUT


class MLPHead(nn.Sequential):
    """The DeiT log's MLP head: Linear(in, d) -> GELU -> LayerNorm(d) -> Dropout(0.1) -> Linear(d, classes).

    It is the svd_taps classifier without the tap spectra, so svd_taps against mlp isolates
    what the taps add. Parameters: in d + d (first Linear) + 2d (LayerNorm) + d classes +
    classes (last Linear); on the CLS token of ViT-S/16 (in = d = 384) with 100 classes,
    147,456 + 384 + 768 + 38,400 + 100 = 187,108, the log's count. Without a LayerNorm,
    385 h + 100 h + 100 = 187,108 has no integer width h; with one of width 384 (before or
    after the hidden layer) h = 384; this one takes the svd_taps classifier's order.
    """

    def __init__(self, in_features: int, hidden_size: int, num_classes: int):
        super().__init__(
            nn.Linear(in_features, hidden_size),
            nn.GELU(),
            nn.LayerNorm(hidden_size),
            nn.Dropout(MLP_DROPOUT),
            nn.Linear(hidden_size, num_classes),
        )
        self.in_features, self.out_features = in_features, num_classes


class ViTClassifier(nn.Module):
    """A DINOv3 ViT backbone with a head on pooled features; forward returns logits.

    head="linear": one Linear on the pooled features. head="mlp": MLPHead on the pooled
    features (the DeiT log's baseline head). head="svd_taps": compress.svd_taps'
    classifier on the pooled features and the spectra of the patch tokens at four depths
    (with token pruning on, each tap sees the tokens kept at its depth).
    """

    def __init__(self, backbone: DINOv3ViTModel, num_classes: int, pooling: str = "cls",
                 head: str = "linear"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"model.pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if head not in HEADS:
            raise ValueError(f"model.head must be one of {', '.join(HEADS)}, got {head!r}")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"model.num_classes must be an integer >= 2, got {num_classes!r}")
        self.backbone = backbone
        self.pooling = pooling
        self.num_classes = num_classes
        self.head_type = head
        hidden = backbone.config.hidden_size
        width = hidden * (2 if pooling == "cls+mean" else 1)
        self.taps: list[int] = []
        if head == "linear":
            self.head = nn.Linear(width, num_classes)
        elif head == "mlp":
            self.head = MLPHead(width, hidden, num_classes)
        else:
            self.taps = tap_layers(backbone.config.num_hidden_layers)
            self.head = SVDTapsHead(width, hidden, num_classes, len(self.taps))

    def _pool(self, tokens: torch.Tensor) -> torch.Tensor:
        cls = tokens[:, 0]
        # Mean over patch tokens only: register tokens carry no spatial content.
        prefix = 1 + self.backbone.config.num_register_tokens
        mean = tokens[:, prefix:].mean(dim=1)
        if self.pooling == "cls":
            return cls
        if self.pooling == "mean":
            return mean
        return torch.cat([cls, mean], dim=-1)

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Return pooled features (batch, width) from the backbone's normalised tokens."""
        return self._pool(self.backbone(pixel_values=pixel_values).last_hidden_state)

    def _pooled_and_taps(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return (pooled features, the patch tokens after each tap layer)."""
        output = self.backbone(pixel_values=pixel_values, output_hidden_states=True)
        kept = self._patches_per_layer(pixel_values)
        # hidden_states[0] is the embedding output, [l] the output of layer l. Patch tokens
        # are the trailing ones (a fused token, with pruning fuse=True, sits before them).
        taps = [output.hidden_states[layer][:, -kept[layer - 1]:] for layer in self.taps]
        return self._pool(output.last_hidden_state), taps

    def _patches_per_layer(self, pixel_values: torch.Tensor) -> list[int]:
        """Return the patch tokens each layer outputs (keep_schedule when token pruning is on)."""
        patch = self.backbone.config.patch_size
        num_patches = (pixel_values.shape[-2] // patch) * (pixel_values.shape[-1] // patch)
        num_layers = self.backbone.config.num_hidden_layers
        settings = token_pruning_settings(self.backbone)
        if settings is None:
            return [num_patches] * num_layers
        return keep_schedule(num_patches, num_layers, settings["r_max"], settings["alpha"])

    def head_inputs(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Return what `classify` reads: pooled features, with the tap spectra appended for svd_taps."""
        if self.head_type != "svd_taps":
            return self.features(pixel_values)
        pooled, taps = self._pooled_and_taps(pixel_values)
        return torch.cat([pooled, self.head.tap_features(taps).to(pooled.dtype)], dim=-1)

    def classify(self, head_inputs: torch.Tensor) -> torch.Tensor:
        """Return logits from precomputed `head_inputs` (the trainable part of the head only)."""
        if self.head_type != "svd_taps":
            return self.head(head_inputs)
        return self.head.classifier(head_inputs)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.head_type != "svd_taps":
            return self.head(self.features(pixel_values))
        pooled, taps = self._pooled_and_taps(pixel_values)
        return self.head(pooled, taps)

    def spec(self) -> dict[str, Any]:
        """Return the JSON-able description `from_spec` rebuilds this architecture from."""
        return {
            "backbone_config": self.backbone.config.to_dict(),
            "num_classes": self.num_classes,
            "pooling": self.pooling,
            "head": self.head_type,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "ViTClassifier":
        """Return a randomly initialised classifier with the architecture `spec` describes."""
        config = DINOv3ViTConfig.from_dict(dict(spec["backbone_config"]))
        return cls(DINOv3ViTModel(config), spec["num_classes"], spec["pooling"],
                   spec.get("head", "linear"))
