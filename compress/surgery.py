"""Structural surgery on one transformer layer, shared by head pruning, MLP pruning and loading.

Each function keeps a subset of a layer's heads or MLP hidden units: the output rows of the
linears that produce them, the input columns of the linear that consumes them, and the
layer's own count, so every attribute stays consistent with the weights.
"""

import torch
from torch import nn

from compress.linear import keep_inputs, keep_outputs


def keep_heads(adapter, layer: nn.Module, heads: torch.Tensor) -> None:
    """Keep the attention heads `heads` (indices, in order) of `layer`; modifies it."""
    head_dim = adapter.head_dim(layer)
    channels = (heads[:, None] * head_dim + torch.arange(head_dim)).flatten()
    for role in adapter.head_output_roles:
        adapter.set_linear(layer, role, keep_outputs(adapter.linear(layer, role), channels))
    role = adapter.head_input_role
    adapter.set_linear(layer, role, keep_inputs(adapter.linear(layer, role), channels))
    adapter.set_head_count(layer, heads.numel())


def keep_units(adapter, layer: nn.Module, units: torch.Tensor) -> None:
    """Keep the MLP hidden units `units` (indices, in order) of `layer`; modifies it."""
    for role in adapter.neuron_output_roles:
        if (module := adapter.linear(layer, role)) is not None:
            adapter.set_linear(layer, role, keep_outputs(module, units))
    role = adapter.neuron_input_role
    adapter.set_linear(layer, role, keep_inputs(adapter.linear(layer, role), units))
    adapter.set_mlp_width(layer, units.numel())
