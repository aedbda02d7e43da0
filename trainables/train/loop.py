"""The training loop shared by every training stage (pretrain, finetune, prehab, recover).

One function, `train_loop`, runs on a Ray Train worker (`TorchTrainer`) or in the current
process (`--debug-trial`); a `Session` (trainables.train.sessions) hides the difference (device,
DDP wrapping, where checkpoints go, how progress is shown). Each epoch writes a checkpoint
holding the full training state and the weights of the best epoch so far (by `val_score`:
AUROC for binary targets, accuracy otherwise), so a restarted worker resumes at the next
epoch and the stage's result is the best epoch, not the last.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from compress.adapters import adapter_for
from trainables.config import TrialConfig
from trainables.data.datasets import dataset_prefix
from trainables.data.loader import gather_predictions
from trainables.evaluate.metrics import classification_metrics
from trainables.job import StageSettings, TrainJob, build_stage_model, scale_learning_rates, stage_settings
from trainables.model import finalize_model
from trainables.train.sessions import Session

log = logging.getLogger(__name__)

def param_groups(model: nn.Module, settings: StageSettings) -> list[dict[str, Any]]:
    """Return AdamW groups: head vs backbone learning rates, no decay on norms/biases/tokens."""
    no_decay_names = adapter_for(model).no_decay_parameter_names
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_head = ".head." in f".{name}" or "lora_" in name
        no_decay = param.ndim < 2 or any(part in name for part in no_decay_names)
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
    """Freeze parameters the classifier's forward never uses (the adapter names them): DDP fails a
    step when a trainable parameter gets no gradient."""
    unused = adapter_for(model).unused_parameter_names
    for name, param in model.named_parameters():
        if name.endswith(unused):
            param.requires_grad = False


def stage_loaders(job: TrainJob, settings: StageSettings, session: Session):
    """Return (train, valid) device-side batches of this rank (trainables.data.loader): its block-shuffled
    1/N of the training split, and its contiguous 1/N of the validation split."""
    from trainables.data.datasets import split_path
    from trainables.data.loader import HDF5BlockReader, block_loader, shard_range
    from trainables.data.stain import make_stain_normalizer

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
    from trainables.data.loader import gather_indices

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
    """Switch the trial's training token-pruning schedule on or off in every backbone of the (wrapped) model."""
    from compress import disable_token_pruning, enable_token_pruning

    if on:
        r_max, alpha = cfg.tokens.training_schedule
        enable_token_pruning(model, r_max, alpha, fuse=cfg.tokens.fuse)
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


def best_model(job: TrainJob, checkpoint: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Return (the stage's final plain model from the best epoch, LoRA merged; its history)."""
    model = build_stage_model(job)
    state = torch.load(checkpoint / "best.pt", map_location="cpu", weights_only=True)
    _unwrap(model).load_state_dict(state)
    summary = torch.load(checkpoint / "state.pt", map_location="cpu", weights_only=False)
    return finalize_model(model), {"history": summary["history"], "best": summary["best"]}
