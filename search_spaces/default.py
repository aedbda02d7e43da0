"""The joint space: fine-tune method, compression thresholds, token pruning and prehab.

Parameters as they appear in Optuna (and in the trial config):

- ``finetune.method``: categorical {head_only, lora, full}
- ``finetune.lora_rank``: categorical {4, 8, 16, 32}, suggested only when method is lora
- ``model.head``: categorical {linear, svd_taps} (keys the fine-tune cache, like the method)
- ``compress.tau_heads``, ``compress.tau_mlp``, ``compress.tau_svd``: uniform [0.5, 1.0]
- ``compress.svd_space``: categorical {raw, whitened}
- ``tokens.enabled``: categorical {False, True}; ``tokens.r_max``: uniform [0, 0.9] and
  ``tokens.alpha``: uniform [0.5, 3], suggested only when token pruning is enabled
  (otherwise the constants r_max = 0, alpha = 1: see suggest_tokens).
- ``prehab.enabled``: categorical {False, True}; ``prehab.lambda``: log-uniform
  [1e-4, 1e-1], suggested only when prehab is enabled.

The range {0} ∪ [1e-4, 1e-1] cannot be one Optuna distribution (a log scale excludes 0),
so it is a switch followed by a log-uniform value. When the switch is off the space
returns the constant ``prehab.lambda = 0.0``, so every trial config carries a
``prehab.lambda`` while Optuna's params only hold it for trials that searched it.
Method and LoRA rank are categorical because they key the expensive fine-tune cache;
a continuous lambda means every prehab-enabled trial runs its own prehab stage.
"""

from collections.abc import Mapping
from typing import Any

import optuna

METHODS = ("head_only", "lora", "full")
LORA_RANKS = (4, 8, 16, 32)
HEADS = ("linear", "svd_taps")
SVD_SPACES = ("raw", "whitened")
TAU_RANGE = (0.5, 1.0)
R_MAX_RANGE = (0.0, 0.9)
ALPHA_RANGE = (0.5, 3.0)
PREHAB_LAMBDA_RANGE = (1e-4, 1e-1)


def space(trial: optuna.Trial) -> dict[str, Any] | None:
    """Suggest one joint configuration; returns the constants the suggestions imply."""
    method = trial.suggest_categorical("finetune.method", METHODS)
    if method == "lora":
        trial.suggest_categorical("finetune.lora_rank", LORA_RANKS)
    trial.suggest_categorical("model.head", HEADS)
    for name in ("compress.tau_heads", "compress.tau_mlp", "compress.tau_svd"):
        trial.suggest_float(name, *TAU_RANGE)
    trial.suggest_categorical("compress.svd_space", SVD_SPACES)
    constants = suggest_tokens(trial)
    if trial.suggest_categorical("prehab.enabled", (False, True)):
        trial.suggest_float("prehab.lambda", *PREHAB_LAMBDA_RANGE, log=True)
    else:
        constants["prehab.lambda"] = 0.0
    return constants or None


def suggest_tokens(trial: optuna.Trial) -> dict[str, Any]:
    """Suggest token pruning; returns the constants of the no-pruning branch.

    r_max = 0 (no pruning, the seed's choice) is a point of measure zero in [0, 0.9], so a
    continuous sampler would never try it again; a switch makes it a real option. It
    matters: on small models the pruned path costs more than the tokens it drops saves.
    """
    if trial.suggest_categorical("tokens.enabled", (False, True)):
        trial.suggest_float("tokens.r_max", *R_MAX_RANGE)
        trial.suggest_float("tokens.alpha", *ALPHA_RANGE)
        return {}
    return {"tokens.r_max": 0.0, "tokens.alpha": 1.0}


def seed_point(seed: Mapping[str, Any]) -> dict[str, Any]:
    """Return `seed` (a flat config) as this space's parameters, for enqueueing."""
    point: dict[str, Any] = {}
    if "finetune.method" in seed:
        point["finetune.method"] = seed["finetune.method"]
        if seed["finetune.method"] == "lora" and "finetune.lora_rank" in seed:
            point["finetune.lora_rank"] = seed["finetune.lora_rank"]
    point["model.head"] = seed.get("model.head", "linear")
    for name in ("compress.tau_heads", "compress.tau_mlp", "compress.tau_svd", "compress.svd_space"):
        point[name] = seed[name]
    point.update(tokens_point(seed))
    point["prehab.enabled"] = seed["prehab.lambda"] > 0
    if point["prehab.enabled"]:
        point["prehab.lambda"] = seed["prehab.lambda"]
    return point


def tokens_point(seed: Mapping[str, Any]) -> dict[str, Any]:
    """Return the token-pruning parameters of a flat config, as suggest_tokens names them."""
    if seed["tokens.r_max"] > 0:
        return {"tokens.enabled": True, "tokens.r_max": seed["tokens.r_max"], "tokens.alpha": seed["tokens.alpha"]}
    return {"tokens.enabled": False}
