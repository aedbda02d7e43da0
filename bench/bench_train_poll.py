"""Wall seconds of a one-worker TorchTrainer run at Ray Train poll intervals of 2 s (Ray's
default), 0.5 s (what trainables.runner sets) and 0.1 s, interleaved in one Ray session.

Each run trains 3 "epochs" of fixed work (one-thread matrix products, WORK_S seconds each on
an idle core) and reports after each, as a 3-epoch stage does. Printed per interval: the
median wall time of the run, and the median seconds the worker spent on its work, so a
poll that steals time from training would show there.

    python bench/bench_train_poll.py [ROUNDS]
"""
import os
import statistics
import sys
import tempfile
import time

import ray
import ray.train
import torch
from ray.train.torch import TorchTrainer

from trainables.runner import TRAIN_POLL_ENV

INTERVALS = ("2.0", "0.5", "0.1")
EPOCHS, WORK_S = 3, 1.0


def _products_per_second() -> float:
    """Matrix products a second at one thread, so each epoch's work is about WORK_S on an idle core."""
    torch.set_num_threads(1)
    x = torch.randn(256, 256)
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < 0.5:
        x @ x
        count += 1
    return count / (time.perf_counter() - start)


def loop(config):
    torch.set_num_threads(1)
    x = torch.randn(256, 256)
    worked = 0.0
    for epoch in range(EPOCHS):
        start = time.perf_counter()
        for _ in range(config["products"]):
            x @ x
        worked += time.perf_counter() - start
        ray.train.report({"epoch": epoch})
    with open(config["worked_file"], "w") as handle:  # one machine: the driver reads it
        handle.write(str(worked))


def fit(storage: str, name: str, products: int) -> tuple[float, float]:
    worked_file = os.path.join(storage, f"{name}.worked")
    start = time.perf_counter()
    TorchTrainer(loop, train_loop_config={"products": products, "worked_file": worked_file},
                 scaling_config=ray.train.ScalingConfig(num_workers=1),
                 run_config=ray.train.RunConfig(name=name, storage_path=storage)).fit()
    wall = time.perf_counter() - start
    with open(worked_file) as handle:
        return wall, float(handle.read())


if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    products = max(1, int(_products_per_second() * WORK_S))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    walls = {value: [] for value in INTERVALS}
    worked = {value: [] for value in INTERVALS}
    with tempfile.TemporaryDirectory() as storage:
        fit(storage, "warm-up", products)  # the first run also pays for worker processes and imports
        for rnd in range(rounds):
            for value in INTERVALS:
                os.environ[TRAIN_POLL_ENV] = value
                wall, work = fit(storage, f"r{rnd}-{value}", products)
                walls[value].append(wall)
                worked[value].append(work)
                print(f"round {rnd} poll {value} s: wall {wall:.1f} s, worker's work {work:.2f} s", flush=True)
    ray.shutdown()
    base = statistics.median(walls[INTERVALS[0]])
    for value in INTERVALS:
        wall = statistics.median(walls[value])
        print(f"poll {value} s: median wall {wall:.1f} s ({wall / base:.2f}x of poll {INTERVALS[0]} s, "
              f"{base - wall:+.1f} s), median work {statistics.median(worked[value]):.2f} s "
              f"for {EPOCHS} x {WORK_S:.1f} s planned")
