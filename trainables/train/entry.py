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
import time
import uuid
from pathlib import Path
from typing import Any

import ray.train


class EpochLog(ray.train.UserCallback):
    """Train callback: record each epoch's metrics where the sweep's progress view (which hides
    worker output) reads them, so it can show fine-tune progress as it happens.

    Without `filesystem`, `path` is a local file and each epoch is a line appended to it (the
    run's epochs.jsonl). With one (an object store, which cannot append), `path` is a folder
    on it and each epoch is an object of its own, named so that names sort by time.
    """

    def __init__(self, path: str, run_name: str, filesystem=None):
        self.path, self.run_name, self.filesystem = path, run_name, filesystem

    def after_report(self, run_context, metrics, checkpoint) -> None:
        record = {"run": self.run_name, **(metrics[0] if metrics else {})}
        line = json.dumps(record, default=str) + "\n"
        if self.filesystem is not None:
            name = f"{time.time_ns():020d}-{self.run_name}-{uuid.uuid4().hex[:8]}.json"
            with self.filesystem.open_output_stream(f"{self.path}/{name}") as handle:
                handle.write(line.encode("utf-8"))
            return
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)


def worker_config(job: Any, device: str) -> dict[str, Any]:
    """Return the `train_loop_config` of a run of `job` (a TrainJob) on `device` ("cpu", "cuda", ...)."""
    return {"job": pickle.dumps(job), "device": device}


def ray_worker(config: dict[str, Any]) -> None:
    """train_loop_per_worker: open the job that `worker_config` packed and train it."""
    from trainables.runner import train_on_worker

    train_on_worker(pickle.loads(config["job"]), config["device"])


__all__ = ["EpochLog", "ray_worker", "worker_config"]
