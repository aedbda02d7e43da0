"""Typed, validated stage configs built from the flat dotted-key dict a trial receives.

Every key is `<section>.<field>` (e.g. `finetune.lora_rank`, `compress.tau_mlp`). The
defaults are the embedded digits preset, so `TrialConfig.from_flat({})` is a trial that
runs anywhere without a download. Presets, the search space and `--set` overrides are all
flat dicts layered on top; `from_flat` is the one place they become typed configs.

Data only: this module imports no torch (nor does anything it imports), so a bad `--set` value is
answered before the model code loads. Each field that does not simply key its stage declares how
it enters the cache keys and when it applies with `setting` (trainables.key_rules); the stages'
key records, the outcome key and the refusal of a key that does not apply derive from that.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from compress.checks import check_choice
from compress.config import HEADS, PENALTY_KINDS, POOLINGS, CompressionPlan, TokenPlan
from trainables.backbones import BACKBONES
from trainables.key_rules import Applies, Inapplicable, inapplicable, outcome_record, setting, stage_record

STAIN_METHODS = ("none", "macenko", "reinhard")       # trainables.data.stain


def _at_least(key: str, value: float, low: float, *, strict: bool = False) -> None:
    bad = not math.isfinite(value) or (value <= low if strict else value < low)
    if bad:
        raise ValueError(f"{key} must be {'>' if strict else '>='} {low}, got {value!r}")


def _fraction(key: str, value: float, *, closed_low: bool = True, closed_high: bool = True) -> None:
    ok = (value >= 0 if closed_low else value > 0) and (value <= 1 if closed_high else value < 1)
    if not (math.isfinite(value) and ok):
        interval = f"{'[' if closed_low else '('}0, 1{']' if closed_high else ')'}"
        raise ValueError(f"{key} must be in {interval}, got {value!r}")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "digits"          # "digits" (embedded, written on first use) or "pcam"
    root: str = setting("", stage=False)  # "" = <results>/data/digits for digits, data/pcam for pcam
    image_size: int = 32             # model input resolution; PCam is 96 native, 224 standard
    train_limit: int = 0             # 0 = the whole split
    val_limit: int = 0
    test_limit: int = setting(0, stage=False)       # the test split trains nothing
    loader_workers: int = setting(0, stage=False)   # DataLoader worker processes per training worker
    normalize: bool = True
    stain_norm: str = setting("none", new_since="stage")   # "macenko" or "reinhard" (trainables.data.stain)
    # pcam: a generated set in PCam's layout (trainables.data.synthetic; smoke runs); the data fingerprint tells it
    synthetic: bool = setting(False, stage=False)

    def __post_init__(self):
        check_choice("data.dataset", self.dataset, ("digits", "pcam"))
        check_choice("data.stain_norm", self.stain_norm, STAIN_METHODS)
        _at_least("data.image_size", self.image_size, 8)
        for name in ("train_limit", "val_limit", "test_limit", "loader_workers"):
            _at_least(f"data.{name}", getattr(self, name), 0)


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "digits-vit"     # a name from trainables.backbones.BACKBONES
    weights: str = ""                # "" = random init (then pretrain.epochs should be > 0), a directory or HF id
    pooling: str = "cls"
    num_classes: int = 2
    # "linear", "mlp" (compress.classifier.MLPHead) or "svd_taps" (compress.svd_taps)
    head: str = setting("linear", new_since="stage")

    def __post_init__(self):
        check_choice("model.backbone", self.backbone, tuple(BACKBONES))
        check_choice("model.pooling", self.pooling, POOLINGS)
        _at_least("model.num_classes", self.num_classes, 2)
        check_choice("model.head", self.head, HEADS)


@dataclass(frozen=True)
class PretrainConfig:
    """Supervised pretraining of a randomly initialised backbone on the 10-class digit labels."""

    epochs: int = 15                 # 0 = no pretrain stage (weights come from model.weights)
    lr: float = 2e-3
    batch_size: int = 64
    weight_decay: float = 0.05

    def __post_init__(self):
        _at_least("pretrain.epochs", self.epochs, 0)
        _at_least("pretrain.lr", self.lr, 0, strict=True)
        _at_least("pretrain.batch_size", self.batch_size, 1)
        _at_least("pretrain.weight_decay", self.weight_decay, 0)


FINETUNE_METHODS = ("head_only", "lora", "full")
LR_SCALINGS = ("none", "linear")
PRECISIONS = ("auto", "fp32", "bf16")


LORA_ONLY = Applies("method", "lora only", lambda f: f.method == "lora")
NOT_FULL = Applies("method", "head_only or lora", lambda f: f.method != "full")
BACKBONE_LR = Applies("method", "full, or with train_norms_biases", lambda f: f.method == "full" or f.train_norms_biases)


@dataclass(frozen=True)
class FinetuneConfig:
    method: str = "full"
    epochs: int = 3
    batch_size: int = 64
    lr: float = 2e-3                 # head learning rate (LoRA adapters use it too)
    # Backbone learning rate; head_only and lora set backbone weights only with train_norms_biases.
    backbone_lr: float = setting(2e-4, applies=BACKBONE_LR)
    weight_decay: float = 0.05       # never applied to norms, biases, tokens
    warmup_frac: float = 0.1
    grad_clip: float = 1.0           # 0 = no clipping
    lora_rank: int = setting(8, applies=LORA_ONLY)
    lora_alpha: float = setting(0.0, applies=LORA_ONLY)    # 0 = 2 * lora_rank
    lora_mlp: bool = setting(False, applies=LORA_ONLY)     # also adapt up/down (and gate) projections
    # head_only, lora: also train LayerNorms and biases (at backbone_lr); full trains every weight already
    train_norms_biases: bool = setting(False, applies=NOT_FULL)
    precision: str = "auto"          # auto = bf16 autocast on CUDA devices that support it
    # Runtime settings below: they change where and how fast the weights are trained, not the weights.
    grad_checkpointing: bool = setting(False, stage=False)
    # Ray Train workers: DDP on CUDA (nccl) or CPU (gloo); 1 on MPS; batch_size is per worker. Keys the
    # fine-tune only with lr_scaling (the global batch then sets the learning rate).
    workers: int = setting(1, stage=lambda f: f.lr_scaling != "none")
    cpus_per_worker: float = setting(1.0, stage=False)
    # torch threads per Ray Train worker; 0 = Ray's default (floor of cpus_per_worker, >= 1).
    threads_per_worker: int = setting(0, stage=False, new_since="outcome")
    # head_only: train the head on cached frozen-backbone features (keys it only where it is used)
    feature_cache: bool = setting(True, stage=lambda f: f.uses_feature_cache)
    lr_scaling: str = setting("none", new_since="stage")   # "linear": lr and backbone_lr x global batch / 256
    # collapse watch: fail below this mean per-dimension std (0 = off)
    min_feature_std: float = setting(1e-4, stage=False)
    # GPU workers only on nodes of this type (Ray's accelerator_type:<X>); "" = any
    accelerator_type: str = setting("", stage=False)

    def __post_init__(self):
        check_choice("finetune.method", self.method, FINETUNE_METHODS)
        check_choice("finetune.lr_scaling", self.lr_scaling, LR_SCALINGS)
        _at_least("finetune.min_feature_std", self.min_feature_std, 0)
        check_choice("finetune.precision", self.precision, PRECISIONS)
        _at_least("finetune.epochs", self.epochs, 1)
        _at_least("finetune.batch_size", self.batch_size, 1)
        _at_least("finetune.lr", self.lr, 0, strict=True)
        _at_least("finetune.backbone_lr", self.backbone_lr, 0, strict=True)
        _at_least("finetune.weight_decay", self.weight_decay, 0)
        _fraction("finetune.warmup_frac", self.warmup_frac, closed_high=False)
        _at_least("finetune.grad_clip", self.grad_clip, 0)
        _at_least("finetune.lora_rank", self.lora_rank, 1)
        _at_least("finetune.lora_alpha", self.lora_alpha, 0)
        _at_least("finetune.workers", self.workers, 1)
        _at_least("finetune.cpus_per_worker", self.cpus_per_worker, 0, strict=True)
        _at_least("finetune.threads_per_worker", self.threads_per_worker, 0)

    @property
    def uses_feature_cache(self) -> bool:
        """Whether the head trains on cached features: head_only with a wholly frozen backbone."""
        return self.method == "head_only" and self.feature_cache and not self.train_norms_biases


PREHAB_KINDS = tuple(PENALTY_KINDS)


@dataclass(frozen=True)
class PrehabConfig:
    """Low-rank "prehab": a short run of task loss + lambda * rank surrogate before SVD.

    The defaults are the PREHAB-SVD notes' ViT recipe: rank measured in the input-whitened
    space W L, by the nuclear-norm surrogate ||A||_*/||A||_F plus the entropy effective rank.
    """

    lambda_: float = 0.0             # flat key: prehab.lambda; 0 = no prehab stage
    kind: str = "nuclear_ratio+effective_rank"   # a name in compress.PENALTY_KINDS
    space: str = "whitened"          # "whitened": rank of W L (S = L L^T the input second moment); "raw": of W
    epochs: int = 1
    lr: float = 1e-4

    def __post_init__(self):
        _at_least("prehab.lambda", self.lambda_, 0)
        if self.kind == "nuclear":
            raise ValueError("prehab.kind 'nuclear' was the ratio ||A||_*/||A||_F, now called 'nuclear_ratio' "
                             f"(it is not the nuclear norm); choose one of {', '.join(PREHAB_KINDS)}")
        check_choice("prehab.kind", self.kind, PREHAB_KINDS)
        check_choice("prehab.space", self.space, ("raw", "whitened"))
        _at_least("prehab.epochs", self.epochs, 1)
        _at_least("prehab.lr", self.lr, 0, strict=True)

    @property
    def enabled(self) -> bool:
        return self.lambda_ > 0


@dataclass(frozen=True)
class CalibConfig:
    """Calibration batches (train split, no augmentation) for whitening statistics."""

    batches: int = 8
    batch_size: int = 32

    def __post_init__(self):
        _at_least("calib.batches", self.batches, 1)
        _at_least("calib.batch_size", self.batch_size, 1)


@dataclass(frozen=True)
class CompressConfig(CompressionPlan):
    """The trial's compress section: compress.config.CompressionPlan, with how its later fields key caches."""

    svd_damping: float = setting(CompressionPlan.svd_damping, new_since="outcome")
    importance: str = setting(CompressionPlan.importance, new_since="outcome")
    allocation: str = setting(CompressionPlan.allocation, new_since="outcome")
    # Quantization comes after any recovery fine-tune, so it does not key the recover stage.
    quant: str = setting(CompressionPlan.quant, stage=False, new_since="outcome")


TRAIN_FROM_MIDDLE = "middle"        # tokens.train_from_epoch: the fine-tune's middle epoch


@dataclass(frozen=True)
class TokensConfig(TokenPlan):
    """Token pruning (compress.TokenPlan) and, for training, the fine-tune epoch it starts from
    and the schedule it trains with."""

    # 0 = inference only; k >= 1 = the fine-tune's forwards prune from its epoch k (1-based) on
    # (the token-pruning notes: 5, after epoch 4). The flat value "middle" means
    # finetune.epochs // 2 + 1 (from_flat resolves it).
    train_from_epoch: int = 0
    # The schedule the fine-tune prunes with; 0 = the inference one (tokens.r_max, tokens.alpha).
    # A search takes them from a small grid, so training-pruned trials share fine-tunes while
    # the inference r_max and alpha stay continuous: the fine-tune key holds these, never those
    # (as its record's r_max and alpha: TrialConfig.finetune_key_fields).
    train_r_max: float = setting(0.0, stage=False, new_since="outcome")
    train_alpha: float = setting(0.0, stage=False, new_since="outcome")

    def __post_init__(self):
        super().__post_init__()
        _at_least("tokens.train_from_epoch", self.train_from_epoch, 0)
        _fraction("tokens.train_r_max", self.train_r_max, closed_high=False)
        _at_least("tokens.train_alpha", self.train_alpha, 0)

    @property
    def training_schedule(self) -> tuple[float, float]:
        """Return (r_max, alpha) the fine-tune prunes with: train_r_max and train_alpha, each
        falling back to the inference value where it is 0."""
        return self.train_r_max or self.r_max, self.train_alpha or self.alpha


@dataclass(frozen=True)
class RecoverConfig:
    """Optional short LoRA fine-tune of the compressed model, merged back."""

    epochs: int = 0                  # 0 = no recovery stage
    lora_rank: int = 8
    lr: float = 1e-3

    def __post_init__(self):
        _at_least("recover.epochs", self.epochs, 0)
        _at_least("recover.lora_rank", self.lora_rank, 1)
        _at_least("recover.lr", self.lr, 0, strict=True)


TTA_MODES = ("none", "flips", "dihedral")
RUNTIMES = ("torch", "onnxruntime")


@dataclass(frozen=True)
class EvalConfig:
    split: str = "valid"             # the search is scored on valid; test only in final evaluation
    batch_size: int = 256
    # Test-time augmentation: none, flips (identity, the two axis flips, rot180) or dihedral
    # (all 8 flips/rotations). Latency and GFLOPs count every augmented pass. The old boolean
    # values still load: true = dihedral (what it ran), false = none.
    tta: str = "none"
    latency_batch: int = 8
    latency_repeats: int = 15
    latency_warmup: int = 3
    latency_rounds: int = 3          # blocks of latency_repeats runs; the least disturbed one counts
    latency_pause_s: float = 0.25    # between blocks, so a burst of outside load can pass
    # Also time the uncompressed reference interleaved with the model and report latency_rel,
    # the median paired ratio (trainables.evaluate.evaluation.reference_model); latency_ms comes from the
    # same rounds. Comparable across nodes; costs a second model's timing.
    latency_rel: bool = setting(False, new_since="outcome")
    # Where the model is scored and timed: torch (eager PyTorch) or onnxruntime (the model exported
    # to ONNX, int8 through ONNX Runtime's dynamic quantizer, run by the CPU provider with the
    # trial's threads; trainables.evaluate.runtime).
    runtime: str = setting("torch", new_since="outcome")

    def __post_init__(self):
        check_choice("eval.split", self.split, ("valid", "test"))
        check_choice("eval.tta", self.tta, TTA_MODES)
        check_choice("eval.runtime", self.runtime, RUNTIMES)
        for name in ("batch_size", "latency_batch", "latency_repeats", "latency_rounds"):
            _at_least(f"eval.{name}", getattr(self, name), 1)
        _at_least("eval.latency_warmup", self.latency_warmup, 0)
        _at_least("eval.latency_pause_s", self.latency_pause_s, 0)


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0
    device: str = "auto"             # auto = cuda, else mps, else cpu

    def __post_init__(self):
        check_choice("run.device", self.device, ("auto", "cpu", "cuda", "mps"))


# Flat-key sections, and fields whose flat name differs from the Python name.
_SECTIONS: dict[str, type] = {
    "data": DataConfig, "model": ModelConfig, "pretrain": PretrainConfig,
    "finetune": FinetuneConfig, "prehab": PrehabConfig, "calib": CalibConfig,
    "compress": CompressConfig, "tokens": TokensConfig, "recover": RecoverConfig,
    "eval": EvalConfig, "run": RunConfig,
}
_RENAMED = {("prehab", "lambda"): "lambda_"}


def known_keys() -> list[str]:
    """Return every accepted flat key, sorted."""
    keys = []
    for section, cls in _SECTIONS.items():
        renamed_back = {v: k for (s, k), v in _RENAMED.items() if s == section}
        keys += [f"{section}.{renamed_back.get(f.name, f.name)}" for f in dataclasses.fields(cls)]
    return sorted(keys)


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Return `value` as the field's type; strings from `--set` are parsed, mismatches raise."""
    target = annotation
    if isinstance(value, str) and target is not str:
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            if value.lower() in ("true", "false"):
                value = value.lower() == "true"
    if target is bool:
        if isinstance(value, bool):
            return value
    elif target is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif target is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif target is str:
        if isinstance(value, str):
            return value
    elif typing.get_origin(target) is tuple:
        if isinstance(value, str):  # a comma string that is not JSON: "q,v,down"
            value = [item.strip() for item in value.split(",") if item.strip()]
        if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
            return tuple(value)
        raise TypeError(f"{key} must be a list of names (a JSON list or a comma string such as q,v,down), "
                        f"got {value!r} ({type(value).__name__})")
    name = getattr(target, "__name__", str(target))
    raise TypeError(f"{key} must be {name}, got {value!r} ({type(value).__name__})")


@dataclass(frozen=True)
class TrialConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    prehab: PrehabConfig = field(default_factory=PrehabConfig)
    calib: CalibConfig = field(default_factory=CalibConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)
    tokens: TokensConfig = field(default_factory=TokensConfig)
    recover: RecoverConfig = field(default_factory=RecoverConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any]) -> "TrialConfig":
        """Return the typed config for a flat dotted-key dict; unknown keys and bad values raise."""
        grouped: dict[str, dict[str, Any]] = {section: {} for section in _SECTIONS}
        flat = dict(flat)
        if isinstance(flat.get("eval.tta"), bool) or str(flat.get("eval.tta")).lower() in ("true", "false"):
            flat["eval.tta"] = "dihedral" if str(flat["eval.tta"]).lower() == "true" else "none"
        if flat.get("tokens.train_from_epoch") == TRAIN_FROM_MIDDLE:
            epochs = _coerce("finetune.epochs", flat.get("finetune.epochs", FinetuneConfig.epochs), int)
            flat["tokens.train_from_epoch"] = epochs // 2 + 1
        for key, value in flat.items():
            section, _, name = str(key).partition(".")
            if section not in _SECTIONS or not name:
                raise ValueError(_unknown_key_message(key))
            field_name = _RENAMED.get((section, name), name)
            hints = typing.get_type_hints(_SECTIONS[section])
            if field_name not in hints:
                raise ValueError(_unknown_key_message(key))
            grouped[section][field_name] = _coerce(key, value, hints[field_name])
        config = cls(**{section: _SECTIONS[section](**values) for section, values in grouped.items()})
        config._check_across_sections()
        return config

    def _check_across_sections(self) -> None:
        """Raise ValueError for settings that contradict each other across sections."""
        if self.eval.runtime == "onnxruntime" and self.compress.quant == "bf16":
            raise ValueError("compress.quant=bf16 cannot run with eval.runtime=onnxruntime (its CPU provider has "
                             "no bf16 kernels for a ViT's ops); use compress.quant=none or int8, or eval.runtime=torch")
        start = self.tokens.train_from_epoch
        if start > 0 and self.tokens.training_schedule[0] == 0:
            raise ValueError(f"tokens.train_from_epoch={start} prunes while fine-tuning, but tokens.r_max and "
                             "tokens.train_r_max are 0 (no pruning); set one > 0 or tokens.train_from_epoch=0")
        if start > self.finetune.epochs:
            raise ValueError(f"tokens.train_from_epoch={start} is after the last fine-tune epoch "
                             f"(finetune.epochs={self.finetune.epochs}); use 0 (inference only) "
                             f"or 1..{self.finetune.epochs}")

    def finetune_key_fields(self) -> dict[str, Any]:
        """Return what of the fine-tune and token sections keys the fine-tune cache: the method's fields,
        and token pruning when it trains with it (its start epoch, fuse and the training schedule, in the
        record's old shape: r_max and alpha are the schedule trained with, whichever fields gave them)."""
        fields = {"finetune": stage_record(self.finetune)}
        if self.tokens.train_from_epoch > 0:
            record = stage_record(self.tokens)
            record["r_max"], record["alpha"] = self.tokens.training_schedule
            fields["tokens"] = record
        return fields

    def recover_key_fields(self) -> dict[str, Any]:
        """Return what keys the recover stage: its settings and the structural plan it recovers from.

        The plan record keeps the shape it had when it also carried token pruning (r_max 0,
        the trial's alpha and fuse), so existing recover entries stay valid.
        """
        plan = {**stage_record(self.compress), "r_max": 0.0, "alpha": self.tokens.alpha,
                "fuse_pruned_tokens": self.tokens.fuse}
        return {"recover": stage_record(self.recover), "plan": plan}

    def key_flat(self) -> dict[str, Any]:
        """Return the flat config as stored outcomes are keyed (key_rules.outcome_record): lists as
        comma strings, fields added since outcomes were stored left out at their default."""
        return {key: ",".join(value) if isinstance(value, list) else value
                for key, value in self._flat(outcome_record).items()}

    def inapplicable(self, keys) -> list[Inapplicable]:
        """Return the keys among `keys` (flat keys someone set) that do not apply to the rest of this
        config (key_rules.Applies), with what they depend on."""
        return [item for section in _SECTIONS
                for item in inapplicable(getattr(self, section), f"{section}.", keys)]

    def check_applicable(self, keys) -> None:
        """Raise ValueError naming the keys among `keys` (flat keys someone set) that do not apply here."""
        unused = self.inapplicable(keys)
        if unused:
            names = ", ".join(item.key for item in unused)
            depends = " and ".join(dict.fromkeys(item.on for item in unused))
            when = "; ".join(f"{item.key.partition('.')[2]}: {item.text}" for item in unused)
            raise ValueError(f"{names} do(es) not apply to {depends} ({when}); remove it or change "
                             f"{' or '.join(dict.fromkeys(item.on.partition('=')[0] for item in unused))}")

    def to_flat(self) -> dict[str, Any]:
        """Return the flat dotted-key dict that `from_flat` turns back into this config."""
        return self._flat(dataclasses.asdict)

    def _flat(self, record: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
        """Return {section.key: value} over every section's `record` (flat names, e.g. prehab.lambda)."""
        flat = {}
        for section in _SECTIONS:
            renamed_back = {v: k for (s, k), v in _RENAMED.items() if s == section}
            for name, value in record(getattr(self, section)).items():
                flat[f"{section}.{renamed_back.get(name, name)}"] = value
        return flat



def _unknown_key_message(key: Any) -> str:
    keys = known_keys()
    close = difflib.get_close_matches(str(key), keys, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known keys: {', '.join(keys)}"
    return f"unknown config key {key!r}{hint}"


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """Return {key: raw value} from `--set key=value` strings; values are typed by from_flat."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value (e.g. compress.tau_mlp=0.9), got {pair!r}")
        overrides[key.strip()] = value.strip()
    return overrides


__all__ = [
    "CalibConfig", "CompressConfig", "DataConfig", "EvalConfig", "FinetuneConfig", "STAIN_METHODS",
    "ModelConfig", "PrehabConfig", "PretrainConfig", "RecoverConfig", "RunConfig",
    "TRAIN_FROM_MIDDLE", "TTA_MODES", "TokensConfig", "TrialConfig", "known_keys", "parse_overrides",
]
