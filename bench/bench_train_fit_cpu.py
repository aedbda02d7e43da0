"""Where the CPU of one short Ray Train run goes: CPU seconds per process, sampled with psutil.

One warm-up run, then one measured one-worker TorchTrainer run whose worker imports
trainables.runner (as a stage's worker does) and reports once. Printed: the run's wall time
split into (fit() to the worker's loop, the loop's imports, the report to fit()'s return), then
every process that used CPU meanwhile, by title, and the total. On a 2-core machine the total
bounds how fast the run can go whatever the scheduling.

    python bench/bench_train_fit_cpu.py
"""
import os
import tempfile
import threading
import time

import psutil
import ray
import ray.train
from ray.train.torch import TorchTrainer

from trainables.runner import set_train_poll_default

seen: dict[int, tuple[str, float]] = {}
stop = threading.Event()


def loop(config):
    start = time.time()
    import trainables.runner  # noqa: F401  (what a stage's worker imports)

    imported = time.time()
    ray.train.report({"epoch": 0})
    with open(config["times"], "w") as handle:
        handle.write(f"{start} {imported} {time.time()}")


def sample() -> None:
    while not stop.is_set():
        for proc in psutil.process_iter(["pid", "cmdline", "cpu_times"]):
            try:
                times = proc.info["cpu_times"]
                seen[proc.info["pid"]] = (" ".join(proc.info["cmdline"] or ())[:60], times.user + times.system)
            except (TypeError, psutil.Error):
                pass
        time.sleep(0.1)


def fit(storage: str, name: str) -> str:
    times = os.path.join(storage, f"{name}.times")
    TorchTrainer(loop, train_loop_config={"times": times}, scaling_config=ray.train.ScalingConfig(num_workers=1),
                 run_config=ray.train.RunConfig(name=name, storage_path=storage)).fit()
    return times


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    set_train_poll_default()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    time.sleep(3)
    with tempfile.TemporaryDirectory() as storage:
        fit(storage, "warm-up")
        time.sleep(2)
        threading.Thread(target=sample, daemon=True).start()
        time.sleep(0.5)
        before = dict(seen)
        start = time.time()
        times = fit(storage, "measured")
        end = time.time()
        time.sleep(0.5)
        stop.set()
        loop_start, imported, reported = map(float, open(times).read().split())
    ray.shutdown()
    print(f"fit {end - start:.2f} s: to the worker's loop {loop_start - start:.2f} s, its imports "
          f"{imported - loop_start:.2f} s, report to return {end - reported:.2f} s")
    total = 0.0
    used = {pid: cpu - before.get(pid, ("", 0.0))[1] for pid, (_, cpu) in seen.items()}
    for pid, cpu in sorted(used.items(), key=lambda item: -item[1]):
        if cpu > 0.05:
            total += cpu
            print(f"{cpu:6.2f} s CPU  {'new' if pid not in before else 'old'}  {seen[pid][0] or '(no command line)'}")
    print(f"total {total:.2f} s CPU")
