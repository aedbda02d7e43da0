"""Which units each layer keeps, given per-layer scores and tau: per layer (the notes) or one global budget.

    per_layer  every layer keeps the fewest units holding tau of its own total (compress.energy.select_units)
    global     scores are normalised to shares of their layer's total (s_i / sum_layer s), ranked across
               all layers at once, and the fewest units holding tau of the summed shares are kept, with
               each layer's highest-scoring unit always among them: no layer is ever emptied, and layers
               whose scores are concentrated give up more units than layers whose scores are spread
"""

from collections.abc import Sequence

import torch

from compress.checks import check_fraction
from compress.config import check_allocation
from compress.energy import select_units



def allocate(scores: Sequence[torch.Tensor], tau: float, allocation: str = "per_layer") -> list[torch.Tensor]:
    """Return, per layer, the ascending indices of the units to keep under `allocation` (see module docstring)."""
    tau = check_fraction("tau", tau)
    check_allocation("allocation", allocation)
    if allocation == "per_layer":
        return [select_units(layer_scores, tau) for layer_scores in scores]
    return select_global(scores, tau)


def select_global(scores: Sequence[torch.Tensor], tau: float) -> list[torch.Tensor]:
    """Return per layer the kept indices of one global ranking of layer shares (ties: earlier layer, lower index).

    With p_{l,i} = s_{l,i} / sum_j s_{l,j} (0 for a layer whose scores are all 0), M the set of
    each layer's top unit and the other units sorted by descending p, keep M and the fewest
    next units K with sum_{M u K} p >= tau * sum_{l,i} p_{l,i}. tau = 1 keeps every unit.
    """
    values = [torch.as_tensor(layer).detach().flatten().to(torch.float64).cpu() for layer in scores]
    for index, layer in enumerate(values):
        if layer.numel() == 0:
            raise ValueError(f"scores of layer {index} must hold at least one value, got an empty tensor")
        if not torch.isfinite(layer).all() or (layer < 0).any():
            raise ValueError(f"scores of layer {index} must be finite and non-negative")
    if tau == 1.0:
        return [torch.arange(layer.numel()) for layer in values]
    shares = [layer / total if (total := layer.sum()) > 0 else torch.zeros_like(layer) for layer in values]
    flat = torch.cat(shares)
    layer_of = torch.cat([torch.full((layer.numel(),), index) for index, layer in enumerate(shares)])
    offsets = torch.tensor([0, *[layer.numel() for layer in shares]]).cumsum(0)[:-1]
    top = torch.stack([torch.sort(layer, descending=True, stable=True).indices[0] for layer in shares])
    mandatory = torch.zeros(flat.numel(), dtype=torch.bool)
    mandatory[offsets + top] = True
    rest = torch.nonzero(~mandatory).flatten()
    rest = rest[torch.sort(flat[rest], descending=True, stable=True).indices]
    needed = tau * flat.sum()
    held = flat[mandatory].sum() + torch.cat([torch.zeros(1, dtype=torch.float64), flat[rest].cumsum(0)])
    reached = torch.nonzero(held >= needed).flatten()
    # Rounding can leave the last partial sum a hair below tau * total: then keep everything.
    extra = int(reached[0]) if reached.numel() else rest.numel()
    kept = mandatory.clone()
    kept[rest[:extra]] = True
    return [torch.nonzero(kept[layer_of == index]).flatten() for index in range(len(shares))]
