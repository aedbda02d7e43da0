"""The joint space: fine-tune method, compression thresholds, token pruning and prehab.

Parameters as they appear in Optuna (and in the trial config):

- ``finetune.method``: categorical {head_only, lora, full}
- ``finetune.lora_rank``: categorical {4, 8, 16, 32} and ``finetune.lora_mlp``: categorical
  {False, True} (LoRA on q/k/v/o, or on q/k/v/o + up/down), suggested only when method is lora

- ``model.head``: categorical {linear, svd_taps} (keys the fine-tune cache, like the method)
- ``compress.tau_heads``, ``compress.tau_mlp``, ``compress.tau_svd``: uniform [0.5, 1.0]
- ``compress.svd_space``: categorical {raw, whitened}
- ``tokens.enabled``: categorical {False, True}; ``tokens.r_max``: uniform [0, 0.9] and
  ``tokens.alpha``: uniform [0.5, 3], suggested only when token pruning is enabled
  (otherwise the constants r_max = 0, alpha = 1: see suggest_tokens); with pruning on,
  ``tokens.train_from_epoch``: categorical {0, "middle"} (inference-only pruning, or the
  fine-tune's forwards pruned from its middle epoch on, as the token-pruning notes train).
- ``eval.tta``: categorical {none, flips, dihedral}; evaluation only (no fine-tune repeats),
  and latency and GFLOPs count every augmented pass.
- ``prehab.enabled``: categorical {False, True}; when enabled ``prehab.lambda``: categorical
  on the log grid 1e-4, 3e-4, ..., 1e-1, ``prehab.kind``: categorical over the surrogates
  (compress.REGULARIZERS) and ``prehab.space``: categorical {whitened, raw}.

When the prehab switch is off the space returns the constant ``prehab.lambda = 0.0``, so
every trial config carries a ``prehab.lambda`` while Optuna's params only hold it for
trials that searched it. Everything that keys a training stage (method, LoRA rank and
MLP, training-time pruning, lambda, kind, space) is categorical, so trials share those
stages through the cache: a continuous lambda would run one prehab stage per trial.
"""

from collections.abc import Mapping
from typing import Any

import optuna

from compress import REGULARIZERS

METHODS = ("head_only", "lora", "full")
LORA_RANKS = (4, 8, 16, 32)
HEADS = ("linear", "svd_taps")
SVD_SPACES = ("raw", "whitened")
TAU_RANGE = (0.5, 1.0)
R_MAX_RANGE = (0.0, 0.9)
ALPHA_RANGE = (0.5, 3.0)
TRAIN_FROM_EPOCH = (0, "middle")    # trainables.config.TRAIN_FROM_MIDDLE
TTA_MODES = ("none", "flips", "dihedral")
PREHAB_LAMBDAS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
PREHAB_KINDS = tuple(REGULARIZERS)
PREHAB_SPACES = ("whitened", "raw")


def space(trial: optuna.Trial) -> dict[str, Any] | None:
    """Suggest one joint configuration; returns the constants the suggestions imply."""
    method = trial.suggest_categorical("finetune.method", METHODS)
    if method == "lora":
        trial.suggest_categorical("finetune.lora_rank", LORA_RANKS)
        trial.suggest_categorical("finetune.lora_mlp", (False, True))
    trial.suggest_categorical("model.head", HEADS)
    for name in ("compress.tau_heads", "compress.tau_mlp", "compress.tau_svd"):
        trial.suggest_float(name, *TAU_RANGE)
    trial.suggest_categorical("compress.svd_space", SVD_SPACES)
    constants = suggest_tokens(trial, while_training=True)
    trial.suggest_categorical("eval.tta", TTA_MODES)
    if trial.suggest_categorical("prehab.enabled", (False, True)):
        trial.suggest_categorical("prehab.lambda", PREHAB_LAMBDAS)
        trial.suggest_categorical("prehab.kind", PREHAB_KINDS)
        trial.suggest_categorical("prehab.space", PREHAB_SPACES)
    else:
        constants["prehab.lambda"] = 0.0
    return constants or None


def suggest_tokens(trial: optuna.Trial, *, while_training: bool = False) -> dict[str, Any]:
    """Suggest token pruning (and, `while_training`, whether the fine-tune prunes); returns the no-pruning constants.

    r_max = 0 (no pruning, the seed's choice) is a point of measure zero in [0, 0.9], so a
    continuous sampler would never try it again; a switch makes it a real option. It
    matters: on small models the pruned path costs more than the tokens it drops saves.
    """
    if trial.suggest_categorical("tokens.enabled", (False, True)):
        trial.suggest_float("tokens.r_max", *R_MAX_RANGE)
        trial.suggest_float("tokens.alpha", *ALPHA_RANGE)
        if while_training:
            trial.suggest_categorical("tokens.train_from_epoch", TRAIN_FROM_EPOCH)
        return {}
    return {"tokens.r_max": 0.0, "tokens.alpha": 1.0}


def seed_point(seed: Mapping[str, Any]) -> dict[str, Any]:
    """Return `seed` (a flat config) as this space's parameters, for enqueueing."""
    point: dict[str, Any] = {}
    if "finetune.method" in seed:
        point["finetune.method"] = seed["finetune.method"]
        if seed["finetune.method"] == "lora":
            # The values a LoRA trial without them gets (FinetuneConfig's defaults).
            point["finetune.lora_rank"] = seed.get("finetune.lora_rank", 8)
            point["finetune.lora_mlp"] = seed.get("finetune.lora_mlp", False)
    point["model.head"] = seed.get("model.head", "linear")
    for name in ("compress.tau_heads", "compress.tau_mlp", "compress.tau_svd", "compress.svd_space"):
        point[name] = seed[name]
    point.update(tokens_point(seed, while_training=True))
    point["eval.tta"] = seed.get("eval.tta", "none")
    point["prehab.enabled"] = seed["prehab.lambda"] > 0
    if point["prehab.enabled"]:
        point["prehab.lambda"] = seed["prehab.lambda"]
        point["prehab.kind"] = seed.get("prehab.kind", "nuclear_ratio+effective_rank")
        point["prehab.space"] = seed.get("prehab.space", "whitened")
    return point


def tokens_point(seed: Mapping[str, Any], *, while_training: bool = False) -> dict[str, Any]:
    """Return the token-pruning parameters of a flat config, as suggest_tokens names them."""
    if seed["tokens.r_max"] > 0:
        point = {"tokens.enabled": True, "tokens.r_max": seed["tokens.r_max"], "tokens.alpha": seed["tokens.alpha"]}
        if while_training:
            point["tokens.train_from_epoch"] = seed.get("tokens.train_from_epoch", 0)
        return point
    return {"tokens.enabled": False}
