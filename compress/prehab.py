"""Differentiable low-rank regularizers for the prehab stage, on W or on W L (whitened space).

Each surrogate is named for what it computes, and all are scale-free (multiplying A by a
constant leaves them unchanged), so one lambda grid means the same on every layer and in
both spaces. The nuclear norm ||A||_* itself is not offered: it grows with the weights'
scale (and the whitening's), so a fixed lambda would mostly shrink weights. Its scale-free
form, nuclear_ratio = ||A||_* / ||A||_F, is the nuclear-norm surrogate used here.

The PREHAB-SVD notes regularise in whitened space and, for ViTs, pair a nuclear-norm
surrogate with the entropy effective rank: that pairing is the kind
"nuclear_ratio+effective_rank" (the sum of the two).

The notes' surrogate is Fisher-aligned: kind "fisher_weighted" takes the same pairing on
diag(sqrt(F)) W L, where F is the empirical diagonal Fisher of each target's outputs (the mean
squared gradient of the task loss with respect to each output unit, over the calibration
batches, collect_output_fisher). Output directions the loss is sensitive to then weigh more in
the spectrum, so the rank the penalty removes is the rank the task needs least.
"""

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compress.adapters import adapter_for
from compress.config import FISHER_WEIGHTED, PENALTY_KINDS, REGULARIZER_NAMES
from compress.linear import dense_weight
from compress.targets import check_targets
from compress.whitening import InputStats, target_linears


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


def fisher_weighted(weight: torch.Tensor, factor: torch.Tensor | None = None,
                    fisher: torch.Tensor | None = None) -> torch.Tensor:
    """Return nuclear_ratio + effective_rank of diag(sqrt(F)) W L, F the outputs' diagonal Fisher.

    F is divided by its mean first (the surrogates are scale-free, so only its shape across the
    outputs matters; the division keeps the product in a sane range). Without `fisher` this is
    nuclear_ratio_plus_effective_rank.
    """
    if fisher is not None:
        if fisher.shape != weight.shape[:1]:
            raise ValueError(f"fisher must hold one value per output ({weight.shape[0]}), got shape {tuple(fisher.shape)}")
        scale = (fisher / fisher.mean()).sqrt().to(dtype=weight.dtype, device=weight.device)
        weight = scale[:, None] * weight
    return nuclear_ratio_plus_effective_rank(weight, factor)


REGULARIZERS: dict[str, Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]] = dict(zip(
    REGULARIZER_NAMES, (stable_rank, nuclear_ratio, effective_rank, nuclear_ratio_plus_effective_rank), strict=True))


def collect_output_fisher(model: nn.Module, batches: Iterable[Any], targets: Iterable[str] | None = None
                          ) -> dict[str, torch.Tensor]:
    """Return {qualified linear name: F} over `batches` of (pixels, labels): F_i is the mean over examples
    (and tokens) of the squared gradient of the example's cross-entropy with respect to output i.

    The model runs in eval mode (no dropout) with gradients; its parameters' .grad and training flag are
    left as they were.
    """
    modules = target_linears(model, targets)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = dict.fromkeys(modules, 0)

    def make_hook(name: str):
        def on_output(_module: nn.Module, _inputs, output: torch.Tensor) -> None:
            def on_grad(grad: torch.Tensor) -> None:
                rows = grad.detach().reshape(-1, grad.shape[-1]).to(torch.float64)
                squared = rows.pow(2).sum(0).cpu()
                sums[name] = squared if name not in sums else sums[name].add_(squared)
                counts[name] += rows.shape[0]

            if output.requires_grad:
                output.register_hook(on_grad)

        return on_output

    was_training = model.training
    saved_grads = {id(p): p.grad for p in model.parameters()}
    device = next(model.parameters()).device
    handles = [module.register_forward_hook(make_hook(name)) for name, module in modules.items()]
    batches_seen = 0
    try:
        model.eval()
        with torch.enable_grad():
            for pixels, labels in batches:
                # reduction="sum": each example's own loss gradient, not divided by the batch size
                loss = F.cross_entropy(model(pixels.to(device)).float(), labels.to(device), reduction="sum")
                loss.backward()
                batches_seen += 1
    finally:
        for handle in handles:
            handle.remove()
        for param in model.parameters():
            param.grad = saved_grads[id(param)]
        model.train(was_training)
    if batches_seen == 0:
        raise ValueError("batches must yield at least one (pixels, labels) batch, got none")
    missing = [name for name in modules if name not in sums]
    if missing:
        raise RuntimeError(f"no gradient reached {missing[0]}: are its parameters frozen (requires_grad=False)?")
    return {name: (sums[name] / counts[name]).float() for name in modules}


def lowrank_penalty(
    model: nn.Module,
    kind: str,
    whitening: Mapping[str, InputStats] | None = None,
    targets: Iterable[str] | None = None,
    fisher: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Return the sum over every target linear of regularizer `kind` (a name in PENALTY_KINDS).

    With `whitening` ({qualified name: InputStats} of this model) each term is taken on W L,
    S = L L^T, so the penalty favours weights that are low rank on the data's input distribution.
    Kind "fisher_weighted" needs `fisher` ({qualified name: F}, collect_output_fisher).
    """
    if kind not in PENALTY_KINDS:
        raise ValueError(f"kind must be one of {', '.join(PENALTY_KINDS)}, got {kind!r}")
    if kind == FISHER_WEIGHTED and fisher is None:
        raise ValueError("kind 'fisher_weighted' needs the targets' output Fisher (collect_output_fisher)")
    regularizer = REGULARIZERS.get(kind)
    roles = check_targets("targets", targets)
    adapter = adapter_for(model)
    terms = []
    for name, layer in adapter.layers(model):
        for role in roles:
            module = adapter.linear(layer, role)
            if module is None:
                continue
            weight = dense_weight(module)
            qualified = f"{name}.{adapter.linear_path(role)}"
            factor = None
            if whitening is not None:
                if qualified not in whitening:
                    raise ValueError(
                        f"whitening has no statistics for {qualified!r}; collect them on this model "
                        "with collect_input_stats(model, batches, targets=...)"
                    )
                factor = whitening[qualified].factor_as(weight.dtype, weight.device)
            if regularizer is not None:
                terms.append(regularizer(weight, factor))
                continue
            if qualified not in fisher:
                raise ValueError(f"fisher has no values for {qualified!r}; collect them on this model "
                                 "with collect_output_fisher(model, batches, targets=...)")
            terms.append(fisher_weighted(weight, factor, fisher[qualified]))
    return torch.stack(terms).sum()
