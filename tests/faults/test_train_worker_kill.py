"""A Ray Train worker SIGKILLed mid fine-tune resumes from its last epoch checkpoint.

The trial runs through run_trial on the multi-node cluster (training stages on Ray Train).
Once Train's controller has registered an epoch checkpoint (it is listed in the run's
checkpoint_manager_snapshot.json), the RayTrainWorker process is killed; Train's
FailureConfig restarts the worker group, which must log "resuming at epoch N" with N the
epoch after that checkpoint, and never train the checkpointed epochs again. The epoch is
read once the replacement worker exists, i.e. after Train chose the checkpoint to restore.

Waiting for the registration matters: a checkpoint the worker wrote but the controller had
not yet polled dies with the worker (observed: the restart then began at epoch 1).
"""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

import pytest
from _faultkit import TINY, log_lines, registered_epoch
from trainables.trial import TrialContext, run_trial

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(240)]

EPOCHS = 4
CONFIG = {**TINY, "finetune.cpus_per_worker": 0.9, "finetune.epochs": EPOCHS, "finetune.lr": 3e-3}


class WorkerKiller(threading.Thread):
    """Kills the fine-tune's RayTrainWorker once Train has registered an epoch checkpoint."""

    def __init__(self, cluster, train_root: Path, known_runs: set[str]):
        super().__init__(daemon=True)
        self.cluster, self.train_root, self.known_runs = cluster, train_root, known_runs
        self.killed_pid: int | None = None
        self.checkpoint_epoch: int | None = None
        self.error: str | None = None
        self.done = threading.Event()

    def _new_run(self) -> Path | None:
        runs = [p for p in self.train_root.glob("finetune-*") if p.name not in self.known_runs]
        return runs[0] if runs else None

    def _replacement_started(self) -> bool:
        return any(p.pid != self.killed_pid for node in self.cluster.cluster.worker_nodes
                   for p in self.cluster.processes_on(node, "RayTrainWorker"))

    def run(self) -> None:
        deadline = time.monotonic() + 180
        try:
            while not self.done.is_set() and time.monotonic() < deadline:
                run = self._new_run()
                if run is not None and registered_epoch(run) is not None:
                    workers = [p for node in self.cluster.cluster.worker_nodes
                               for p in self.cluster.processes_on(node, "RayTrainWorker")]
                    if len(workers) != 1:
                        self.error = f"expected one RayTrainWorker, found {len(workers)}"
                        return
                    workers[0].send_signal(signal.SIGKILL)
                    self.killed_pid = workers[0].pid
                    # Train restores the new worker group from the checkpoint registered when
                    # it restarts, so read the epoch once the replacement worker exists.
                    while not self._replacement_started():
                        if time.monotonic() > deadline:
                            self.error = "no RayTrainWorker replaced the killed one"
                            return
                        time.sleep(0.1)
                    self.checkpoint_epoch = registered_epoch(run)
                    return
                time.sleep(0.1)
            self.error = "no fine-tune checkpoint appeared"
        finally:
            self.done.set()


@pytest.fixture(scope="module")
def killed_run(fault_cluster):
    """Run one trial on the cluster, killing its fine-tune worker after the first epoch checkpoint."""
    import ray

    ray.init(address=fault_cluster.address, log_to_driver=False)
    try:
        train_root = fault_cluster.results / "train"
        known = {p.name for p in train_root.glob("finetune-*")} if train_root.is_dir() else set()
        killer = WorkerKiller(fault_cluster, train_root, known)
        killer.start()
        metrics = run_trial(CONFIG, TrialContext(results_dir=str(fault_cluster.results), backend="ray",
                                                 show_progress=False))
        killer.done.set()
        killer.join()
    finally:
        ray.shutdown()
    return metrics, killer


def test_worker_was_killed_after_an_epoch_checkpoint(killed_run):
    _, killer = killed_run
    assert killer.error is None, killer.error
    assert killer.killed_pid is not None and 0 <= killer.checkpoint_epoch < EPOCHS - 1


def test_trial_finishes_with_a_fresh_finetune(killed_run):
    metrics, _ = killed_run
    assert metrics["cache_hit_finetune"] is False
    assert 0.0 <= metrics["val_auroc"] <= 1.0


def test_restarted_worker_resumes_at_the_epoch_after_the_checkpoint(fault_cluster, killed_run):
    _, killer = killed_run
    expected = f"finetune: resuming at epoch {killer.checkpoint_epoch + 2}/{EPOCHS}"
    logs = [p for p in fault_cluster.worker_logs() if not p.stem.endswith(f"-{killer.killed_pid}")]
    resumed = [p for p in logs if any(expected in line for line in log_lines(p))]
    assert len(resumed) == 1, f"{expected!r} in {len(resumed)} worker logs"


def test_restarted_worker_does_not_retrain_checkpointed_epochs(fault_cluster, killed_run):
    _, killer = killed_run
    expected = f"finetune: resuming at epoch {killer.checkpoint_epoch + 2}/{EPOCHS}"
    resumed = next(p for p in fault_cluster.worker_logs()
                   if any(expected in line for line in log_lines(p)))
    trained = [int(m.group(1)) for line in log_lines(resumed)
               if (m := re.search(rf"finetune epoch (\d+)/{EPOCHS}:", line))]
    assert trained == list(range(killer.checkpoint_epoch + 2, EPOCHS + 1))


def test_killed_worker_had_trained_the_checkpointed_epochs(fault_cluster, killed_run):
    _, killer = killed_run
    lines = [line for path in fault_cluster.worker_logs() if path.stem.endswith(f"-{killer.killed_pid}")
             for line in log_lines(path)]
    trained = [int(m.group(1)) for line in lines if (m := re.search(rf"finetune epoch (\d+)/{EPOCHS}:", line))]
    assert trained[: killer.checkpoint_epoch + 1] == list(range(1, killer.checkpoint_epoch + 2))
