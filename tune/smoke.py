"""`--smoke`: a preset's real code path in minutes, on generated data and random-init weights.

What stays the preset's: the backbone architecture (ViT-S/16), the image size (96 / 224
px), the fine-tune method (LoRA through a Ray Train TorchTrainer), compression,
evaluation, the Optuna study and every report. What shrinks: the data (a generated set in
PCam's layout, written on each node that runs a trial: trainables.data.synthetic), the weights
(random init, built in the trial), the epochs, the latency repeats, and the number of
trials. The space defaults to `compress_only`, so the second trial reuses the first
one's fine-tune from the stage cache, as most trials of a real sweep do.

Attached to a cluster (RAY_ADDRESS), the preset's resources stay as they are (Train
workers, GPUs): the smoke run is then a check that the cluster can run the sweep. On one
machine they are cut to what it has.
"""

from __future__ import annotations

import os
from typing import Any

from tune.presets import Preset

SMOKE_TRIALS = 2
SMOKE_SPACE = "compress_only"

# Images per split by image size: a ViT-S/16 train step costs ~5x more at 224 px than at 96.
_SIZES = {96: (128, 64), 224: (64, 32)}


def smoke_overrides(preset: Preset) -> dict[str, Any]:
    """Return the flat overrides that shrink `preset` to a smoke run (data, weights, epochs, timing)."""
    image_size = int(preset.trial.get("data.image_size", 96))
    train, valid = _SIZES.get(image_size, _SIZES[224])
    overrides: dict[str, Any] = {
        "data.synthetic": True, "data.root": "", "model.weights": "",
        "data.train_limit": train, "data.val_limit": valid, "data.test_limit": valid,
        "finetune.epochs": 1, "finetune.batch_size": 32, "eval.batch_size": 64,
        "calib.batches": 2, "calib.batch_size": 16,
        "eval.latency_batch": 2, "eval.latency_repeats": 3, "eval.latency_warmup": 1,
        "eval.latency_rounds": 1, "eval.latency_pause_s": 0.0,
        # Random-init DINOv3 weights pool to nearly constant features (std ~3e-5 after one
        # epoch on 128 images), which the collapse watch rightly calls collapsed: a smoke run
        # checks the code path, not the features, so the watch is off here.
        "finetune.min_feature_std": 0.0,
    }
    if not attached_to_cluster():
        overrides.update(_local_resources(preset))
    return overrides


def smoke_trial_resources(preset: Preset) -> dict[str, float]:
    """Return the trial driver's resources: the preset's on a cluster, one CPU on one machine."""
    return dict(preset.trial_resources) if attached_to_cluster() else {"cpu": 1}


def attached_to_cluster() -> bool:
    """Return whether the sweep attaches to a running Ray cluster (RAY_ADDRESS, as `ray job submit` sets)."""
    return bool(os.environ.get("RAY_ADDRESS"))


def _local_resources(preset: Preset) -> dict[str, Any]:
    """Return Train worker settings that fit this machine: one worker per local GPU up to the
    preset's count (one on CPU), the CPUs left over from the trial driver shared among them."""
    import torch

    gpus = torch.cuda.device_count()
    workers = max(1, min(int(preset.trial.get("finetune.workers", 1)), gpus))
    spare = max(1.0, (os.cpu_count() or 2) - 1.0)
    # CPU-only: the DataLoader workers would compete with the training worker for 1-2 cores.
    loader_workers = int(preset.trial.get("data.loader_workers", 0)) if gpus else 0
    # A smoke run's trials go one at a time and the trial driver waits while its Train workers
    # fine-tune, so they share every core between them, not only the CPUs they reserve (2-core
    # Xeon VM, pcam-a100 smoke on 16 images: its 224-px epoch took 11.8 s at 1 thread, 8.7 s at 2).
    threads = max(1, (os.cpu_count() or 2) // workers)
    # accelerator_type: this machine's GPU need not be the cluster's A100.
    return {"finetune.workers": workers, "finetune.cpus_per_worker": min(spare / workers, 8.0),
            "finetune.threads_per_worker": threads, "data.loader_workers": loader_workers,
            "finetune.accelerator_type": ""}


__all__ = ["SMOKE_SPACE", "SMOKE_TRIALS", "attached_to_cluster", "smoke_overrides", "smoke_trial_resources"]
