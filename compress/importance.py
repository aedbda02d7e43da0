"""How important each attention head and MLP hidden unit is: weight energy, first-order Taylor, or activation.

Every score is a function (model, calibration batches) -> UnitScores, one non-negative value
per head and per MLP unit of every layer; the selection (compress.allocation) is the same for
all of them. A unit's parameters are the rows it owns in the output roles (q/k/v for a head,
up/gate for an MLP unit, biases included) and the columns it owns in the input role (o, down).

    energy      the notes' rule: ||W_o[:, S_h]||_F^2 per head, (||W_up[i]|| ||W_down[:, i]||)^2 per unit
                (compress.heads.head_energies, compress.mlp.neuron_energies); no data needed
    taylor      sum over the unit's parameters of |w * dL/dw|, L the mean cross-entropy of the
                model's logits, the gradient averaged over the calibration batches
    activation  mean over calibration tokens of the norm of the unit's contribution to the layer
                output: ||W_o[:, S_h] z_h|| per head (z_h the head's attention output),
                |a_i| ||W_down[:, i]|| per MLP unit (a_i its activation); no gradients
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from compress.adapters import adapter_for
from compress.config import check_importance
from compress.heads import attention_head_energies
from compress.linear import dense_weight
from compress.mlp import mlp_unit_energies
from compress.whitening import batch_pixels, forward_with_hooks


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class UnitScores:
    """Per-layer scores (float64, CPU), in the adapter's layer order: heads[l] has one value per head of
    layer l, mlp[l] one per hidden unit."""

    importance: str
    heads: tuple[torch.Tensor, ...]
    mlp: tuple[torch.Tensor, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return a dict that torch.save / torch.load(weights_only=True) round-trip."""
        return {"importance": self.importance, "heads": list(self.heads), "mlp": list(self.mlp)}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "UnitScores":
        """Return the scores written by to_dict."""
        return cls(str(record["importance"]), tuple(record["heads"]), tuple(record["mlp"]))


def unit_scores(model: nn.Module, importance: str, batches: Iterable[Any] | None = None,
                loss: Loss | None = None) -> UnitScores:
    """Return the `importance` scores of every head and MLP unit of `model` (batches: see collect_input_stats)."""
    check_importance("importance", importance)
    if importance == "energy":
        return energy_scores(model)
    if batches is None:
        raise ValueError(f"importance {importance!r} needs calibration batches, got None")
    if importance == "taylor":
        return taylor_scores(model, batches, loss)
    return activation_scores(model, batches)


def energy_scores(model: nn.Module, batches: Iterable[Any] | None = None) -> UnitScores:
    """Return the notes' weight energies of every head and MLP unit (`batches` is not read)."""
    return UnitScores("energy", tuple(attention_head_energies(model)), tuple(mlp_unit_energies(model)))


def taylor_scores(model: nn.Module, batches: Iterable[Any], loss: Loss | None = None) -> UnitScores:
    """Return sum_{w in unit} |w * g_w| per head and MLP unit, g = (1/B) sum_b dL_b/dw over the B batches.

    L_b is `loss(logits, labels)` (default: mean cross-entropy) of batch b, which must carry
    labels ((pixels, labels) pairs or dicts with 'labels'). The model runs in eval mode; its
    training flag and the parameters' requires_grad are restored afterwards, and no .grad is
    written.
    """
    adapter = adapter_for(model)
    loss = loss or functional.cross_entropy
    layers = [layer for _, layer in adapter.layers(model)]
    roles = [*adapter.head_output_roles, adapter.head_input_role,
             *adapter.neuron_output_roles, adapter.neuron_input_role]
    linears = {(index, role): module for index, layer in enumerate(layers) for role in roles
               if (module := adapter.linear(layer, role)) is not None}
    for (index, role), module in linears.items():
        if not isinstance(module, nn.Linear):
            raise TypeError(f"taylor importance needs dense nn.Linear layers; layer {index} {role} is "
                            f"{type(module).__name__} (score the model before SVD)")
    params = [param for module in linears.values() for param in module.parameters(recurse=False)]
    sums = [torch.zeros_like(param, dtype=torch.float64) for param in params]
    was_training, flags = model.training, [param.requires_grad for param in params]
    device = params[0].device
    num_batches = 0
    try:
        model.eval()
        for param in params:
            param.requires_grad_(True)
        with torch.enable_grad():
            for batch in batches:
                pixels, labels = batch_pixels(batch).to(device), _labels(batch).to(device)
                value = loss(_logits(model(pixels)), labels)
                for total, grad in zip(sums, torch.autograd.grad(value, params)):
                    total.add_(grad.to(torch.float64))
                num_batches += 1
    finally:
        for param, flag in zip(params, flags):
            param.requires_grad_(flag)
        model.train(was_training)
    if num_batches == 0:
        raise ValueError("batches must yield at least one batch of pixels and labels, got none")
    saliency = {id(param): (param.detach().to(torch.float64) * total / num_batches).abs().cpu()
                for param, total in zip(params, sums)}

    def unit_sums(index: int, output_roles: Iterable[str], input_role: str, width: int) -> torch.Tensor:
        """Sum saliency over each unit's output rows (weight and bias) and input columns."""
        scores = None
        for role in output_roles:
            module = linears.get((index, role))
            if module is None:
                continue
            rows = saliency[id(module.weight)].sum(dim=1)
            if module.bias is not None:
                rows = rows + saliency[id(module.bias)]
            scores = rows if scores is None else scores + rows
        scores = scores + saliency[id(linears[(index, input_role)].weight)].sum(dim=0)
        return scores.reshape(-1, width).sum(dim=1)

    heads = tuple(unit_sums(index, adapter.head_output_roles, adapter.head_input_role, adapter.head_dim(layer))
                  for index, layer in enumerate(layers))
    mlp = tuple(unit_sums(index, adapter.neuron_output_roles, adapter.neuron_input_role, 1)
                for index, _ in enumerate(layers))
    return UnitScores("taylor", heads, mlp)


def activation_scores(model: nn.Module, batches: Iterable[Any]) -> UnitScores:
    """Return each head's and MLP unit's mean output norm over the calibration tokens (see module docstring).

    The model runs in eval mode under no_grad; its training flag is restored afterwards.
    """
    adapter = adapter_for(model)
    layers = [layer for _, layer in adapter.layers(model)]
    sums: dict[tuple[int, str], torch.Tensor] = {}
    tokens: dict[tuple[int, str], int] = {}

    def make_hook(index: int, kind: str, layer: nn.Module):
        input_role = adapter.head_input_role if kind == "heads" else adapter.neuron_input_role
        weight = dense_weight(adapter.linear(layer, input_role)).detach()
        if kind == "heads":
            heads, width = adapter.head_count(layer), adapter.head_dim(layer)
            per_head = weight.reshape(weight.shape[0], heads, width)
        else:
            column_norms = weight.norm(dim=0)

        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            features = inputs[0].detach()
            rows = features.reshape(-1, features.shape[-1])
            if kind == "heads":
                # Head h's share of o_proj's output, token by token: W_o[:, S_h] z_h.
                norms = torch.einsum("thd,ohd->tho", rows.reshape(rows.shape[0], heads, width),
                                     per_head.to(rows.dtype)).norm(dim=-1)
            else:
                norms = rows.abs() * column_norms.to(rows.dtype)
            total = norms.to(torch.float64).sum(dim=0).cpu()
            key = (index, kind)
            sums[key] = total if key not in sums else sums[key] + total
            tokens[key] = tokens.get(key, 0) + rows.shape[0]

        return hook

    hooks = [(adapter.linear(layer, role), make_hook(index, kind, layer)) for index, layer in enumerate(layers)
             for kind, role in (("heads", adapter.head_input_role), ("mlp", adapter.neuron_input_role))]
    forward_with_hooks(model, batches, hooks)
    heads = tuple(sums[(index, "heads")] / tokens[(index, "heads")] for index in range(len(layers)))
    mlp = tuple(sums[(index, "mlp")] / tokens[(index, "mlp")] for index in range(len(layers)))
    return UnitScores("activation", heads, mlp)


def save_unit_scores(scores: UnitScores, path: str) -> None:
    """Write `scores` with torch.save."""
    torch.save(scores.to_dict(), path)


def load_unit_scores(path: str) -> UnitScores:
    """Return the scores written by save_unit_scores (loaded with weights_only=True)."""
    return UnitScores.from_dict(torch.load(path, map_location="cpu", weights_only=True))


def _labels(batch: Any) -> torch.Tensor:
    if isinstance(batch, Mapping) and "labels" in batch:
        return batch["labels"]
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[1], torch.Tensor):
        return batch[1]
    raise TypeError("taylor importance needs labelled batches: (pixels, labels) pairs or dicts with "
                    f"'pixel_values' and 'labels', got {type(batch).__name__}")


def _logits(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise TypeError(f"taylor importance needs a model whose forward returns logits, got {type(output).__name__}")
