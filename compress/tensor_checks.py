"""Checks on weights and score tensors at the entry of the pruning and SVD functions."""

from collections.abc import Iterable, Sequence

import torch
from torch import nn


def check_finite_weights(named_modules: Iterable[tuple[str, nn.Module]]) -> None:
    """Raise ValueError naming the first parameter of the given modules that holds NaN or inf."""
    for module_name, module in named_modules:
        for param_name, param in module.named_parameters():
            if not torch.isfinite(param.detach()).all():
                raise ValueError(
                    f"model weights must be finite: {module_name}.{param_name} holds NaN or inf"
                )


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
