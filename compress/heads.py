"""Attention-head pruning: by the energy of each head's slice of the output projection, or by given scores."""

from collections.abc import Sequence

import torch
from torch import nn

from compress.adapters import adapter_for
from compress.allocation import allocate
from compress.checks import check_fraction
from compress.linear import dense_weight
from compress.params import count_params
from compress.report import LayerDecision
from compress.surgery import keep_heads
from compress.tensor_checks import check_finite_weights, check_scores


def head_energies(output_weight: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """Return e_h = ||W_o[:, S_h]||_F^2 per head, S_h = [h*d_h, (h+1)*d_h), in float64."""
    weight = output_weight.detach().to(torch.float64)
    return weight.reshape(weight.shape[0], num_heads, head_dim).pow(2).sum(dim=(0, 2))


def attention_head_energies(model: nn.Module) -> list[torch.Tensor]:
    """Return head_energies of every layer of `model`, in the adapter's layer order."""
    adapter = adapter_for(model)
    return [head_energies(dense_weight(adapter.linear(layer, adapter.head_input_role)),
                          adapter.head_count(layer), adapter.head_dim(layer))
            for _, layer in adapter.layers(model)]


def prune_attention_heads(model: nn.Module, tau: float, scores: Sequence[torch.Tensor] | None = None,
                          allocation: str = "per_layer") -> list[LayerDecision]:
    """Keep the fewest heads whose score reaches `tau` (compress.allocation); return one decision per layer.

    `scores` holds one tensor per layer (one value per head); None scores by energy, the
    notes' rule. Kept heads keep their q/k/v output rows (and biases) and their o_proj input
    columns; o_proj's bias is unchanged and the layer's head count is updated. Modifies `model`.
    """
    tau = check_fraction("tau", tau)
    adapter = adapter_for(model)
    layers = adapter.layers(model)
    roles = (*adapter.head_output_roles, adapter.head_input_role)
    check_finite_weights(
        (f"{name}.{adapter.linear_path(role)}", adapter.linear(layer, role))
        for name, layer in layers
        for role in roles
    )
    counts = [adapter.head_count(layer) for _, layer in layers]
    scores = attention_head_energies(model) if scores is None else check_scores("scores", scores, counts)
    decisions = []
    for index, ((name, layer), kept) in enumerate(zip(layers, allocate(scores, tau, allocation))):
        num_heads, head_dim = adapter.head_count(layer), adapter.head_dim(layer)
        params_before = count_params(layer)
        applied = kept.numel() < num_heads
        if applied:
            keep_heads(adapter, layer, kept)
        decisions.append(
            LayerDecision(
                method="heads",
                layer=index,
                module=f"{name}.{adapter.attention_path}",
                total=num_heads,
                kept=kept.numel(),
                applied=applied,
                params_removed=params_before - count_params(layer),
                kept_indices=tuple(kept.tolist()),
                unit_width=head_dim,
                input_pruned=f"{name}.{adapter.linear_path(adapter.head_input_role)}",
            )
        )
    return decisions
