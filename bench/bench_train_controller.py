"""Wall seconds of a one-worker TorchTrainer run whose context Ray Train's controller unpickles
without trainables (the job as bytes, trainables.train.entry) against one that holds a
`TrainJob` object (the controller then imports trainables, compress and transformers first, as
it did before train_entry), interleaved in one Ray session.

The worker does what a stage's worker does before training (imports trainables.runner and
opens the job), reports once and ends, so the difference is the controller's start-up.

    python bench/bench_train_controller.py [ROUNDS]
"""
import os
import pickle
import statistics
import sys
import tempfile
import time

import ray
import ray.train
from ray.train.torch import TorchTrainer

from trainables.job import TrainJob
from trainables.runner import set_train_poll_default
from trainables.train.entry import EpochLog, worker_config


def loop(config):
    import trainables.runner  # noqa: F401  (what trainables.train.entry.ray_worker imports)

    job = config["job"]
    job = pickle.loads(job) if isinstance(job, bytes) else job
    ray.train.report({"epoch": 0, "stage": job.stage})


def fit(storage: str, name: str, job: TrainJob, light: bool) -> float:
    config = worker_config(job, "cpu") if light else {"job": job, "device": "cpu"}
    start = time.perf_counter()
    TorchTrainer(loop, train_loop_config=config, scaling_config=ray.train.ScalingConfig(num_workers=1),
                 run_config=ray.train.RunConfig(name=name, storage_path=storage,
                                                callbacks=[EpochLog(os.path.join(storage, name, "epochs.jsonl"), name)])
                 ).fit()
    return time.perf_counter() - start


if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    set_train_poll_default()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    walls = {"light": [], "TrainJob": []}
    with tempfile.TemporaryDirectory() as storage:
        job = TrainJob("finetune", {"run.device": "cpu"}, storage)
        fit(storage, "warm-up", job, True)  # the first run also pays for Ray's own first imports
        for rnd in range(rounds):
            for kind in (("light", "TrainJob") if rnd % 2 == 0 else ("TrainJob", "light")):
                wall = fit(storage, f"r{rnd}-{kind}", job, kind == "light")
                walls[kind].append(wall)
                print(f"round {rnd} {kind}: wall {wall:.2f} s", flush=True)
    ray.shutdown()
    light, heavy = statistics.median(walls["light"]), statistics.median(walls["TrainJob"])
    print(f"controller context without trainables: median {light:.2f} s; with a TrainJob: median {heavy:.2f} s; "
          f"{heavy - light:+.2f} s per run ({light / heavy:.2f}x)")
