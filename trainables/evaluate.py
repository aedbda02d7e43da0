"""Score a (compressed) classifier: split metrics, parameter count, GFLOPs and latency."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from compress import count_params
from trainables.bootstrap import metric_intervals
from trainables.config import TrialConfig
from trainables.finetune import make_dataset, predict
from trainables.latency import count_gflops, measure_latency
from trainables.metrics import TTA_TRANSFORMS, classification_metrics, tta_probs

log = logging.getLogger(__name__)

PROBS_FILE = "probs.npy"
LABELS_FILE = "labels.npy"


def split_metrics(model: nn.Module, cfg: TrialConfig, data_root: str, split: str,
                  device: torch.device) -> dict[str, float]:
    """Return classification metrics of the model on a split, prefixed with the split ('val_'/'test_')."""
    return split_evaluation(model, cfg, data_root, split, device)[0]


def split_evaluation(model: nn.Module, cfg: TrialConfig, data_root: str, split: str,
                     device: torch.device) -> tuple[dict[str, float], Predictions]:
    """Return (split metrics with 95% bootstrap intervals, the predictions they come from).

    Binary targets get <prefix>_auroc_lo/_hi, _auprc_lo/_hi and _accuracy_lo/_hi from a
    stratified bootstrap over the split's images (trainables.bootstrap, fixed seed).
    """
    dataset = make_dataset(cfg, data_root, split)
    loader = DataLoader(dataset, batch_size=cfg.eval.batch_size, shuffle=False,
                        num_workers=cfg.data.loader_workers)
    model = model.to(device).eval()
    if cfg.eval.tta != "none":
        labels, probs = [], []
        for x, y in loader:
            probs.append(tta_probs(model, x.to(device), cfg.eval.tta).cpu())
            labels.append(y)
        labels, probs = torch.cat(labels), torch.cat(probs)
    else:
        labels, probs = predict(model, loader, device)
    prefix = "val" if split == "valid" else split
    metrics = classification_metrics(labels, probs)
    predictions = Predictions.of(labels, probs)
    if predictions.probs.ndim == 1:
        metrics.update(metric_intervals(predictions.labels, predictions.probs))
    return {f"{prefix}_{name}": value for name, value in metrics.items()}, predictions


@dataclass(frozen=True)
class Predictions:
    """One model's predictions on a split: labels (int64) and probabilities (float32; the
    positive class's for a binary target, else (N, K)), so two trials compare paired."""

    labels: np.ndarray
    probs: np.ndarray

    @classmethod
    def of(cls, labels: torch.Tensor, probs: torch.Tensor) -> "Predictions":
        """Return the predictions of (N,) labels and (N, K) softmax probabilities."""
        probs = probs.detach().cpu().float().numpy()
        if probs.ndim == 2 and probs.shape[1] == 2:
            probs = probs[:, 1]
        return cls(labels.detach().cpu().numpy().astype(np.int64).reshape(-1), probs.astype(np.float32))

    def save(self, folder: Path) -> None:
        """Write probs.npy and labels.npy into `folder`."""
        np.save(folder / PROBS_FILE, self.probs)
        np.save(folder / LABELS_FILE, self.labels)

    @classmethod
    def load(cls, folder: Path) -> "Predictions | None":
        """Return the predictions saved in `folder`, or None when it has none (an older sweep)."""
        if not (folder / PROBS_FILE).is_file():
            return None
        return cls(np.load(folder / LABELS_FILE), np.load(folder / PROBS_FILE))


def timing_lock_path(device: torch.device) -> Path:
    """Return the file whose flock serialises latency timing on this host for `device`'s type."""
    return Path(tempfile.gettempdir()) / f"vitsweep-latency-{device.type}.lock"


@contextlib.contextmanager
def timing_lock(device: torch.device):
    """Hold a host-wide lock for this device while timing, so concurrent trials on one machine
    take turns instead of timing each other's load."""
    with open(timing_lock_path(device), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class WithTTA(nn.Module):
    """The model as deployed with test-time augmentation: forward returns the mean softmax over the views."""

    def __init__(self, model: nn.Module, transforms: str):
        super().__init__()
        self.model, self.transforms = model, transforms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tta_probs(self.model, x, self.transforms)


def tta_passes(mode: str) -> int:
    """Return the forward passes per image of a TTA mode (none 1, flips 4, dihedral 8)."""
    return len(TTA_TRANSFORMS[mode])


def cost_metrics(model: nn.Module, cfg: TrialConfig, device: torch.device) -> dict[str, Any]:
    """Return params, GFLOPs per image, and latency (median ms per image over rounds, its interval, IQR,
    throughput, thread count, device).

    With eval.tta the model is timed and counted as deployed, every augmented view's forward
    pass included, so a TTA setting pays for its accuracy on the front.
    """
    shape = (3, cfg.data.image_size, cfg.data.image_size)
    model = model.to(device).eval()
    deployed = model if cfg.eval.tta == "none" else WithTTA(model, cfg.eval.tta)
    with timing_lock(device):
        latency = measure_latency(deployed, shape, device=device, warmup=cfg.eval.latency_warmup,
                                  repeats=cfg.eval.latency_repeats, batch_size=cfg.eval.latency_batch,
                                  rounds=cfg.eval.latency_rounds, pause_s=cfg.eval.latency_pause_s)
    return {
        "params": count_params(model),
        "gflops": count_gflops(deployed, shape),
        "tta_passes": tta_passes(cfg.eval.tta),
        "latency_ms": latency.latency_ms,
        "latency_ms_lo": latency.latency_ms_lo,
        "latency_ms_hi": latency.latency_ms_hi,
        "latency_ms_spread": latency.latency_ms_spread,
        "latency_threads": torch.get_num_threads(),
        "throughput_img_s": latency.throughput_img_s,
        "latency_batch": latency.batch_size,
        "device": latency.device_name,
    }


def check_finite(metrics: dict[str, Any], names: list[str]) -> None:
    """Raise if any named metric is missing or not a finite number (a diverged trial must fail)."""
    for name in names:
        value = metrics.get(name)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise FloatingPointError(f"metric {name} is {value!r}, not a finite number: the trial failed")
