"""Parameter counting."""

from torch import nn


def count_params(model: nn.Module) -> int:
    """Return the number of distinct parameter elements of `model` (shared tensors counted once)."""
    return sum(param.numel() for param in model.parameters())
