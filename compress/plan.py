"""compress_model: a CompressionPlan (compress.config) applied to a model, heads -> MLP -> SVD -> tokens."""

import copy
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from compress.adapters import adapter_for
from compress.config import CompressionPlan, TokenPlan
from compress.heads import prune_attention_heads
from compress.importance import UnitScores, unit_scores
from compress.mlp import prune_mlp_neurons
from compress.params import count_params
from compress.report import CompressionReport, LayerDecision
from compress.svd import truncate_svd
from compress.tokens import enable_token_pruning
from compress.whitening import InputStats, collect_input_stats

logger = logging.getLogger(__name__)

Calibration = Mapping[str, InputStats] | Iterable[Any]


def compress_model(
    model: nn.Module,
    plan: CompressionPlan,
    calibration: Calibration | None = None,
    tokens: TokenPlan | None = None,
    scores: UnitScores | None = None,
) -> tuple[nn.Module, CompressionReport]:
    """Return (a compressed deep copy of `model`, its report); `model` itself is not modified.

    Order: attention heads (plan.tau_heads) -> MLP units (tau_mlp) -> truncated SVD (tau_svd,
    raw or whitened) -> token pruning (`tokens`; skipped when None or at r_max = 0).
    Heads and units are ranked by plan.importance and kept by plan.allocation. A data-aware
    importance (taylor, activation) uses `scores` of `model` (compress.importance.unit_scores,
    e.g. cached by a trial) or, when None, computes them from `calibration` batches.
    Whitened SVD with tau_svd < 1 needs `calibration`: either {name: InputStats} collected on the
    uncompressed model (o/down statistics are restricted to the kept heads/units here) or an
    iterable of batches, from which statistics are collected on the pruned model.
    """
    if not isinstance(plan, CompressionPlan):
        raise TypeError(f"plan must be a CompressionPlan, got {type(plan).__name__}")
    if tokens is not None and not isinstance(tokens, TokenPlan):
        raise TypeError(f"tokens must be a TokenPlan or None, got {type(tokens).__name__}")
    adapter_for(model)
    if plan.whitened_svd and calibration is None:
        raise ValueError(
            "compress.svd_space='whitened' needs calibration: pass calibration=collect_input_stats(model, batches) "
            "(statistics of the uncompressed model) or calibration=<iterable of pixel batches>"
        )
    if scores is not None and not isinstance(scores, UnitScores):
        raise TypeError(f"scores must be UnitScores or None, got {type(scores).__name__}")
    if plan.needs_scores and scores is None:
        if calibration is None or isinstance(calibration, Mapping):
            raise ValueError(
                f"compress.importance={plan.importance!r} needs scores=unit_scores(model, {plan.importance!r}, "
                "batches) or calibration=<iterable of labelled pixel batches>"
            )
        calibration = list(calibration)  # read again below when whitened SVD collects statistics
        scores = unit_scores(model, plan.importance, calibration)
    if scores is not None and plan.needs_scores and scores.importance != plan.importance:
        raise ValueError(f"scores are {scores.importance!r} scores, but compress.importance is {plan.importance!r}")
    params_before = count_params(model)
    compressed = copy.deepcopy(model)
    # Data-aware scores are those of the unpruned model, MLP units' included; energy is read
    # from the weights at each step (None), as the notes do.
    head_scores, mlp_scores = (scores.heads, scores.mlp) if plan.needs_scores else (None, None)
    heads = prune_attention_heads(compressed, plan.tau_heads, head_scores, plan.allocation)
    mlp = prune_mlp_neurons(compressed, plan.tau_mlp, mlp_scores, plan.allocation)
    svd: list[LayerDecision] = []
    if plan.tau_svd < 1.0 and plan.svd_targets:
        whitening = None
        if plan.whitened_svd:
            whitening = _statistics_for(compressed, calibration, [*heads, *mlp], plan.svd_targets)
        svd = truncate_svd(compressed, plan.tau_svd, whitening=whitening, targets=plan.svd_targets,
                           damping=plan.svd_damping)
    token_summary = None
    if tokens is not None and tokens.enabled:
        token_summary = enable_token_pruning(compressed, tokens.r_max, tokens.alpha, fuse=tokens.fuse)
    report = CompressionReport(
        params_before=params_before,
        params_after=count_params(compressed),
        heads=heads,
        mlp=mlp,
        svd=svd,
        svd_space=plan.svd_space,
        tokens=token_summary,
        plan={**plan.to_dict(), **({"tokens": tokens.to_dict()} if tokens is not None else {})},
    )
    logger.info("compressed %d -> %d parameters", report.params_before, report.params_after)
    return compressed, report


def _statistics_for(
    model: nn.Module, calibration: Calibration, pruning: list[LayerDecision], targets: tuple[str, ...]
) -> dict[str, InputStats]:
    """Return statistics valid for the pruned `model`: restricted precomputed ones, or freshly collected."""
    if not isinstance(calibration, Mapping):
        return collect_input_stats(model, calibration, targets=targets)
    stats = dict(calibration)
    bad = [name for name, item in stats.items() if not isinstance(item, InputStats)]
    if bad:
        raise TypeError(f"calibration values must be InputStats; {bad[0]!r} is {type(stats[bad[0]]).__name__}")
    for decision in pruning:
        if decision.applied and decision.input_pruned in stats:
            stats[decision.input_pruned] = stats[decision.input_pruned].restricted(decision.input_channels())
    return stats
