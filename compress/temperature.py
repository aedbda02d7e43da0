"""Temperature scaling as part of a model: logits divided by one scalar T fitted on validation data.

A saved model records T in structure.json (save_compressed(..., temperature=T)); load_compressed
wraps the rebuilt model in `TemperatureScaled` unless asked for raw logits, so the loaded model,
its softmax and an ONNX export of it all give the calibrated probabilities.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

TEMPERATURE_KEY = "temperature"


class TemperatureScaled(nn.Module):
    """`model` whose logits are divided by `temperature` (> 1 softens over-confident probabilities)."""

    def __init__(self, model: nn.Module, temperature: float):
        super().__init__()
        self.model = model
        self.temperature = check_temperature(temperature, "temperature")

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values) / self.temperature

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:.6g}"


def check_temperature(value: Any, where: str) -> float:
    """Return `value` as a float if it is a finite number > 0, else raise ValueError naming `where`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{where} must be a finite number > 0, got {value!r}")
    return float(value)


def unwrap_temperature(model: nn.Module) -> tuple[nn.Module, float | None]:
    """Return (the model inside a TemperatureScaled, its temperature), or (model, None) for any other model."""
    if isinstance(model, TemperatureScaled):
        return model.model, model.temperature
    return model, None
