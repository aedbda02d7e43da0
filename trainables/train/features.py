"""Frozen-backbone features: the head_only feature cache, and the collapse watch of every fine-tune.

Feature cache (finetune.feature_cache, head_only with a wholly frozen backbone): the backbone
runs once over the train and valid splits in eval mode (no augmentation, the same
normalisation), and what the head reads — the pooled features, with the tap spectra appended
for model.head = svd_taps — is stored in fp16 in the stage cache. The head then trains on those
rows for finetune.epochs, so a head_only fine-tune costs one forward pass over the data
instead of one per epoch. The svd_taps spectra are cacheable because the SVD is detached: the
tap projections get no gradient and stay at their initialisation, which the cache entry keeps
(head_init.pt) so the trained head uses exactly the projections its features were made with.

Collapse watch: every fine-tune records feature_std, the mean over feature dimensions of the
standard deviation over validation images of the pooled features. Below
finetune.min_feature_std (default 1e-4; pooled DINOv3 features come from a LayerNorm and
spread by ~0.1-1 per dimension) every image maps to nearly the same point and the head can only
guess, so the trial fails with FeatureCollapse rather than report a meaningless score.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainables.config import TrialConfig
from trainables.evaluate.metrics import classification_metrics

log = logging.getLogger(__name__)

FEATURE_SPLITS = ("train", "valid")
HEAD_INIT_FILE = "head_init.pt"
COLLAPSE_FILE = "collapse.json"


class FeatureCollapse(FloatingPointError):
    """The fine-tuned backbone maps every validation image to (nearly) the same features.

    A FloatingPointError because it is deterministic like a divergence: a rerun of the same
    fine-tune collapses again, so the sweep records the trial as failed instead of retrying.
    """


def pooled_width(model: nn.Module) -> int:
    """Return the width of the model's pooled features (the first columns of its head inputs)."""
    return model.head.in_features


@torch.no_grad()
def head_inputs(model: nn.Module, loader: DataLoader, device: torch.device,
                amp: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (head inputs as fp16 on the CPU, labels) of a classifier in eval mode over a loader."""
    model.eval()
    rows, labels = [], []
    for x, y in loader:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            rows.append(model.head_inputs(x.to(device)).float().cpu().to(torch.float16))
        labels.append(y)
    return torch.cat(rows), torch.cat(labels)


def feature_std(features: torch.Tensor) -> float:
    """Return mean_j std_i(features[i, j]): the per-dimension spread over images, averaged (float64)."""
    return float(features.double().std(dim=0, unbiased=False).mean())


@torch.no_grad()
def pooled_feature_std(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    """Return feature_std of the model's pooled features over a loader, accumulated in float64."""
    model = model.to(device).eval()
    total = square = None
    count = 0
    for x, _ in loader:
        pooled = model.features(x.to(device)).double()
        total = pooled.sum(0) if total is None else total + pooled.sum(0)
        square = (pooled ** 2).sum(0) if square is None else square + (pooled ** 2).sum(0)
        count += len(pooled)
    mean = total / count
    variance = (square / count - mean ** 2).clamp_min(0.0)
    return float(variance.sqrt().mean())


def record_collapse(out: Path, value: float) -> None:
    """Write the fine-tune's feature_std into its cache entry."""
    (out / COLLAPSE_FILE).write_text(json.dumps({"feature_std": value}))


def read_collapse(entry: Path) -> float | None:
    """Return the feature_std a fine-tune entry recorded, or None for an entry written before it was."""
    path = entry / COLLAPSE_FILE
    return json.loads(path.read_text())["feature_std"] if path.is_file() else None


def check_collapse(value: float, threshold: float) -> None:
    """Raise FeatureCollapse when feature_std is not finite or below `threshold` (0 = never)."""
    if not math.isfinite(value) or value < threshold:
        raise FeatureCollapse(
            f"features collapsed: mean per-dimension std of the pooled validation features is "
            f"{value:.3g}, below finetune.min_feature_std={threshold:g}")


def write_feature_cache(out: Path, model: nn.Module, loaders: dict[str, DataLoader], device: torch.device,
                        amp: torch.dtype | None) -> dict[str, int]:
    """Write <split>.pt (fp16 head inputs + labels) per split and the head's initial state; return rows per split."""
    model = model.to(device)
    rows = {}
    for split, loader in loaders.items():
        started = time.perf_counter()
        inputs, labels = head_inputs(model, loader, device, amp)
        torch.save({"inputs": inputs, "labels": labels}, out / f"{split}.pt")
        rows[split] = len(labels)
        log.info("feature cache: %s %d x %d in %.1f s", split, *inputs.shape, time.perf_counter() - started)
    torch.save({k: v.cpu() for k, v in model.head.state_dict().items()}, out / HEAD_INIT_FILE)
    return rows


def train_head_on_features(model: nn.Module, features_dir: Path, cfg: TrialConfig, settings,
                           device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """Train the head of `model` (backbone frozen) on cached head inputs; return (model with the
    best epoch's head, {"history", "best", "feature_std"}).

    `settings` are the fine-tune stage's (finetune.StageSettings, learning rates already scaled).
    Batches, AdamW groups, warm-up + cosine schedule, clipping and best-epoch selection follow
    finetune.train_loop.
    """
    from trainables.train.loop import param_groups, val_score, warmup_cosine

    model.head.load_state_dict(torch.load(features_dir / HEAD_INIT_FILE, map_location="cpu", weights_only=True))
    model = model.to(device)
    train = torch.load(features_dir / "train.pt", weights_only=True)
    valid = torch.load(features_dir / "valid.pt", weights_only=True)
    generator = torch.Generator().manual_seed(cfg.run.seed)
    loader = DataLoader(TensorDataset(train["inputs"], train["labels"]), batch_size=settings.batch_size,
                        shuffle=True, generator=generator)
    optimizer = torch.optim.AdamW(param_groups(model, settings))
    scheduler = warmup_cosine(optimizer, settings.epochs * len(loader), settings.warmup_frac)
    trainable = [p for p in model.parameters() if p.requires_grad]
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"score": -math.inf, "epoch": -1}
    best_head = None
    for epoch in range(settings.epochs):
        started = time.perf_counter()
        model.head.train()
        total, count = 0.0, 0
        for x, y in loader:
            x, y = x.to(device).float(), y.to(device)
            loss = F.cross_entropy(model.classify(x).float(), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {float(loss)} (non-finite); lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, settings.grad_clip)
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(y)
            count += len(y)
        model.head.eval()
        with torch.no_grad():
            logits = model.classify(valid["inputs"].to(device).float())
        probs = torch.softmax(logits.double(), dim=-1).cpu()
        metrics = classification_metrics(valid["labels"].numpy(), probs.numpy())
        record = {"epoch": epoch, "train_loss": total / max(1, count), "val_score": val_score(metrics),
                  **{f"val_{k}": v for k, v in metrics.items()}, "epoch_s": time.perf_counter() - started,
                  "lr": settings.lr}
        history.append(record)
        if record["val_score"] > best["score"]:
            best = {"score": record["val_score"], "epoch": epoch}
            best_head = {k: v.detach().cpu().clone() for k, v in model.head.state_dict().items()}
        log.info("finetune (cached features) epoch %d/%d: train_loss %.4f, val_score %.4f (%.2f s)",
                 epoch + 1, settings.epochs, record["train_loss"], record["val_score"], record["epoch_s"])
    model.head.load_state_dict(best_head)
    std = feature_std(valid["inputs"][:, :pooled_width(model)])
    return model, {"history": history, "best": best, "feature_std": std}


__all__ = [
    "FeatureCollapse", "check_collapse", "feature_std", "head_inputs", "pooled_feature_std",
    "read_collapse", "record_collapse", "train_head_on_features", "write_feature_cache",
]
