"""MLP hidden-unit pruning: by the salience of each unit's input row and output column, or by given scores."""

from collections.abc import Sequence

import torch
from torch import nn

from compress.adapters import adapter_for
from compress.allocation import allocate
from compress.checks import check_fraction
from compress.linear import dense_weight
from compress.params import count_params
from compress.report import LayerDecision
from compress.surgery import keep_units
from compress.tensor_checks import check_finite_weights, check_scores


def neuron_energies(
    up_weight: torch.Tensor, down_weight: torch.Tensor, gate_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Return e_i = s_i^2 with s_i = ||W_up[i, :]|| * ||W_down[:, i]|| (times ||W_gate[i, :]|| when gated).

    For a gated MLP, unit i computes act(g_i . x) * (u_i . x); for large pre-activations act is
    close to linear, so its output scales with ||g_i|| * ||u_i|| * ||d_i||, the score used here.
    """
    salience = up_weight.detach().double().norm(dim=1) * down_weight.detach().double().norm(dim=0)
    if gate_weight is not None:
        salience = salience * gate_weight.detach().to(torch.float64).norm(dim=1)
    return salience.pow(2)


def mlp_unit_energies(model: nn.Module) -> list[torch.Tensor]:
    """Return neuron_energies of every layer of `model`, in the adapter's layer order."""
    adapter = adapter_for(model)
    energies = []
    for _, layer in adapter.layers(model):
        weights = {role: dense_weight(module) for role in (*adapter.neuron_output_roles, adapter.neuron_input_role)
                   if (module := adapter.linear(layer, role)) is not None}
        energies.append(neuron_energies(weights["up"], weights["down"], weights.get("gate")))
    return energies


def prune_mlp_neurons(model: nn.Module, tau: float, scores: Sequence[torch.Tensor] | None = None,
                      allocation: str = "per_layer") -> list[LayerDecision]:
    """Keep the fewest MLP hidden units whose score reaches `tau` (compress.allocation); one decision per layer.

    `scores` holds one tensor per layer (one value per unit); None scores by energy, the
    notes' rule. Kept units keep their rows of W_up and W_gate (with biases) and their
    columns of W_down (bias unchanged). Modifies `model`.
    """
    tau = check_fraction("tau", tau)
    adapter = adapter_for(model)
    layers = adapter.layers(model)
    roles = (*adapter.neuron_output_roles, adapter.neuron_input_role)
    check_finite_weights(
        (f"{name}.{adapter.linear_path(role)}", module)
        for name, layer in layers
        for role in roles
        if (module := adapter.linear(layer, role)) is not None
    )
    widths = [adapter.mlp_width(layer) for _, layer in layers]
    scores = mlp_unit_energies(model) if scores is None else check_scores("scores", scores, widths)
    decisions = []
    for index, ((name, layer), kept, width) in enumerate(zip(layers, allocate(scores, tau, allocation), widths)):
        params_before = count_params(layer)
        applied = kept.numel() < width
        if applied:
            keep_units(adapter, layer, kept)
        decisions.append(
            LayerDecision(
                method="mlp",
                layer=index,
                module=f"{name}.{adapter.mlp_path}",
                total=width,
                kept=kept.numel(),
                applied=applied,
                params_removed=params_before - count_params(layer),
                kept_indices=tuple(kept.tolist()),
                unit_width=1,
                input_pruned=f"{name}.{adapter.linear_path(adapter.neuron_input_role)}",
            )
        )
    return decisions
