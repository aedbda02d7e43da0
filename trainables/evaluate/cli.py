"""`python -m trainables.evaluate`: score a model exported by `python tune/run.py --export` on any data
in PCam's HDF5 layout, and print (and optionally write as JSON) its metrics with 95% intervals.

This module owns the command line only: reading the export's config and weights and pointing the
config at the data. The predictions come from trainables.evaluate.evaluation.split_probabilities, the point
estimates from trainables.evaluate.metrics.classification_metrics and the intervals from
trainables.evaluate.bootstrap.metric_intervals, as in the sweep, so on the sweep's own validation split it
reproduces the sweep's figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from trainables.config import TrialConfig
from trainables.evaluate.bootstrap import RESAMPLES, metric_intervals
from trainables.evaluate.evaluation import Predictions, split_prefix, split_probabilities
from trainables.evaluate.metrics import TTA_TRANSFORMS, classification_metrics, temperature_scale

INTERVAL_METRICS = ("auroc", "auprc", "accuracy", "sens_at_95spec", "ece")


def _export_config(model_dir: Path) -> TrialConfig:
    """Return the trial config an export folder carries in config.json."""
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
    from compress import load_compressed
    from compress.quant import check_quant_device, quant_mode
    from compress.temperature import unwrap_temperature
    from trainables.train.sessions import pick_device

    parser = argparse.ArgumentParser(
        prog="python -m trainables.evaluate",
        description="Score a model exported by `python tune/run.py --export` on any data in PCam's "
                    "HDF5 layout: AUROC, AUPRC, accuracy, Sens@95%Spec and ECE with 95% intervals, of the "
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
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help=f"bootstrap resamples (default {RESAMPLES})")
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
    shown = [name for name in INTERVAL_METRICS if name in point]
    predictions = Predictions.of(labels, probs)  # as split_evaluation: intervals of the stored (float32) predictions
    intervals = metric_intervals(predictions.labels, predictions.probs, resamples=args.resamples, metrics=shown)
    result: dict[str, Any] = {}
    for name, value in point.items():
        result[f"{prefix}_{name}"] = value
        result.update({f"{prefix}_{key}": intervals[key] for key in (f"{name}_lo", f"{name}_hi") if key in intervals})
    if temperature is not None:
        calibrated = classification_metrics(labels, temperature_scale(probs.numpy(), temperature))
        result.update({"temperature": temperature, f"{prefix}_ece_cal": calibrated["ece"],
                       f"{prefix}_nll_cal": calibrated["nll"]})
    print(f"{model_dir} on {args.data} ({args.split}, {len(labels)} images, "
          f"TTA {cfg.eval.tta}, {device.type}):")
    for name in shown:
        low, high = intervals[f"{name}_lo"], intervals[f"{name}_hi"]
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
