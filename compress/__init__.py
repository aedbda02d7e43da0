"""Structural compression of ViTs: heads, MLP units, (whitened) truncated SVD, prehab regularizers, tokens.

Model surgery only: imports neither Ray, Optuna, trainables nor tune.

    plan          CompressionPlan and compress_model (heads -> MLP -> SVD -> tokens)
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
    checks, params, report, targets   argument checks, parameter counts, decisions, SVD target roles
"""

from compress.allocation import ALLOCATIONS, allocate
from compress.energy import keep_count
from compress.heads import prune_attention_heads
from compress.importance import IMPORTANCES, UnitScores, load_unit_scores, save_unit_scores, unit_scores
from compress.io import load_compressed, save_compressed
from compress.linear import LowRankLinear
from compress.mlp import prune_mlp_neurons
from compress.params import count_params
from compress.plan import CompressionPlan, TokenPlan, compress_model
from compress.prehab import (
    FISHER_WEIGHTED, PENALTY_KINDS, REGULARIZERS, collect_output_fisher, effective_rank, fisher_weighted,
    lowrank_penalty, nuclear_ratio, nuclear_ratio_plus_effective_rank, stable_rank,
)
from compress.quant import QUANT_MODES, model_bytes, quantize_model
from compress.report import CompressionReport, LayerDecision
from compress.svd import truncate_svd
from compress.temperature import TemperatureScaled
from compress.tokens import disable_token_pruning, enable_token_pruning, keep_schedule
from compress.whitening import InputStats, collect_input_stats, load_input_stats, save_input_stats

__all__ = [
    "ALLOCATIONS",
    "CompressionPlan",
    "CompressionReport",
    "FISHER_WEIGHTED",
    "IMPORTANCES",
    "InputStats",
    "LayerDecision",
    "LowRankLinear",
    "PENALTY_KINDS",
    "QUANT_MODES",
    "REGULARIZERS",
    "TemperatureScaled",
    "TokenPlan",
    "UnitScores",
    "allocate",
    "collect_input_stats",
    "collect_output_fisher",
    "compress_model",
    "count_params",
    "disable_token_pruning",
    "effective_rank",
    "enable_token_pruning",
    "fisher_weighted",
    "keep_count",
    "keep_schedule",
    "load_compressed",
    "load_input_stats",
    "load_unit_scores",
    "lowrank_penalty",
    "model_bytes",
    "nuclear_ratio",
    "nuclear_ratio_plus_effective_rank",
    "prune_attention_heads",
    "prune_mlp_neurons",
    "quantize_model",
    "save_compressed",
    "save_input_stats",
    "save_unit_scores",
    "stable_rank",
    "truncate_svd",
    "unit_scores",
]
