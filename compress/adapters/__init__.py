"""Model-family adapters: the only place that knows where a family keeps its heads and linears.

Supporting another ViT family means one new module here exposing an object with the same
methods as `dinov3.DINOv3Adapter`, appended to `ADAPTERS`.
"""

from torch import nn

from compress.adapters.dinov3 import ADAPTER as DINOV3_ADAPTER
from compress.adapters.dinov3 import DINOv3Adapter

ADAPTERS = (DINOV3_ADAPTER,)


def adapter_for(model: nn.Module, argument: str = "model") -> DINOv3Adapter:
    """Return the adapter whose layers `model` contains; TypeError naming `argument` if none does."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{argument} must be a torch.nn.Module, got {type(model).__name__}")
    for adapter in ADAPTERS:
        if adapter.layers(model):
            return adapter
    known = ", ".join(name for adapter in ADAPTERS for name in adapter.layer_class_names)
    raise TypeError(
        f"{argument} must contain transformer layers of a supported family ({known}); "
        f"found none in {type(model).__name__}"
    )


def adapter_named(family: str) -> DINOv3Adapter:
    """Return the adapter registered for `family` (as written by save_compressed)."""
    for adapter in ADAPTERS:
        if adapter.family == family:
            return adapter
    known = ", ".join(adapter.family for adapter in ADAPTERS)
    raise ValueError(f"unknown model family {family!r}; known: {known}")


__all__ = ["ADAPTERS", "DINOv3Adapter", "adapter_for", "adapter_named"]
