"""The joint space: fine-tune method, compression thresholds, token pruning and prehab.

Parameters as they appear in Optuna (and in the trial config), in suggestion order:

- ``finetune.method``: categorical {head_only, lora, full}
- ``finetune.lora_rank``: categorical {4, 8, 16, 32} and ``finetune.lora_mlp``: categorical
  {False, True} (LoRA on q/k/v/o, or on q/k/v/o + up/down), suggested only when method is lora
- ``model.head``: categorical {linear, svd_taps, mlp} (keys the fine-tune cache, like the method);
  mlp is the DeiT log's 187,108-parameter head (compress.classifier.MLPHead), the svd_taps
  classifier without its taps, so the two isolate what the taps add
- ``compress.tau_heads``, ``compress.tau_mlp``: uniform [0.2, 1.0] (the small end of the front;
  every layer keeps at least one head and one MLP unit at any tau); ``compress.tau_svd``: uniform [0.5, 1.0]
- ``compress.importance``: categorical {energy, taylor, activation}, what ranks heads and MLP units
  (compress.importance; taylor and activation read the calibration batches, a cached stage), and
  ``compress.allocation``: categorical {per_layer, global}, how tau spreads over the layers
  (compress.allocation); the reference keeps the notes' energy / per_layer
- ``compress.svd_space``: categorical {raw, whitened}; when whitened, ``compress.svd_damping``:
  categorical {1e-8, 1e-6, 1e-4, 1e-2}, the damping of S + d * mean(diag S) * I before the
  Cholesky factor (1e-6 was the fixed value before it was searched)
- ``tokens.enabled``: categorical {False, True}; ``tokens.r_max``: uniform [0, 0.9] and
  ``tokens.alpha``: uniform [0.5, 3], suggested only when token pruning is enabled
  (otherwise the constants r_max = 0, alpha = 1); with pruning on,
  ``tokens.train_from_epoch``: categorical {0, "middle"} (inference-only pruning, or the
  fine-tune's forwards pruned from its middle epoch on, as the token-pruning notes train);
  when "middle", the schedule the fine-tune prunes with comes from a small grid,
  ``tokens.train_r_max``: categorical {0.3, 0.6} and ``tokens.train_alpha``: categorical
  {1.2, 2.0} (the notes' 0.6 and 1.2 among them), so training-pruned trials share their
  fine-tunes while the inference r_max and alpha above stay continuous.
- ``eval.tta``: categorical {none, flips, dihedral}; evaluation only (no fine-tune repeats),
  and latency and GFLOPs count every augmented pass.
- ``prehab.enabled``: categorical {False, True}; when enabled ``prehab.lambda``: categorical
  on the log grid 1e-4, 3e-4, ..., 1e-1, ``prehab.kind``: categorical over the surrogates
  (compress.config.REGULARIZER_NAMES) and ``prehab.space``: categorical {whitened, raw}.
- ``compress.quant``: post-training quantization, the last step of the model (compress.quant);
  evaluation only, like eval.tta. What a sweep searches depends on the trials' device
  (Table.for_device): {none, int8} on a CPU, {none, bf16} on CUDA and MPS. bf16 runs on a CPU
  too (--set), but without bf16 matrix units it is slower than fp32 there, so a CPU sweep does
  not spend trials on it; int8 (torch.ao's dynamic kernels) runs on a CPU only.
- ``tokens.fuse``: categorical {False, True}, with token pruning on: the dropped tokens are fused
  into one CLS-attention-weighted token, or dropped (keys the fine-tune only when it trains pruned).

r_max = 0 (no pruning, the seed's choice) is a point of measure zero in [0, 0.9], so a
continuous sampler would never try it again; the switch makes it a real option. It
matters: on small models the pruned path costs more than the tokens it drops saves.
When the prehab switch is off the space returns the constant ``prehab.lambda = 0.0``, so
every trial config carries a ``prehab.lambda`` while Optuna's params only hold it for
trials that searched it. Everything that keys a training stage (method, LoRA rank and
MLP, head, training-time pruning and its schedule, lambda, kind, space) is categorical and
named in TRAINING_ROWS, so trials share those stages through the cache (a continuous lambda
would run one prehab stage per trial) and the sweep can print, before it starts, the most
training stages the space can request (tune.sweep.training_stage_bound).
"""

from compress.config import ALLOCATIONS, DEFAULT_DAMPING, IMPORTANCES, REGULARIZER_NAMES
from search_spaces._seed import SEED_CONFIG
from search_spaces._table import Param, Table, categorical, switch, uniform

TAU = uniform(0.5, 1.0)
TAU_UNITS = uniform(0.2, 1.0)
SVD_SPACE = categorical("raw", "whitened")
TOKENS_ON = ("tokens.enabled", True)
PREHAB_ON = ("prehab.enabled", True)
TRAINED = ("tokens.train_from_epoch", "middle")
TRAIN_R_MAX = categorical(0.3, 0.6)
TRAIN_ALPHA = categorical(1.2, 2.0)
QUANT_BY_DEVICE = {"cpu": ("none", "int8"), "cuda": ("none", "bf16"), "mps": ("none", "bf16")}

TABLE = Table((
    Param("finetune.method", categorical("head_only", "lora", "full")),   # reference: the preset's
    Param("finetune.lora_rank", categorical(4, 8, 16, 32), 8, when=("finetune.method", "lora")),
    Param("finetune.lora_mlp", categorical(False, True), False, when=("finetune.method", "lora")),
    Param("model.head", categorical("linear", "svd_taps", "mlp"), "linear"),
    Param("compress.tau_heads", TAU_UNITS, SEED_CONFIG["compress.tau_heads"]),
    Param("compress.tau_mlp", TAU_UNITS, SEED_CONFIG["compress.tau_mlp"]),
    Param("compress.importance", categorical(*IMPORTANCES), "energy"),
    Param("compress.allocation", categorical(*ALLOCATIONS), "per_layer"),
    Param("compress.tau_svd", TAU, SEED_CONFIG["compress.tau_svd"]),
    Param("compress.svd_space", SVD_SPACE, SEED_CONFIG["compress.svd_space"]),
    Param("compress.svd_damping", categorical(1e-8, 1e-6, 1e-4, 1e-2), DEFAULT_DAMPING,
          when=("compress.svd_space", "whitened")),
    switch("tokens.enabled", off={"tokens.r_max": 0.0, "tokens.alpha": 1.0}),
    Param("tokens.r_max", uniform(0.0, 0.9), when=TOKENS_ON),
    Param("tokens.alpha", uniform(0.5, 3.0), when=TOKENS_ON),
    # 0: inference only; "middle": trainables.config.TRAIN_FROM_MIDDLE
    Param("tokens.train_from_epoch", categorical(0, "middle"), 0, when=TOKENS_ON),
    Param("tokens.train_r_max", TRAIN_R_MAX, when=TRAINED),
    Param("tokens.train_alpha", TRAIN_ALPHA, when=TRAINED),
    Param("eval.tta", categorical("none", "flips", "dihedral"), "none"),
    switch("prehab.enabled", off={"prehab.lambda": 0.0}),
    Param("prehab.lambda", categorical(1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1), when=PREHAB_ON),
    Param("prehab.kind", categorical(*REGULARIZER_NAMES), "nuclear_ratio+effective_rank", when=PREHAB_ON),
    Param("prehab.space", categorical("whitened", "raw"), "whitened", when=PREHAB_ON),
    # Last, so adding it left the draws of every row above it unchanged within a trial.
    Param("compress.quant", categorical("none", "int8", "bf16"), "none", devices=QUANT_BY_DEVICE),
    # The pruned tokens fused into one (compress.tokens.enable_token_pruning), or dropped.
    Param("tokens.fuse", categorical(False, True), False, when=TOKENS_ON),
))

# The rows whose values key each training stage (each categorical, with its conditions'
# rows): the fine-tune's, and prehab's on top of them.
TRAINING_ROWS = {
    "finetune": ("finetune.method", "finetune.lora_rank", "finetune.lora_mlp", "model.head", "tokens.enabled",
                 "tokens.train_from_epoch", "tokens.train_r_max", "tokens.train_alpha", "tokens.fuse"),
    "prehab": ("prehab.enabled", "prehab.lambda", "prehab.kind", "prehab.space"),
}

space = TABLE.suggest
