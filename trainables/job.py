"""One training stage as data: its job (stage, typed trial config, data, where it starts), the
settings it trains with, and the model it starts from.

A `TrainJob` is a frozen dataclass holding the frozen `TrialConfig`, so it pickles as is to
Ray Train workers and nothing re-parses a flat dict on the way.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Mapping

from torch import nn

from trainables.config import TrialConfig
from trainables.refs import resolve_ref

log = logging.getLogger(__name__)

STAGES = ("pretrain", "finetune", "prehab", "recover")
PRETRAIN_CLASSES = 10                     # the digit labels the embedded backbone pretrains on


@dataclass(frozen=True)
class TrainJob:
    """What one training stage needs: plain, frozen data that pickles to Ray Train workers."""

    stage: str
    config: TrialConfig
    data_root: str
    cache_root: str = ""                  # resolves cache: references (trainables.refs)
    init_path: str | None = None          # saved model (compress.save_compressed) to start from
    init_weights: str | None = None       # backbone weights dir/HF id (finetune from pretrained)
    whitening_path: str | None = None     # input stats (whitened prehab, or whitened SVD for recover)
    fisher_path: str | None = None        # the SVD targets' output Fisher (prehab.kind fisher_weighted)
    scores_path: str | None = None        # head / MLP unit importance scores (recover, data-aware importance)
    threads: int = 0                      # torch threads in this worker (0 = leave torch's default)

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        if isinstance(self.config, Mapping):
            # A flat dotted-key dict (tests, scripts) is parsed here, once.
            object.__setattr__(self, "config", TrialConfig.from_flat(self.config))
        if not isinstance(self.config, TrialConfig):
            raise TypeError(f"TrainJob.config must be a TrialConfig or a flat dict, got {type(self.config).__name__}")


@dataclass(frozen=True, kw_only=True)
class StageSettings:
    """The knobs of one stage, read from the trial config once."""

    epochs: int
    batch_size: int
    lr: float
    backbone_lr: float
    weight_decay: float
    warmup_frac: float
    grad_clip: float
    labels: str                           # HDF5 label set: "y" (the task) or "digit" (pretraining)
    num_classes: int


def stage_settings(job: TrainJob) -> StageSettings:
    """Return the epochs, batch size, learning rates and labels the job's stage trains with."""
    cfg = job.config
    ft = cfg.finetune
    task = {"labels": "y", "num_classes": cfg.model.num_classes, "grad_clip": ft.grad_clip}
    if job.stage == "pretrain":
        p = cfg.pretrain
        return StageSettings(epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, backbone_lr=p.lr,
                             weight_decay=p.weight_decay, warmup_frac=0.1, grad_clip=ft.grad_clip,
                             labels="digit", num_classes=PRETRAIN_CLASSES)
    if job.stage == "prehab":
        p = cfg.prehab
        return StageSettings(epochs=p.epochs, batch_size=ft.batch_size, lr=p.lr, backbone_lr=p.lr,
                             weight_decay=0.0, warmup_frac=0.0, **task)
    if job.stage == "recover":
        r = cfg.recover
        return StageSettings(epochs=r.epochs, batch_size=ft.batch_size, lr=r.lr, backbone_lr=r.lr,
                             weight_decay=0.0, warmup_frac=0.1, **task)
    return StageSettings(epochs=ft.epochs, batch_size=ft.batch_size, lr=ft.lr, backbone_lr=ft.backbone_lr,
                         weight_decay=ft.weight_decay, warmup_frac=ft.warmup_frac, **task)


LR_REFERENCE_BATCH = 256


def scale_learning_rates(job: TrainJob, settings: StageSettings, world_size: int) -> StageSettings:
    """Return the settings with lr and backbone_lr x (batch_size x world_size) / 256 when the
    fine-tune stage has finetune.lr_scaling = linear (the linear scaling rule); else unchanged."""
    if job.stage != "finetune" or job.config.finetune.lr_scaling != "linear":
        return settings
    factor = settings.batch_size * world_size / LR_REFERENCE_BATCH
    scaled = dataclasses.replace(settings, lr=settings.lr * factor, backbone_lr=settings.backbone_lr * factor)
    log.info("finetune.lr_scaling=linear: global batch %d x %d = %d, lr %.3g -> %.3g, backbone_lr %.3g -> %.3g",
             settings.batch_size, world_size, settings.batch_size * world_size, settings.lr, scaled.lr,
             settings.backbone_lr, scaled.backbone_lr)
    return scaled


def build_stage_model(job: TrainJob) -> nn.Module:
    """Return the trainable model of the job's stage (LoRA-wrapped for lora/recover)."""
    from compress import load_compressed
    from trainables.model import build_classifier, configure_method, linear_names, wrap_lora

    cfg = job.config
    settings = stage_settings(job)
    if job.stage == "pretrain":
        return build_classifier(cfg.model.backbone, PRETRAIN_CLASSES, pooling=cfg.model.pooling)
    if job.stage == "finetune":
        weights = str(resolve_ref(job.init_weights, job.cache_root)) if job.init_weights else None
        model = build_classifier(cfg.model.backbone, cfg.model.num_classes, weights=weights,
                                 pooling=cfg.model.pooling, head=cfg.model.head)
        if cfg.finetune.grad_checkpointing:
            model.backbone.gradient_checkpointing_enable()
        return configure_method(model, cfg)
    if job.init_path is None:
        raise ValueError(f"the {job.stage} stage needs init_path (a saved model to start from)")
    model = load_compressed(str(resolve_ref(job.init_path, job.cache_root)))
    if model.head.out_features != settings.num_classes:
        raise ValueError(f"{job.init_path}: head has {model.head.out_features} classes, "
                         f"expected {settings.num_classes}")
    if job.stage == "recover":
        # Compression is deterministic given weights and statistics, so every worker rebuilds
        # the same compressed model instead of shipping it between nodes.
        model, _ = compress_structure(model, cfg, job.whitening_path, job.cache_root, job.scores_path)
        return wrap_lora(model, rank=cfg.recover.lora_rank, alpha=2.0 * cfg.recover.lora_rank,
                         include_mlp=True, linear_names=linear_names(model))
    return model  # prehab trains every weight: the penalty acts on the backbone's linears


def compress_structure(model: nn.Module, cfg: TrialConfig, stats_ref: str | None, cache_root: str,
                       scores_ref: str | None = None):
    """Return (compressed copy, report) after heads -> MLP -> SVD; token pruning is applied later.

    `scores_ref` names the cached importance scores a data-aware compress.importance needs."""
    from compress import compress_model, load_input_stats, load_unit_scores

    stats = load_input_stats(str(resolve_ref(stats_ref, cache_root))) if stats_ref else None
    scores = load_unit_scores(str(resolve_ref(scores_ref, cache_root))) if scores_ref else None
    return compress_model(model, cfg.compress, calibration=stats, scores=scores)
