"""Where a training loop runs (a `Session`: this process, or a Ray Train worker), on which
device, and the epoch checkpoints it leaves behind.
"""

from __future__ import annotations

import abc
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn


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



class RayTrainSession(Session):
    """A Ray Train worker: DDP across workers, checkpoints reported to Train's storage."""

    def __init__(self, device: torch.device):
        import ray.train

        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = device

    def prepare_model(self, model: nn.Module) -> nn.Module:
        import ray.train.torch

        # Passing the device keeps Train from choosing cuda:N on an Apple machine: Ray Train 2.60
        # has no MPS device manager, so its get_device() answers cuda:0 there.
        return ray.train.torch.prepare_model(model, move_to_device=self.device)

    def restore(self):
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as directory:
            return load_state(Path(directory), self.device)

    def save_checkpoint(self, directory, metrics):
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(str(directory)) if directory else None
        ray.train.report(metrics, checkpoint=checkpoint)


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
