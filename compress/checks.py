"""Boundary checks shared by the compression entry points; messages name the argument and the range."""

import math
import numbers
from collections.abc import Iterable, Sequence

import torch
from torch import nn


def check_fraction(name: str, value: float) -> float:
    """Return `value` if it is a real number in (0, 1]; raise TypeError/ValueError naming `name` otherwise."""
    number = _real(name, value)
    if not (0.0 < number <= 1.0):
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return number


def check_half_open_unit(name: str, value: float) -> float:
    """Return `value` if it is a real number in [0, 1); raise naming `name` otherwise."""
    number = _real(name, value)
    if not (0.0 <= number < 1.0):
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return number


def check_positive(name: str, value: float) -> float:
    """Return `value` if it is a finite real number > 0; raise naming `name` otherwise."""
    number = _real(name, value)
    if not (number > 0.0 and math.isfinite(number)):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return number


def check_finite_weights(named_modules: Iterable[tuple[str, nn.Module]]) -> None:
    """Raise ValueError naming the first parameter of the given modules that holds NaN or inf."""
    for module_name, module in named_modules:
        for param_name, param in module.named_parameters():
            if not torch.isfinite(param.detach()).all():
                raise ValueError(
                    f"model weights must be finite: {module_name}.{param_name} holds NaN or inf"
                )


def _real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    number = float(value)
    if math.isnan(number):
        raise ValueError(f"{name} must be a number, got NaN")
    return number


def check_scores(name: str, scores: Sequence[torch.Tensor], sizes: Sequence[int]) -> list[torch.Tensor]:
    """Return `scores` as a list if it holds one tensor of sizes[l] values per layer l; raise naming `name`."""
    scores = list(scores)
    if len(scores) != len(sizes):
        raise ValueError(f"{name} must hold one tensor per layer ({len(sizes)}), got {len(scores)}")
    for index, (layer_scores, size) in enumerate(zip(scores, sizes)):
        if torch.as_tensor(layer_scores).numel() != size:
            raise ValueError(f"{name}[{index}] must hold {size} values (one per unit), "
                             f"got {torch.as_tensor(layer_scores).numel()}")
    return scores
