"""The cheap parameters only: thresholds, SVD space and token pruning.

The fine-tune method, LoRA rank and prehab lambda come from the preset, so every trial
after the first hits the fine-tune (and prehab) cache: the fastest sweep there is.
Parameter ranges are those of the default space.
"""

from collections.abc import Mapping
from typing import Any

import optuna

from search_spaces.default import SVD_SPACES, TAU_RANGE, suggest_tokens, tokens_point

PARAMETERS = ("compress.tau_heads", "compress.tau_mlp", "compress.tau_svd", "compress.svd_space")


def space(trial: optuna.Trial) -> dict[str, Any] | None:
    """Suggest thresholds, SVD space and token pruning; returns the no-pruning constants."""
    for name in ("compress.tau_heads", "compress.tau_mlp", "compress.tau_svd"):
        trial.suggest_float(name, *TAU_RANGE)
    trial.suggest_categorical("compress.svd_space", SVD_SPACES)
    return suggest_tokens(trial) or None


def seed_point(seed: Mapping[str, Any]) -> dict[str, Any]:
    """Return `seed` (a flat config) as this space's parameters, for enqueueing."""
    return {**{name: seed[name] for name in PARAMETERS}, **tokens_point(seed)}
