"""Structural compression of ViTs: heads, MLP units, (whitened) truncated SVD, prehab regularizers, tokens.

Model surgery only: imports neither Ray, Optuna, trainables nor tune. Names are loaded on first use
(`from compress import CompressionPlan` reads compress.config alone, without torch).

    config        CompressionPlan, TokenPlan and the name tables (no torch: configs and the CLI use it)
    plan          compress_model (heads -> MLP -> SVD -> tokens)
    energy        the one selection rule (keep the fewest units reaching tau of the energy)
    importance    per-head / per-unit scores: energy (the notes), taylor, activation
    allocation    how tau spreads over layers: per_layer (the notes) or one global ranking
    heads, mlp    head and MLP hidden-unit pruning; surgery (keep_heads/keep_units, shared with io)
    svd, whitening, linear   truncated SVD (raw or whitened), input statistics, LowRankLinear
    prehab        low-rank regularizers
    tokens        token pruning's public switch; token_select (schedule, which tokens)
    adapters/     where a model family keeps its layers, linears and heads (dinov3), and its
                  token-pruning encoder (dinov3_tokens): the only modules that spell DINOv3 internals
    classifier, svd_taps   the classifier and its svd_taps head
    io, onnx_export        save/load a compressed model; ONNX export
    temperature   TemperatureScaled: logits / T, the calibration an export carries
    quant                  post-training quantization (int8 Linears, bf16), the last step; model_bytes
    checks, tensor_checks   argument checks on numbers and names (no torch), on weights and scores
    params, report, targets   parameter counts, decisions, SVD target roles
"""

import importlib
from typing import Any

# Public name -> the module that defines it; each module is imported when one of its names is first used.
_EXPORTS = {
    **dict.fromkeys(["allocate"], "compress.allocation"),
    **dict.fromkeys([
        "ALLOCATIONS", "CompressionPlan", "FISHER_WEIGHTED", "IMPORTANCES", "PENALTY_KINDS", "QUANT_MODES",
        "TokenPlan"
    ], "compress.config"),
    **dict.fromkeys(["keep_count"], "compress.energy"),
    **dict.fromkeys(["prune_attention_heads"], "compress.heads"),
    **dict.fromkeys([
        "load_unit_scores", "save_unit_scores", "unit_scores", "UnitScores"
    ], "compress.importance"),
    **dict.fromkeys(["load_compressed", "save_compressed"], "compress.io"),
    **dict.fromkeys(["LowRankLinear"], "compress.linear"),
    **dict.fromkeys(["prune_mlp_neurons"], "compress.mlp"),
    **dict.fromkeys(["count_params"], "compress.params"),
    **dict.fromkeys(["compress_model"], "compress.plan"),
    **dict.fromkeys([
        "collect_output_fisher", "effective_rank", "fisher_weighted", "lowrank_penalty", "nuclear_ratio",
        "nuclear_ratio_plus_effective_rank", "REGULARIZERS", "stable_rank"
    ], "compress.prehab"),
    **dict.fromkeys(["model_bytes", "quantize_model"], "compress.quant"),
    **dict.fromkeys(["CompressionReport", "LayerDecision"], "compress.report"),
    **dict.fromkeys(["truncate_svd"], "compress.svd"),
    **dict.fromkeys(["TemperatureScaled"], "compress.temperature"),
    **dict.fromkeys(["disable_token_pruning", "enable_token_pruning", "keep_schedule"], "compress.tokens"),
    **dict.fromkeys([
        "collect_input_stats", "InputStats", "load_input_stats", "save_input_stats"
    ], "compress.whitening"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Return public name `name`, importing its module on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'compress' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
