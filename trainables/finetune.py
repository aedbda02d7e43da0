"""The training loop shared by every training stage (pretrain, finetune, prehab, recover).

One function, `train_loop`, runs on a Ray Train worker (`TorchTrainer`) or in the current
process (`--debug-trial`); a `Session` hides the difference (device, DDP wrapping, where
checkpoints go, how progress is shown). Each epoch writes a checkpoint holding the full
training state and the weights of the best epoch so far (by `val_score`: AUROC for binary
targets, accuracy otherwise), so a restarted worker resumes at the next epoch and the
stage's result is the best epoch, not the last.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from trainables.config import TrialConfig
from trainables.data import DIGITS_PREFIX, PCAM_PREFIX, HDF5ImageDataset
from trainables.loader import gather_predictions
from trainables.metrics import classification_metrics
from trainables.refs import resolve_ref

log = logging.getLogger(__name__)

STAGES = ("pretrain", "finetune", "prehab", "recover")
_NO_DECAY_NAMES = ("bias", "norm", "cls_token", "register_tokens", "mask_token", "lambda1")


@dataclass
class TrainJob:
    """What one training stage needs; plain data so it pickles to Ray Train workers."""

    stage: str
    trial: dict[str, Any]                 # the flat trial config
    data_root: str
    cache_root: str = ""                  # resolves cache: references (trainables.refs)
    init_path: str | None = None          # saved model (compress.save_compressed) to start from
    init_weights: str | None = None       # backbone weights dir/HF id (finetune from pretrained)
    whitening_path: str | None = None     # input stats (whitened prehab, or whitened SVD for recover)
    threads: int = 0                      # torch threads in this worker (0 = leave torch's default)

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {self.stage!r}")

    @property
    def config(self) -> TrialConfig:
        return TrialConfig.from_flat(self.trial)


@dataclass
class StageSettings:
    """The knobs of one stage, read from the trial config once."""

    epochs: int
    batch_size: int
    lr: float
    backbone_lr: float
    weight_decay: float
    warmup_frac: float
    grad_clip: float
    labels: str
    num_classes: int


def stage_settings(job: TrainJob) -> StageSettings:
    """Return the epochs, batch size, learning rates and labels the job's stage trains with."""
    cfg = job.config
    ft = cfg.finetune
    if job.stage == "pretrain":
        p = cfg.pretrain
        return StageSettings(p.epochs, p.batch_size, p.lr, p.lr, p.weight_decay, 0.1,
                             ft.grad_clip, "digit", 10)
    if job.stage == "prehab":
        p = cfg.prehab
        return StageSettings(p.epochs, ft.batch_size, p.lr, p.lr, 0.0, 0.0, ft.grad_clip, "y",
                             cfg.model.num_classes)
    if job.stage == "recover":
        r = cfg.recover
        return StageSettings(r.epochs, ft.batch_size, r.lr, r.lr, 0.0, 0.1, ft.grad_clip, "y",
                             cfg.model.num_classes)
    return StageSettings(ft.epochs, ft.batch_size, ft.lr, ft.backbone_lr, ft.weight_decay,
                         ft.warmup_frac, ft.grad_clip, "y", cfg.model.num_classes)


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


def dataset_prefix(cfg: TrialConfig) -> str:
    """Return the HDF5 file prefix of the configured dataset."""
    return DIGITS_PREFIX if cfg.data.dataset == "digits" else PCAM_PREFIX


def make_dataset(cfg: TrialConfig, root: str, split: str, labels: str = "y", *, augment: bool = False,
                 limit: int | None = None) -> HDF5ImageDataset:
    """Return the configured split as a dataset (stain-normalised if configured, resized,
    normalised, augmented if asked)."""
    if limit is None:
        limit = {"train": cfg.data.train_limit, "valid": cfg.data.val_limit,
                 "test": cfg.data.test_limit}[split]
    from trainables.data import split_path
    from trainables.stain import make_stain_normalizer

    prefix = dataset_prefix(cfg)
    return HDF5ImageDataset(
        root, split, prefix=prefix, labels=labels, limit=limit or None,
        image_size=cfg.data.image_size, augment=augment, normalize=cfg.data.normalize,
        stain=make_stain_normalizer(cfg.data.stain_norm, split_path(root, "train", "x", prefix)),
    )


# ---------------------------------------------------------------------------- the model


def build_stage_model(job: TrainJob) -> nn.Module:
    """Return the trainable model of the job's stage (LoRA-wrapped for lora/recover)."""
    from compress import load_compressed
    from trainables.model import build_classifier

    cfg = job.config
    settings = stage_settings(job)
    if job.stage == "pretrain":
        return build_classifier(cfg.model.backbone, 10, pooling=cfg.model.pooling)
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
        model, _ = compress_structure(model, cfg, job.whitening_path, job.cache_root)
        return wrap_lora(model, rank=cfg.recover.lora_rank, alpha=2.0 * cfg.recover.lora_rank,
                         include_mlp=True, linear_names=_all_linear_names(model))
    return model  # prehab trains every weight: the penalty acts on the backbone's linears


def compress_structure(model: nn.Module, cfg: TrialConfig, stats_ref: str | None, cache_root: str):
    """Return (compressed copy, report) after heads -> MLP -> SVD; token pruning is applied later."""
    from compress import compress_model, load_input_stats

    stats = load_input_stats(str(resolve_ref(stats_ref, cache_root))) if stats_ref else None
    return compress_model(model, cfg.compress, calibration=stats)


def configure_method(model: nn.Module, cfg: TrialConfig) -> nn.Module:
    """Return the model set up for the fine-tune method: frozen parts, LoRA adapters."""
    ft = cfg.finetune
    if ft.method == "full":
        return model
    if ft.method == "head_only":
        for name, param in model.backbone.named_parameters():
            param.requires_grad = ft.train_norms_biases and _is_norm_or_bias(name)
        return model
    alpha = ft.lora_alpha or 2.0 * ft.lora_rank
    wrapped = wrap_lora(model, rank=ft.lora_rank, alpha=alpha, include_mlp=ft.lora_mlp)
    if ft.train_norms_biases:
        # PEFT froze every base weight; the notes' LoRA recipe may train norms and biases too.
        for name, param in model.backbone.named_parameters():
            if "lora_" not in name and _is_norm_or_bias(name):
                param.requires_grad = True
    return wrapped


def _is_norm_or_bias(name: str) -> bool:
    """Return whether a backbone parameter name is a bias or belongs to a LayerNorm."""
    return name.endswith("bias") or ".norm" in name or name.startswith("norm.")


def wrap_lora(model: nn.Module, *, rank: int, alpha: float, include_mlp: bool,
              linear_names: list[str] | None = None) -> nn.Module:
    """Return a PEFT LoRA model over the attention (and optionally MLP) linears; head trains."""
    from peft import LoraConfig, get_peft_model

    targets = linear_names or (["q_proj", "k_proj", "v_proj", "o_proj"]
                               + (["up_proj", "down_proj", "gate_proj"] if include_mlp else []))
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets,
                        modules_to_save=["head"])
    peft_model = get_peft_model(model, config)
    _freeze_tap_projections(peft_model)
    return peft_model


def _freeze_tap_projections(model: nn.Module) -> None:
    """Keep SVD-taps projections frozen (PEFT unfreezes the whole head it copies): the detached
    SVD gives them no gradient, and DDP would wait for one."""
    from compress.svd_taps import SVDTapsHead

    for module in model.modules():
        if isinstance(module, SVDTapsHead):
            module.projections.requires_grad_(False)


def _all_linear_names(model: nn.Module) -> list[str]:
    """Return module-name suffixes of every Linear in the backbone (compressed ones included)."""
    names = {name.split(".")[-1] for name, mod in model.backbone.named_modules()
             if isinstance(mod, nn.Linear)}
    return sorted(names)


def finalize_model(model: nn.Module) -> nn.Module:
    """Return a plain model: LoRA merged into ordinary Linears, DDP unwrapped, frozen flags reset."""
    model = getattr(model, "module", model)
    if hasattr(model, "peft_config"):
        model = model.merge_and_unload()
    for param in model.parameters():
        param.requires_grad = True
    return model


# ---------------------------------------------------------------------------- optimisation


def param_groups(model: nn.Module, settings: StageSettings) -> list[dict[str, Any]]:
    """Return AdamW groups: head vs backbone learning rates, no decay on norms/biases/tokens."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_head = ".head." in f".{name}" or "lora_" in name
        no_decay = param.ndim < 2 or any(part in name for part in _NO_DECAY_NAMES)
        groups.setdefault((is_head, no_decay), []).append(param)
    return [
        {"params": params, "lr": settings.lr if is_head else settings.backbone_lr,
         "weight_decay": 0.0 if no_decay else settings.weight_decay}
        for (is_head, no_decay), params in groups.items()
    ]


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_frac: float):
    """Return a LambdaLR: linear warm-up over warmup_frac of the steps, then cosine to 0."""
    warmup = max(1, int(round(total_steps * warmup_frac))) if warmup_frac > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Return bf16 where it is asked for (or auto on a CUDA device that supports it), else None."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


# ---------------------------------------------------------------------------- sessions


class Session(abc.ABC):
    """Where a training loop runs: device, model wrapping, checkpoints and progress."""

    rank = 0
    world_size = 1
    device = torch.device("cpu")

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    @abc.abstractmethod
    def restore(self) -> dict[str, Any] | None:
        """Return the training state of the latest checkpoint, or None to start afresh."""

    @abc.abstractmethod
    def save_checkpoint(self, directory: Path | None, metrics: dict[str, float]) -> None:
        """Publish one epoch's checkpoint (rank 0 passes its folder, other ranks None)."""

    def progress(self, iterable, total: int, desc: str):
        return iterable


def pick_device(requested: str = "auto") -> torch.device:
    """Return the torch device for `run.device` (auto: cuda, then mps, then cpu)."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("run.device is 'cuda' but torch sees no CUDA device (torch.cuda.is_available() is False)")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise ValueError("run.device is 'mps' but this torch has no Apple MPS backend available")
    return torch.device(requested)


class LocalSession(Session):
    """Training in the current process: checkpoints in a local folder, tqdm progress bars."""

    def __init__(self, work_dir: Path, device: torch.device, *, show_progress: bool = True):
        self.work_dir = Path(work_dir)
        self.device = device
        self.show_progress = show_progress

    def restore(self) -> dict[str, Any] | None:
        path = self.work_dir / "checkpoint"
        if not (path / "state.pt").is_file():
            return None
        return load_state(path, self.device)

    def save_checkpoint(self, directory: Path | None, metrics: dict[str, float]) -> None:
        target = self.work_dir / "checkpoint"
        aside = self.work_dir / "checkpoint.new"
        shutil.rmtree(aside, ignore_errors=True)
        shutil.copytree(directory, aside)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(aside, target)

    @property
    def checkpoint_dir(self) -> Path:
        return self.work_dir / "checkpoint"

    def progress(self, iterable, total: int, desc: str):
        if not self.show_progress:
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, leave=False)


# ---------------------------------------------------------------------------- the loop


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device,
            amp: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (labels, softmax probabilities) of the model over a loader."""
    model.eval()
    labels, probs = [], []
    for x, y in loader:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(x.to(device))
        probs.append(torch.softmax(logits.double(), dim=-1).cpu())
        labels.append(y)
    return torch.cat(labels), torch.cat(probs)


def val_score(metrics: dict[str, float]) -> float:
    """Return the model-selection score: AUROC for binary targets, accuracy for 10-class."""
    return metrics["auroc"] if "auprc" in metrics else metrics["accuracy"]


def freeze_unused(model: nn.Module) -> None:
    """Freeze parameters the classifier's forward never uses (DINOv3's mask_token, for masked-image
    pretraining only): DDP fails a step when a trainable parameter gets no gradient."""
    for name, param in model.named_parameters():
        if name.endswith("mask_token"):
            param.requires_grad = False


def stage_loaders(job: TrainJob, settings: StageSettings, session: Session):
    """Return (train, valid) device-side batches of this rank (trainables.loader): its block-shuffled
    1/N of the training split, and its contiguous 1/N of the validation split."""
    from trainables.data import split_path
    from trainables.loader import HDF5BlockReader, block_loader, shard_range
    from trainables.stain import make_stain_normalizer

    cfg = job.config
    limits = {"train": cfg.data.train_limit, "valid": cfg.data.val_limit}
    prefix = dataset_prefix(cfg)
    stain = make_stain_normalizer(cfg.data.stain_norm, split_path(job.data_root, "train", "x", prefix))
    readers = {split: HDF5BlockReader(job.data_root, split, prefix=prefix, labels=settings.labels,
                                      limit=limits[split] or None, image_size=cfg.data.image_size,
                                      normalize=cfg.data.normalize, stain=stain)
               for split in ("train", "valid")}
    workers = cfg.data.loader_workers
    # Dihedral flips/rotations suit histology, not digits (a rotated 6 is a 9).
    train = block_loader(readers["train"], settings.batch_size, session.device, shuffle=True, seed=cfg.run.seed,
                         rank=session.rank, world_size=session.world_size, workers=workers,
                         augment=cfg.data.dataset == "pcam")
    valid = block_loader(readers["valid"], max(settings.batch_size, 128), session.device, shuffle=False,
                         seed=cfg.run.seed, workers=workers,
                         shard=shard_range(len(readers["valid"]), session.rank, session.world_size))
    return train, valid


def shard_audit(train_loader, val_labels: torch.Tensor, world_size: int) -> dict[str, int]:
    """Return what the ranks saw this epoch: training images summed over ranks, how many of them
    another rank also trained on (0 when shards are disjoint), validation images scored."""
    from trainables.loader import gather_indices

    served = gather_indices(train_loader.served_indices(), world_size)
    total = sum(len(s) for s in served)
    distinct = len(torch.unique(torch.cat(served))) if total else 0
    return {"train_images": total, "train_overlap": total - distinct, "val_images": len(val_labels)}


def train_loop(job: TrainJob, session: Session, penalty: Callable[[nn.Module], torch.Tensor] | None = None,
               on_epoch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train the job's stage; return the history and the best epoch (weights are in checkpoints)."""
    if job.threads:
        torch.set_num_threads(job.threads)
    cfg = job.config
    settings = scale_learning_rates(job, stage_settings(job), session.world_size)
    torch.manual_seed(cfg.run.seed + 1000 * session.rank)
    device = session.device
    amp = autocast_dtype(cfg.finetune.precision, device)

    train_loader, val_loader = stage_loaders(job, settings, session)

    model = build_stage_model(job)
    freeze_unused(model)
    model = session.prepare_model(model)
    optimizer = torch.optim.AdamW(param_groups(model, settings))
    total_steps = settings.epochs * len(train_loader)
    scheduler = warmup_cosine(optimizer, total_steps, settings.warmup_frac)

    start_epoch, best = 0, {"score": -math.inf, "epoch": -1}
    history: list[dict[str, Any]] = []
    best_state: dict[str, torch.Tensor] | None = None
    state = session.restore()
    if state is not None:
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best, history = state["epoch"] + 1, state["best"], state["history"]
        best_state = state["best_model"]
        log.info("%s: resuming at epoch %d/%d", job.stage, start_epoch + 1, settings.epochs)

    prune_from = cfg.tokens.train_from_epoch if job.stage == "finetune" else 0
    for epoch in range(start_epoch, settings.epochs):
        started = time.perf_counter()
        if hasattr(train_loader, "sampler") and hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(epoch)
        _set_training_pruning(model, cfg, prune_from > 0 and epoch + 1 >= prune_from)
        train_loss, penalty_value = _train_epoch(
            model, train_loader, optimizer, scheduler, device, amp, settings.grad_clip, penalty,
            session.progress(train_loader, len(train_loader), f"{job.stage} {epoch + 1}/{settings.epochs}"),
        )
        # A model that trains with pruning is deployed with it, so every epoch is scored pruned
        # and the best epoch is the best pruned model.
        _set_training_pruning(model, cfg, prune_from > 0)
        labels, probs = gather_predictions(*predict(model, val_loader, device, amp), session.world_size)
        metrics = classification_metrics(labels.numpy(), probs.numpy())
        record = {"epoch": epoch, "train_loss": train_loss, "val_score": val_score(metrics),
                  **{f"val_{k}": v for k, v in metrics.items()}, "epoch_s": time.perf_counter() - started,
                  "threads": torch.get_num_threads(), "lr": settings.lr, "backbone_lr": settings.backbone_lr,
                  **shard_audit(train_loader, labels, session.world_size)}
        if penalty is not None:
            record["penalty"] = penalty_value
        stain = train_loader.loader.dataset.stain
        if stain is not None:  # one normaliser shared by both splits' readers
            record["stain_norm_kept_original"] = stain.failures
        history.append(record)
        improved = record["val_score"] > best["score"]
        if improved:
            best = {"score": record["val_score"], "epoch": epoch}
        log.info("%s epoch %d/%d: train_loss %.4f, val_score %.4f%s (%.1f s)", job.stage, epoch + 1,
                 settings.epochs, train_loss, record["val_score"], " *" if improved else "",
                 record["epoch_s"])
        if on_epoch is not None:
            on_epoch(record)
        if improved:
            best_state = {k: v.detach().cpu().clone() for k, v in _unwrap(model).state_dict().items()}
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float))}
        if session.rank != 0:
            session.save_checkpoint(None, scalars)
            continue
        with tempfile.TemporaryDirectory(prefix=f"{job.stage}-ckpt-") as tmp:
            state = {"model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "epoch": epoch, "best": best,
                     "history": history}
            torch.save(state, Path(tmp) / "state.pt")
            torch.save(best_state, Path(tmp) / "best.pt")
            session.save_checkpoint(Path(tmp), scalars)
    return {"history": history, "best": best}


def _set_training_pruning(model: nn.Module, cfg: TrialConfig, on: bool) -> None:
    """Switch the trial's token-pruning schedule on or off in every backbone of the (wrapped) model."""
    from compress import disable_token_pruning, enable_token_pruning

    if on:
        enable_token_pruning(model, cfg.tokens.r_max, cfg.tokens.alpha, fuse=cfg.tokens.fuse)
    else:
        disable_token_pruning(model)


def _train_epoch(model, loader, optimizer, scheduler, device, amp, grad_clip, penalty, batches) -> tuple[float, float]:
    model.train()
    total, count, penalty_total = 0.0, 0, 0.0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = F.cross_entropy(model(x).float(), y)
        objective = loss
        if penalty is not None:
            reg = penalty(_unwrap(model))
            objective = loss + reg
            penalty_total += float(reg.detach()) * len(y)
        if not _finite_everywhere(objective):
            raise FloatingPointError(
                f"training loss became {float(objective.detach())} (non-finite); lower the learning rate "
                "or the prehab lambda")
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
        optimizer.step()
        scheduler.step()
        total += float(loss.detach()) * len(y)
        count += len(y)
    return total / max(1, count), penalty_total / max(1, count)


def _finite_everywhere(value: torch.Tensor) -> bool:
    """Return whether the loss is finite on every DDP rank (all ranks stop together, none hangs)."""
    finite = torch.isfinite(value.detach()).to(torch.float32).reshape(1)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    return bool(finite.item() == 1.0)


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


DIVERGED_FILE = "diverged.json"


def raise_if_diverged(checkpoint: Path) -> None:
    """Raise FloatingPointError if the checkpoint records a diverged run (rerunning it would diverge again)."""
    marker = checkpoint / DIVERGED_FILE
    if marker.is_file():
        raise FloatingPointError(json.loads(marker.read_text())["reason"])


def load_state(checkpoint: Path, device: torch.device) -> dict[str, Any]:
    """Return the training state saved in a checkpoint folder (best weights under best_model)."""
    raise_if_diverged(checkpoint)
    state = torch.load(checkpoint / "state.pt", map_location=device, weights_only=False)
    state["best_model"] = torch.load(checkpoint / "best.pt", map_location="cpu", weights_only=True)
    return state


def best_model(job: TrainJob, checkpoint: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Return (the stage's final plain model from the best epoch, LoRA merged; its history)."""
    model = build_stage_model(job)
    state = torch.load(checkpoint / "best.pt", map_location="cpu", weights_only=True)
    _unwrap(model).load_state_dict(state)
    summary = torch.load(checkpoint / "state.pt", map_location="cpu", weights_only=False)
    return finalize_model(model), {"history": summary["history"], "best": summary["best"]}


def iterate_batches(loader: DataLoader, count: int) -> Iterator[torch.Tensor]:
    """Yield the pixels of the first `count` batches of a loader."""
    for index, (x, _) in enumerate(loader):
        if index >= count:
            return
        yield x


__all__ = [
    "LocalSession", "Session", "StageSettings", "TrainJob", "best_model", "build_stage_model",
    "configure_method", "finalize_model", "iterate_batches", "make_dataset", "param_groups",
    "pick_device", "predict", "scale_learning_rates", "stage_settings", "train_loop", "val_score", "warmup_cosine",
    "wrap_lora",
]
