"""One of two DDP workers (gloo, CPU) SIGKILLed mid fine-tune: the group restarts from the last epoch.

The kill is triggered by an observed event, Train's controller registering an epoch
checkpoint (checkpoint_manager_snapshot.json), not by a sleep. Rank 0 alone writes
checkpoints; the restarted group (both ranks) must resume at the next epoch and the
finished run's history must hold every epoch exactly once.
"""

from __future__ import annotations

import re
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest
from _faultkit import log_lines, registered_epoch

from trainables.data import ensure_digits
from trainables.job import TrainJob
from trainables.runner import run_on_ray

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(300)]

EPOCHS = 5  # not 4: worker logs are shared with test_train_worker_kill, which trains 4
FLAT = {"data.train_limit": 256, "data.val_limit": 64, "finetune.method": "head_only", "finetune.epochs": EPOCHS,
        "finetune.lr": 3e-2, "finetune.batch_size": 8, "finetune.workers": 2, "finetune.cpus_per_worker": 0.9}


class KillOneWorker(threading.Thread):
    """SIGKILLs one of the run's two RayTrainWorkers once an epoch checkpoint is registered."""

    def __init__(self, cluster, run_dir: Path):
        super().__init__(daemon=True)
        self.cluster, self.run_dir = cluster, run_dir
        self.killed_pid: int | None = None
        self.epoch: int | None = None
        self.error: str | None = None

    def run(self) -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if registered_epoch(self.run_dir) is not None:
                workers = [p for node in self.cluster.cluster.worker_nodes
                           for p in self.cluster.processes_on(node, "RayTrainWorker")]
                if len(workers) != 2:
                    self.error = f"expected two RayTrainWorkers, found {len(workers)}"
                    return
                workers[-1].send_signal(signal.SIGKILL)
                self.killed_pid = workers[-1].pid
                time.sleep(1.0)  # a report the controller was already handling settles
                self.epoch = registered_epoch(self.run_dir)
                return
            time.sleep(0.1)
        self.error = "no epoch checkpoint appeared"


@pytest.fixture(scope="module")
def killed(fault_cluster):
    import ray

    root = str(ensure_digits(fault_cluster.results / "data" / "digits"))
    name = f"ddp-kill-{uuid.uuid4().hex[:8]}"
    storage = fault_cluster.results / "train"
    ray.init(address=fault_cluster.address, log_to_driver=False)
    try:
        killer = KillOneWorker(fault_cluster, storage / name)
        killer.start()
        _, summary = run_on_ray(TrainJob("finetune", FLAT, root), run_name=name, storage_path=str(storage),
                                max_failures=2)
        killer.join()
    finally:
        ray.shutdown()
    return summary, killer


def test_a_worker_was_killed_after_an_epoch_checkpoint(killed):
    _, killer = killed
    assert killer.error is None, killer.error
    assert killer.killed_pid is not None and 0 <= killer.epoch < EPOCHS - 1


def test_the_run_finishes_with_every_epoch_once(killed):
    summary, _ = killed
    assert [r["epoch"] for r in summary["history"]] == list(range(EPOCHS))
    assert all(r["train_overlap"] == 0 and r["val_images"] == 64 for r in summary["history"])


def test_both_restarted_ranks_resume_at_the_next_epoch(fault_cluster, killed):
    _, killer = killed
    expected = f"finetune: resuming at epoch {killer.epoch + 2}/{EPOCHS}"
    resumed = [p for p in fault_cluster.worker_logs() if any(expected in line for line in log_lines(p))]
    assert len(resumed) == 2, f"{expected!r} in {len(resumed)} worker logs"
    for path in resumed:
        trained = [int(m.group(1)) for line in log_lines(path)
                   if (m := re.search(rf"finetune epoch (\d+)/{EPOCHS}:", line))]
        assert trained == list(range(killer.epoch + 2, EPOCHS + 1))
