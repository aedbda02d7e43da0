"""Score a (compressed) classifier inside a trial: a split's predictions, metrics and bootstrap
intervals (split_evaluation, Predictions), parameter count, GFLOPs and latency (cost_metrics, the
timing lock, the uncompressed reference), and the finiteness check a trial's report must pass.

The metric formulas are trainables.evaluate.metrics', the intervals trainables.evaluate.bootstrap's;
`python -m trainables.evaluate` runs the export evaluation CLI, trainables.evaluate.cli.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from compress import count_params
from trainables.config import TrialConfig
from trainables.data.datasets import make_dataset
from trainables.evaluate.bootstrap import metric_intervals
from trainables.evaluate.latency import count_gflops, measure_latency, measure_relative_latency
from trainables.evaluate.metrics import TTA_TRANSFORMS, calibration_metrics, classification_metrics, tta_probs
from trainables.train.loop import predict

log = logging.getLogger(__name__)

PROBS_FILE = "probs.npy"
LABELS_FILE = "labels.npy"


def split_probabilities(model: nn.Module, cfg: TrialConfig, data_root: str, split: str,
                        device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (labels, softmax probabilities) of the model on a split, with TTA when cfg.eval.tta."""
    dataset = make_dataset(cfg, data_root, split)
    loader = DataLoader(dataset, batch_size=cfg.eval.batch_size, shuffle=False,
                        num_workers=cfg.data.loader_workers)
    model = model.to(device).eval()
    if cfg.eval.tta != "none":
        labels, probs = [], []
        for x, y in loader:
            probs.append(tta_probs(model, x.to(device), cfg.eval.tta).cpu())
            labels.append(y)
        return torch.cat(labels), torch.cat(probs)
    return predict(model, loader, device)


def split_evaluation(model: nn.Module, cfg: TrialConfig, data_root: str, split: str,
                     device: torch.device) -> tuple[dict[str, float], Predictions]:
    """Return (split metrics with 95% bootstrap intervals, the predictions they come from).

    Binary targets get <prefix>_auroc_lo/_hi, _auprc_lo/_hi and _accuracy_lo/_hi from a
    stratified bootstrap over the split's images (trainables.evaluate.bootstrap, fixed seed). The
    validation split also gets val_temperature, the temperature fitted on it by NLL, and
    val_ece_cal / val_nll_cal, its ECE and NLL after temperature scaling cross-fitted within
    the split (trainables.evaluate.metrics.calibration_metrics); a test split is never fitted on.
    """
    labels, probs = split_probabilities(model, cfg, data_root, split, device)
    metrics = classification_metrics(labels, probs)
    predictions = Predictions.of(labels, probs)
    if predictions.probs.ndim == 1:
        metrics.update(metric_intervals(predictions.labels, predictions.probs))
    if split == "valid":
        metrics.update(calibration_metrics(predictions.labels, predictions.probs))
    return {f"{split_prefix(split)}_{name}": value for name, value in metrics.items()}, predictions


def split_prefix(split: str) -> str:
    """Return the metric-name prefix of a split: 'val' for valid, else the split's name."""
    return "val" if split == "valid" else split


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


TIMING_LOCK_WAIT_S = 900.0        # longer than any trial's timing; beyond it the holder is stuck
_LOCK_POLL_S = 0.05
_LOCK_LOG_EVERY_S = 60.0


@contextlib.contextmanager
def timing_lock(device: torch.device, wait_s: float = TIMING_LOCK_WAIT_S):
    """Hold a host-wide lock for this device while timing, so concurrent trials on one machine
    take turns instead of timing each other's load.

    Waiting is logged (once, then every minute); after `wait_s` seconds TimeoutError names the
    lock file, since a process that holds it that long is stuck rather than timing.
    """
    path = timing_lock_path(device)
    with open(path, "a") as handle:
        started = time.monotonic()
        next_log = started
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                now = time.monotonic()
                if now - started >= wait_s:
                    raise TimeoutError(
                        f"waited {now - started:.0f} s for the latency timing lock {path}, held by another process "
                        f"on this host; find it with `fuser {path}` and stop it if it is stuck") from None
                if now >= next_log:
                    log.info("waiting for the latency timing lock %s (another process on this host is timing)", path)
                    next_log = now + _LOCK_LOG_EVERY_S
                time.sleep(_LOCK_POLL_S)
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


def as_deployed(model: nn.Module, cfg: TrialConfig) -> nn.Module:
    """Return the model as a trial deploys it: wrapped in its test-time augmentation, if any."""
    return model if cfg.eval.tta == "none" else WithTTA(model, cfg.eval.tta)


def tta_passes(mode: str) -> int:
    """Return the forward passes per image of a TTA mode (none 1, flips 4, dihedral 8)."""
    return len(TTA_TRANSFORMS[mode])


def reference_model(cfg: TrialConfig, device: torch.device, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Return the uncompressed reference that latency_rel divides by, built once per process and reused.

    It is the classifier the seed configuration starts from, before compression: cfg's
    backbone architecture, pooling and classes with a linear head, no token pruning and
    no test-time augmentation, whatever the trial's own head, pruning and TTA. Every trial
    of a sweep therefore divides by the same architecture, so ratios compare across
    trials as latencies do. Its weights are a seeded random init rather than a fine-tune:
    a dense forward's time does not depend on the values of its weights, and building it
    from the architecture needs neither another trial's cache entry nor a download.
    Cached per (backbone, pooling, classes, device, dtype) in this process (a Tune trial
    actor is reused across trials, so a sweep builds it once per actor). With
    eval.runtime=onnxruntime it is that model in an ONNX Runtime session (fp32), cached too.
    """
    reference = _reference_model(cfg.model.backbone, cfg.model.pooling, cfg.model.num_classes, str(device), dtype)
    if cfg.eval.runtime == "onnxruntime":  # the ratio is taken on the trial's runtime, both sides
        return _onnxruntime_reference(reference, cfg.data.image_size, torch.get_num_threads())
    return reference


@functools.lru_cache(maxsize=2)
def _onnxruntime_reference(reference: nn.Module, image_size: int, threads: int) -> nn.Module:
    from trainables.evaluate.runtime import onnxruntime_model

    return onnxruntime_model(reference, "none", image_size, threads=threads)


@functools.lru_cache(maxsize=4)
def _reference_model(backbone: str, pooling: str, num_classes: int, device: str, dtype: torch.dtype) -> nn.Module:
    from trainables.model import build_classifier

    with torch.random.fork_rng(devices=[]):  # the trial's own random stream stays as it was
        torch.manual_seed(0)
        model = build_classifier(backbone, num_classes, None, pooling, head="linear")
    log.info("built the uncompressed %s reference for latency_rel on %s", backbone, device)
    return model.to(device=device, dtype=dtype).eval()


def cost_metrics(model: nn.Module, cfg: TrialConfig, device: torch.device, *,
                 timed: nn.Module | None = None, float_model: nn.Module | None = None) -> dict[str, Any]:
    """Return params, GFLOPs per image, and latency (median ms per image over rounds, its interval, IQR,
    throughput, thread count, device); with eval.latency_rel also latency_rel, its interval and
    latency_ref_ms (the reference's own median).

    With eval.tta the model is timed and counted as deployed, every augmented view's forward
    pass included, so a TTA setting pays for its accuracy on the front. With eval.latency_rel
    the model is timed in rounds interleaved with reference_model (measure_relative_latency),
    and latency_ms is the model's figure from those same rounds.
    `model` is the trial's final PyTorch model (compress.quant applied): params and model_bytes
    count it. `timed` is what the runtime runs (trainables.evaluate.runtime; default `model`); GFLOPs are
    counted on `float_model` (default `model`), the same operations before quantization.
    """
    from compress.quant import model_bytes

    shape = (3, cfg.data.image_size, cfg.data.image_size)
    model = model.to(device).eval()
    deployed = as_deployed(timed if timed is not None else model, cfg)
    timing = dict(device=device, warmup=cfg.eval.latency_warmup, repeats=cfg.eval.latency_repeats,
                  batch_size=cfg.eval.latency_batch, rounds=cfg.eval.latency_rounds,
                  pause_s=cfg.eval.latency_pause_s)
    relative: dict[str, float] = {}
    if cfg.eval.latency_rel:
        # bf16 is a compression too: its ratio is to the float32 reference (its input cast timed with it).
        dtype = torch.float32 if cfg.compress.quant == "bf16" else next(model.parameters()).dtype
        reference = reference_model(cfg, device, dtype)
        with timing_lock(device):
            paired = measure_relative_latency(deployed, reference, shape, **timing)
        latency = paired.model
        relative = {"latency_rel": paired.latency_rel, "latency_rel_lo": paired.latency_rel_lo,
                    "latency_rel_hi": paired.latency_rel_hi, "latency_ref_ms": paired.reference.latency_ms}
    else:
        with timing_lock(device):
            latency = measure_latency(deployed, shape, **timing)
    return {
        "params": count_params(model),
        "model_bytes": model_bytes(model),
        "quant": cfg.compress.quant,
        "eval_runtime": cfg.eval.runtime,
        "gflops": count_gflops(as_deployed(float_model if float_model is not None else model, cfg), shape),
        "tta_passes": tta_passes(cfg.eval.tta),
        "latency_ms": latency.latency_ms,
        "latency_ms_lo": latency.latency_ms_lo,
        "latency_ms_hi": latency.latency_ms_hi,
        "latency_ms_spread": latency.latency_ms_spread,
        **relative,
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
