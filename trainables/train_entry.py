"""What a TorchTrainer's controller unpickles, kept free of torch, transformers and the rest of trainables.

Ray Train 2.60 starts one controller process per `fit()` and hands it the run's context: the
`train_loop_config` and the RunConfig's callbacks, unpickled there before any worker starts.
Had they come from trainables.runner (or held a `TrainJob`), the controller would import
torch, transformers and scikit-learn first: 4-6 s on the critical path of every training
stage on a 2-core VM, for a process that only schedules workers and relays their reports.
So the job travels as pickled bytes that only the workers open, and the callback and the
worker's entry point live here; the entry point imports the trainer when a worker calls it.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import ray.train


class EpochLog(ray.train.UserCallback):
    """Train callback: append each epoch's metrics to <run folder>/epochs.jsonl, so the sweep's
    progress view (which hides worker output) can show fine-tune progress as it happens."""

    def __init__(self, path: str, run_name: str):
        self.path, self.run_name = path, run_name

    def after_report(self, run_context, metrics, checkpoint) -> None:
        record = {"run": self.run_name, **(metrics[0] if metrics else {})}
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=str) + "\n")


def worker_config(job: Any, device: str) -> dict[str, Any]:
    """Return the `train_loop_config` of a run of `job` (a TrainJob) on `device` ("cpu", "cuda", ...)."""
    return {"job": pickle.dumps(job), "device": device}


def ray_worker(config: dict[str, Any]) -> None:
    """train_loop_per_worker: open the job that `worker_config` packed and train it."""
    from trainables.runner import train_on_worker

    train_on_worker(pickle.loads(config["job"]), config["device"])


__all__ = ["EpochLog", "ray_worker", "worker_config"]
