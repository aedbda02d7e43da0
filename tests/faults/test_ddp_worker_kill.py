"""One of a trial's two DDP fine-tune workers SIGKILLed mid-run: the group resumes at the next epoch.

The trial runs through run_trial on the multi-node cluster (training stages on Ray Train,
two gloo workers on CPU). Once Train's controller has registered an epoch checkpoint (it is
listed in the run's checkpoint_manager_snapshot.json), one RayTrainWorker process is killed;
Train's FailureConfig restarts the worker group, both of whose ranks must log "resuming at
epoch N" with N the epoch after that checkpoint and never train the checkpointed epochs
again, and the trial must finish with a history holding every epoch once. The epoch is read
once a replacement worker exists, i.e. after Train chose the checkpoint to restore.

Waiting for the registration matters: a checkpoint the worker wrote but the controller had
not yet polled dies with the worker (observed: the restart then began at epoch 1). The kill
is triggered by that observed event, never by a sleep.

One scenario covers both what a single worker's restart promises (the trial finishes, the
checkpointed epochs are not trained again) and what a DDP group's does (every rank resumes,
the ranks' shards stay disjoint): one Ray Train run on the cluster instead of two.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from pathlib import Path

import pytest
from _faultkit import TINY, log_lines, registered_epoch

from trainables.cache import StageCache
from trainables.trial import TrialContext, run_trial

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(300)]

EPOCHS = 5  # no other fault scenario trains 5 epochs: the worker logs of all of them are searched
CONFIG = {**TINY, "finetune.workers": 2, "finetune.cpus_per_worker": 0.9, "finetune.epochs": EPOCHS,
          "finetune.lr": 3e-3}


class WorkerKiller(threading.Thread):
    """Kills one of the fine-tune's two RayTrainWorkers once Train has registered an epoch checkpoint."""

    def __init__(self, cluster, train_root: Path, known_runs: set[str]):
        super().__init__(daemon=True)
        self.cluster, self.train_root, self.known_runs = cluster, train_root, known_runs
        self.first_pids: set[int] = set()
        self.killed_pid: int | None = None
        self.checkpoint_epoch: int | None = None
        self.error: str | None = None
        self.done = threading.Event()

    def _new_run(self) -> Path | None:
        runs = [p for p in self.train_root.glob("finetune-*") if p.name not in self.known_runs]
        return runs[0] if runs else None

    def _workers(self) -> list:
        return [p for node in self.cluster.cluster.worker_nodes
                for p in self.cluster.processes_on(node, "RayTrainWorker")]

    def run(self) -> None:
        deadline = time.monotonic() + 200
        try:
            while not self.done.is_set() and time.monotonic() < deadline:
                run = self._new_run()
                if run is not None and registered_epoch(run) is not None:
                    workers = self._workers()
                    if len(workers) != 2:
                        self.error = f"expected two RayTrainWorkers, found {len(workers)}"
                        return
                    self.first_pids = {p.pid for p in workers}
                    workers[-1].send_signal(signal.SIGKILL)
                    self.killed_pid = workers[-1].pid
                    # Train restores the new worker group from the checkpoint registered when
                    # it restarts, so read the epoch once a replacement worker exists.
                    while not any(p.pid not in self.first_pids for p in self._workers()):
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
    """Run one trial on the cluster, killing a fine-tune worker after the first epoch checkpoint."""
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
    # The fine-tune's cache entry (cache:finetune/<key>/...) keeps the run's history.json.
    key = metrics["model_ref_finetune"].split("/")[1]
    entry = StageCache(fault_cluster.results).get("finetune", key)
    history = json.loads((entry / "history.json").read_text())["history"]
    return metrics, killer, history


def _resumed_logs(fault_cluster, killer) -> list[Path]:
    expected = f"finetune: resuming at epoch {killer.checkpoint_epoch + 2}/{EPOCHS}"
    return [p for p in fault_cluster.worker_logs() if any(expected in line for line in log_lines(p))]


def _trained_epochs(lines: list[str]) -> list[int]:
    return [int(m.group(1)) for line in lines if (m := re.search(rf"finetune epoch (\d+)/{EPOCHS}:", line))]


def test_worker_was_killed_after_an_epoch_checkpoint(killed_run):
    _, killer, _ = killed_run
    assert killer.error is None, killer.error
    assert killer.killed_pid is not None and 0 <= killer.checkpoint_epoch < EPOCHS - 1


def test_trial_finishes_with_a_fresh_finetune(killed_run):
    metrics, _, _ = killed_run
    assert metrics["cache_hit_finetune"] is False
    assert 0.0 <= metrics["val_auroc"] <= 1.0


def test_the_finetune_history_holds_every_epoch_once_on_disjoint_shards(killed_run):
    _, _, history = killed_run
    assert [record["epoch"] for record in history] == list(range(EPOCHS))
    assert all(record["train_overlap"] == 0 and record["val_images"] == 64 for record in history)


def test_both_restarted_ranks_resume_at_the_epoch_after_the_checkpoint(fault_cluster, killed_run):
    _, killer, _ = killed_run
    resumed = _resumed_logs(fault_cluster, killer)
    assert len(resumed) == 2, f"resuming at epoch {killer.checkpoint_epoch + 2} in {len(resumed)} worker logs"
    assert not any(p.stem.endswith(f"-{pid}") for p in resumed for pid in killer.first_pids)


def test_restarted_ranks_do_not_retrain_checkpointed_epochs(fault_cluster, killed_run):
    _, killer, _ = killed_run
    for path in _resumed_logs(fault_cluster, killer):
        assert _trained_epochs(log_lines(path)) == list(range(killer.checkpoint_epoch + 2, EPOCHS + 1)), path


def test_killed_worker_had_trained_the_checkpointed_epochs(fault_cluster, killed_run):
    _, killer, _ = killed_run
    lines = [line for path in fault_cluster.worker_logs() if path.stem.endswith(f"-{killer.killed_pid}")
             for line in log_lines(path)]
    trained = _trained_epochs(lines)
    assert trained[: killer.checkpoint_epoch + 1] == list(range(1, killer.checkpoint_epoch + 2))
