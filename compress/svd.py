"""Truncated SVD of linear layers, in raw weight space or whitened by calibration statistics."""

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from compress.adapters import adapter_for
from compress.checks import check_fraction, check_positive
from compress.energy import keep_count
from compress.linear import LowRankLinear
from compress.report import LayerDecision
from compress.targets import check_targets
from compress.tensor_checks import check_finite_weights
from compress.whitening import DEFAULT_DAMPING, InputStats, WhiteningFactor


def low_rank_factors(
    weight: torch.Tensor, tau: float = 1.0, whitening: WhiteningFactor | None = None, rank: int | None = None
) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Return (r, reduce, expand) with W ~= expand @ reduce; r is the smallest rank whose sigma^2 energy reaches tau.

    Raw: W = U S V^T, reduce = V_r^T, expand = U_r S_r.
    Whitened (S = L L^T): W L = U S V^T, reduce = V_r^T L^{-1}, expand = U_r S_r, which minimises
    ||(W - W_r) X^T||_F over rank-r W_r for inputs X with second moment S.
    A given `rank` replaces the tau rule. Factors are float64 on the CPU, where these small
    decompositions run.
    """
    matrix = weight.detach().to(device="cpu", dtype=torch.float64)
    if whitening is not None:
        matrix = matrix @ whitening.factor
    left, singular, right_t = _thin_svd(matrix)
    if rank is None:
        rank = keep_count(singular.pow(2), tau)
    elif not 1 <= rank <= singular.numel():
        raise ValueError(f"rank must be in [1, {singular.numel()}], got {rank}")
    reduce = right_t[:rank]
    if whitening is not None:
        reduce = whitening.solve_right(reduce)
    return rank, reduce, left[:, :rank] * singular[:rank]


def _thin_svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return U, S, V^T of `matrix`, decomposing its tall orientation (LAPACK is many times slower on wide ones)."""
    if matrix.shape[0] >= matrix.shape[1]:
        return torch.linalg.svd(matrix, full_matrices=False)
    left_t, singular, right = torch.linalg.svd(matrix.T, full_matrices=False)
    return right.T, singular, left_t.T


def saves_params(rank: int, in_features: int, out_features: int) -> bool:
    """Return whether r*(in + out) < in*out, i.e. the factorised layer is smaller (biases cancel)."""
    return rank * (in_features + out_features) < in_features * out_features


def truncate_svd(
    model: nn.Module,
    tau: float,
    whitening: Mapping[str, InputStats] | None = None,
    targets: Iterable[str] | None = None,
    damping: float = DEFAULT_DAMPING,
) -> list[LayerDecision]:
    """Factorise each target nn.Linear to the rank keeping `tau` of its sigma^2 energy; return one decision per linear.

    With `whitening` ({qualified name: InputStats} for this model), the SVD is taken of W L,
    where L L^T = S + damping * mean(diag S) * I (compress.whitening.whitening_factor).
    A layer is replaced by a LowRankLinear only if r*(in + out) + bias < in*out + bias.
    Linears that are already low rank are left alone. Modifies `model`.
    """
    tau = check_fraction("tau", tau)
    damping = check_positive("damping", damping)
    roles = check_targets("targets", targets)
    adapter = adapter_for(model)
    if whitening is not None and not isinstance(whitening, Mapping):
        raise TypeError(
            f"whitening must be a dict of InputStats from collect_input_stats, got {type(whitening).__name__}"
        )
    found = [
        (index, f"{name}.{adapter.linear_path(role)}", layer, role, module)
        for index, (name, layer) in enumerate(adapter.layers(model))
        for role in roles
        if isinstance(module := adapter.linear(layer, role), nn.Linear)
    ]
    check_finite_weights((qualified, module) for _, qualified, _, _, module in found)
    with _one_thread():
        return [_truncate_one(adapter, tau, whitening, damping, *item) for item in found]


def _truncate_one(
    adapter, tau: float, whitening: Mapping[str, InputStats] | None, damping: float, index: int, qualified: str,
    layer: nn.Module, role: str, module: nn.Linear,
) -> LayerDecision:
    """Factorise one linear in place if that saves parameters; return its decision."""
    out_features, in_features = module.weight.shape
    full_rank = min(in_features, out_features)
    if tau == 1.0:
        return LayerDecision("svd", index, qualified, full_rank, full_rank, applied=False)
    factor = _whitening_for(whitening, qualified, in_features, damping) if whitening is not None else None
    rank, reduce, expand = low_rank_factors(module.weight, tau, factor)
    applied = saves_params(rank, in_features, out_features)
    if applied:
        like = {"dtype": module.weight.dtype, "device": module.weight.device}
        replacement = LowRankLinear.from_factors(reduce.to(**like), expand.to(**like), module.bias)
        replacement.requires_grad_(module.weight.requires_grad)
        adapter.set_linear(layer, role, replacement)
    removed = in_features * out_features - rank * (in_features + out_features) if applied else 0
    return LayerDecision("svd", index, qualified, full_rank, rank, applied, params_removed=removed)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run the enclosed decompositions on one intra-op thread, then restore the thread count.

    LAPACK on these few-hundred-wide matrices gains little from threads, and on shared cores
    its threads spin-wait: in bench/bench_compress.py runs on 2 busy cores, whitened
    compress_model of ViT-S took 19 s with 2 threads and 3.9 s with one.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _whitening_for(whitening: Mapping[str, InputStats], name: str, in_features: int, damping: float) -> WhiteningFactor:
    stats = whitening.get(name)
    if stats is None:
        raise ValueError(
            f"whitening has no statistics for {name!r}; collect them on this model with "
            f"collect_input_stats(model, batches, targets=...) (available: {len(whitening)} entries)"
        )
    size = stats.second_moment.shape[0]
    if size != in_features:
        raise ValueError(
            f"whitening[{name!r}] is {size}x{size} but the layer reads {in_features} features; "
            "statistics collected before pruning must be restricted to the kept inputs"
        )
    return stats.whitening(damping)
