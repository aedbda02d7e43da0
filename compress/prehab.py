"""Differentiable low-rank regularizers for the prehab stage, on W or on W L (whitened space).

Each surrogate is named for what it computes, and all are scale-free (multiplying A by a
constant leaves them unchanged), so one lambda grid means the same on every layer and in
both spaces. The nuclear norm ||A||_* itself is not offered: it grows with the weights'
scale (and the whitening's), so a fixed lambda would mostly shrink weights. Its scale-free
form, nuclear_ratio = ||A||_* / ||A||_F, is the nuclear-norm surrogate used here.

The PREHAB-SVD notes regularise in whitened space and, for ViTs, pair a nuclear-norm
surrogate with the entropy effective rank: that pairing is the kind
"nuclear_ratio+effective_rank" (the sum of the two).
"""

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from compress.adapters import adapter_for
from compress.linear import dense_weight
from compress.targets import check_targets
from compress.whitening import InputStats


def _singular_values(weight: torch.Tensor, factor: torch.Tensor | None) -> torch.Tensor:
    matrix = weight if factor is None else weight @ factor.to(dtype=weight.dtype, device=weight.device)
    if matrix.dtype in (torch.float16, torch.bfloat16):
        matrix = matrix.float()  # no half-precision SVD kernels
    return torch.linalg.svdvals(matrix)


def stable_rank(weight: torch.Tensor, factor: torch.Tensor | None = None) -> torch.Tensor:
    """Return ||A||_F^2 / ||A||_2^2 = sum sigma_i^2 / sigma_1^2 for A = W (or W L given `factor` L)."""
    singular = _singular_values(weight, factor)
    return singular.pow(2).sum() / singular[0].pow(2)


def nuclear_ratio(weight: torch.Tensor, factor: torch.Tensor | None = None) -> torch.Tensor:
    """Return ||A||_* / ||A||_F = sum sigma_i / sqrt(sum sigma_i^2) for A = W (or W L), in [1, sqrt(rank)]."""
    return _nuclear_ratio_of(_singular_values(weight, factor))


def _nuclear_ratio_of(singular: torch.Tensor) -> torch.Tensor:
    return singular.sum() / singular.pow(2).sum().sqrt()


def effective_rank(weight: torch.Tensor, factor: torch.Tensor | None = None) -> torch.Tensor:
    """Return exp(H(p)) with p_i = sigma_i / sum sigma_j and H(p) = -sum p_i log p_i, for A = W (or W L)."""
    return _effective_rank_of(_singular_values(weight, factor))


def _effective_rank_of(singular: torch.Tensor) -> torch.Tensor:
    share = singular / singular.sum()
    # Clamping inside the log keeps the gradient finite where sigma_i = 0 (0 * log 0 -> 0).
    entropy = -(share * share.clamp_min(torch.finfo(share.dtype).tiny).log()).sum()
    return entropy.exp()


def nuclear_ratio_plus_effective_rank(weight: torch.Tensor, factor: torch.Tensor | None = None) -> torch.Tensor:
    """Return nuclear_ratio(A) + effective_rank(A) for A = W (or W L), from one SVD: the notes' ViT pairing."""
    singular = _singular_values(weight, factor)
    return _nuclear_ratio_of(singular) + _effective_rank_of(singular)


REGULARIZERS: dict[str, Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]] = {
    "stable_rank": stable_rank,
    "nuclear_ratio": nuclear_ratio,
    "effective_rank": effective_rank,
    "nuclear_ratio+effective_rank": nuclear_ratio_plus_effective_rank,
}


def lowrank_penalty(
    model: nn.Module,
    kind: str,
    whitening: Mapping[str, InputStats] | None = None,
    targets: Iterable[str] | None = None,
) -> torch.Tensor:
    """Return the sum over every target linear of regularizer `kind` (a name in REGULARIZERS).

    With `whitening` ({qualified name: InputStats} of this model) each term is taken on W L,
    S = L L^T, so the penalty favours weights that are low rank on the data's input distribution.
    """
    if kind not in REGULARIZERS:
        raise ValueError(f"kind must be one of {', '.join(REGULARIZERS)}, got {kind!r}")
    regularizer = REGULARIZERS[kind]
    roles = check_targets("targets", targets)
    adapter = adapter_for(model)
    terms = []
    for name, layer in adapter.layers(model):
        for role in roles:
            module = adapter.linear(layer, role)
            if module is None:
                continue
            weight = dense_weight(module)
            factor = None
            if whitening is not None:
                qualified = f"{name}.{adapter.linear_path(role)}"
                if qualified not in whitening:
                    raise ValueError(
                        f"whitening has no statistics for {qualified!r}; collect them on this model "
                        "with collect_input_stats(model, batches, targets=...)"
                    )
                factor = whitening[qualified].factor_as(weight.dtype, weight.device)
            terms.append(regularizer(weight, factor))
    return torch.stack(terms).sum()
