"""Score a (compressed) classifier: split metrics, parameter count, GFLOPs and latency; and the
`python -m trainables.evaluate` command that scores an exported model on any data in PCam's layout."""

from __future__ import annotations

import contextlib
import dataclasses
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
from trainables.evaluate.bootstrap import metric_intervals
from trainables.config import TrialConfig
from trainables.data.datasets import make_dataset
from trainables.train.loop import predict
from trainables.evaluate.latency import count_gflops, measure_latency, measure_relative_latency
from trainables.evaluate.metrics import TTA_TRANSFORMS, calibration_metrics, classification_metrics, tta_probs

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


def split_metrics(model: nn.Module, cfg: TrialConfig, data_root: str, split: str,
                  device: torch.device) -> dict[str, float]:
    """Return classification metrics of the model on a split, prefixed with the split ('val_'/'test_')."""
    return split_evaluation(model, cfg, data_root, split, device)[0]


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


# ------------------------------------------------------------- python -m trainables.evaluate

INTERVAL_METRICS = ("auroc", "auprc", "accuracy", "sens_at_95spec", "ece")


def stratified_bootstrap_intervals(labels, probs, *, resamples: int = 1000, confidence: float = 0.95,
                                   seed: int = 0) -> dict[str, tuple[float, float]]:
    """Return {metric: (low, high)} percentile-bootstrap intervals of INTERVAL_METRICS.

    Each class's images are resampled with replacement on their own (scipy.stats.bootstrap
    with one sample per class), so every resample keeps the split's class counts; a fixed
    seed makes reruns agree.
    """
    from scipy.stats import bootstrap

    labels = np.asarray(labels.numpy() if isinstance(labels, torch.Tensor) else labels).reshape(-1)
    probs = np.asarray(probs.numpy() if isinstance(probs, torch.Tensor) else probs, dtype=np.float64)
    if probs.ndim == 2 and probs.shape[1] == 2:
        probs = probs[:, 1]
    binary = probs.ndim == 1
    names = [name for name in INTERVAL_METRICS if name in classification_metrics(labels, probs)]
    per_class = tuple(np.flatnonzero(labels == label) for label in np.unique(labels))

    def statistic(*indices):
        index = np.concatenate(indices)
        if binary:
            metrics = _binary_interval_metrics(labels[index], probs[index])
        else:
            metrics = classification_metrics(labels[index], probs[index])
        return np.array([metrics[name] for name in names])

    result = bootstrap(per_class, statistic, n_resamples=resamples, confidence_level=confidence,
                       method="percentile", vectorized=False, rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return {name: (float(lo), float(hi)) for name, lo, hi in zip(names, low, high)}


def _binary_interval_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Return INTERVAL_METRICS of binary_metrics' definitions from one sort (no per-call validation:
    the bootstrap calls it a thousand times).

    Over the distinct thresholds t_k, descending: TP_k, FP_k; AUROC = trapezoid of (FPR, TPR);
    AP = sum_k (R_k - R_{k-1}) P_k; Sens@95%Spec = max TPR with FPR <= 0.05.
    """
    from trainables.evaluate.metrics import TARGET_SPECIFICITY, expected_calibration_error

    order = np.argsort(-p, kind="mergesort")
    ranked, hits = p[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(ranked)), ranked.size - 1]
    tps = np.cumsum(hits)[last]
    fps = last + 1 - tps
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    precision = tps / (tps + fps)
    return {
        "auroc": float(np.trapezoid(tpr, fpr)),
        "auprc": float(np.sum(np.diff(tpr) * precision)),
        "accuracy": float(np.mean((p >= 0.5) == y)),
        "sens_at_95spec": float(tpr[fpr <= 1.0 - TARGET_SPECIFICITY + 1e-12].max()),
        "ece": expected_calibration_error(p, y.astype(np.float64)),
    }


def _export_config(model_dir: Path) -> TrialConfig:
    """Return the trial config an export folder carries in config.json."""
    import json

    path = model_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: --model must be a folder written by "
                                "python tune/run.py --export")
    try:
        return TrialConfig.from_flat(json.loads(path.read_text()))
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: {err}") from None


def _data_config(cfg: TrialConfig, root: str, split: str, limit: int) -> TrialConfig:
    """Return cfg reading `root`: PCam's file names if present there, else the digits preset's."""
    from trainables.data.datasets import DIGITS_PREFIX, PCAM_PREFIX, split_path

    for dataset, prefix in (("pcam", PCAM_PREFIX), ("digits", DIGITS_PREFIX)):
        if split_path(root, split, "x", prefix).is_file():
            break
    else:
        raise FileNotFoundError(f"no {split!r} split under {root}: expected "
                                f"{split_path(root, split, 'x', PCAM_PREFIX)} (PCam's HDF5 layout)")
    limits = {"valid": "val_limit", "test": "test_limit"}
    data = dataclasses.replace(cfg.data, dataset=dataset, root=str(root), **{limits[split]: limit})
    return dataclasses.replace(cfg, data=data)


def main(argv: list[str] | None = None) -> int:
    """Evaluate an exported model on a split of data in PCam's layout; print (and save) its metrics."""
    import argparse
    import json

    from compress import load_compressed
    from compress.temperature import unwrap_temperature
    from trainables.evaluate.metrics import temperature_scale
    from compress.quant import check_quant_device, quant_mode
    from trainables.train.sessions import pick_device

    parser = argparse.ArgumentParser(
        prog="python -m trainables.evaluate",
        description="Score a model exported by `python tune/run.py --export` on any data in PCam's "
                    "HDF5 layout: AUROC, AUPRC, accuracy, Sens@95%%Spec and ECE with 95%% intervals, of the "
                    "model's own probabilities; with the export's temperature also ECE and NLL after it.")
    parser.add_argument("--model", required=True, help="the export folder")
    parser.add_argument("--data", required=True, help="folder holding <prefix>_split_<split>_{x,y}.h5")
    parser.add_argument("--split", required=True, choices=("valid", "test"))
    tta = parser.add_mutually_exclusive_group()
    tta.add_argument("--tta", choices=tuple(TTA_TRANSFORMS), default=None,
                     help="test-time augmentation: none, flips (4 views) or dihedral (8); "
                          "default: the trial's own eval.tta")
    tta.add_argument("--no-tta", dest="tta", action="store_const", const="none",
                     help="no test-time augmentation (the same as --tta none)")
    parser.add_argument("--limit", type=int, default=0, help="score the first N images only (0 = all)")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: the trial's run.device)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--json", metavar="PATH", help="also write the metrics as one JSON object")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.limit < 0 or args.resamples < 1:
        parser.error("--limit must be >= 0 and --resamples >= 1")
    if args.json:
        from trainables.writable import NotWritableError, check_writable_file

        try:
            check_writable_file(args.json)  # before minutes of scoring, not after
        except NotWritableError as err:
            parser.error(f"--json: {err}")
    model_dir = Path(args.model)
    try:
        cfg = _data_config(_export_config(model_dir), args.data, args.split, args.limit)
        if args.tta is not None:
            cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, tta=args.tta))
        model, temperature = unwrap_temperature(load_compressed(model_dir))
        device = pick_device(args.device or cfg.run.device)
        check_quant_device(quant_mode(model), device)   # an int8 export runs on a CPU only
    except (OSError, ValueError, TypeError) as err:
        parser.error(str(err).splitlines()[0])
    labels, probs = split_probabilities(model, cfg, cfg.data.root, args.split, device)
    prefix = split_prefix(args.split)
    point = classification_metrics(labels, probs)
    intervals = stratified_bootstrap_intervals(labels, probs, resamples=args.resamples)
    result: dict[str, Any] = {}
    for name, value in point.items():
        result[f"{prefix}_{name}"] = value
        if name in intervals:
            result[f"{prefix}_{name}_lo"], result[f"{prefix}_{name}_hi"] = intervals[name]
    if temperature is not None:
        calibrated = classification_metrics(labels, temperature_scale(probs.numpy(), temperature))
        result.update({"temperature": temperature, f"{prefix}_ece_cal": calibrated["ece"],
                       f"{prefix}_nll_cal": calibrated["nll"]})
    print(f"{model_dir} on {args.data} ({args.split}, {len(labels)} images, "
          f"TTA {cfg.eval.tta}, {device.type}):")
    for name in INTERVAL_METRICS:
        if name in point:
            low, high = intervals[name]
            print(f"  {prefix}_{name:<16} {point[name]:.4f}  95% CI [{low:.4f}, {high:.4f}]")
    if temperature is not None:
        print(f"  after the export's temperature {temperature:.4g}: {prefix}_ece {result[f'{prefix}_ece_cal']:.4f}, "
              f"{prefix}_nll {result[f'{prefix}_nll_cal']:.4f} (was {point['nll']:.4f})")
    if args.json:
        described = {"model": str(model_dir), "data": str(args.data), "split": args.split,
                     "images": len(labels), "tta": cfg.eval.tta, "bootstrap_resamples": args.resamples,
                     **result}
        target = Path(args.json)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{target.name}.partial")
        staging.write_text(json.dumps(described, indent=1))
        staging.replace(target)
    return 0
