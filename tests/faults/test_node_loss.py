"""A worker node removed while a sweep's trials run on it: the sweep finishes and loses nothing.

The sweep CLI runs 3 digits trials (2 at once) against the multi-node cluster. Once the
seed trial's fine-tune has a checkpoint registered by Train, the worker node hosting that
fine-tune's RayTrainWorker is removed (its raylet and every process on it die). The
affected work must go on on the other node, resuming the fine-tune from its checkpoint,
and every Optuna trial must end COMPLETE: nothing in this test fails deterministically,
so a FAIL (like a trial RUNNING or missing) means work was lost.
"""

from __future__ import annotations

import json

import optuna
import pytest

from _faultkit import (
    TINY, cli_sets, kill_group, load_study, log_lines, registered_epoch, start_cli, tune_failures, wait_cli,
    wait_for,
)
from tune.study import FAIL_REASON_ATTR, TUNE_TRIAL_ID_ATTR

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(300)]

NAME, SAMPLES, EPOCHS = "nodeloss", 3, 3
CONFIG = {**TINY, "finetune.epochs": EPOCHS, "finetune.lr": 1.5e-3}
# The re-timing pass at the end is not what this tests (tests/tune/test_sweep.py checks it).
ARGS = ["--name", NAME, "--num-samples", str(SAMPLES), "--max-concurrent", "2", "--no-retime", *cli_sets(CONFIG)]


@pytest.fixture(scope="module")
def node_loss(fault_cluster, tmp_path_factory):
    """Run the sweep, remove the node of its fine-tune worker mid-training; return what happened."""
    fault_cluster.ensure_workers(2)
    results = fault_cluster.results
    train_root = results / "train"
    known = {p.name for p in train_root.glob("finetune-*")}
    log = tmp_path_factory.mktemp("node-loss") / "sweep.log"
    proc = start_cli(fault_cluster, "--results-dir", str(results), *ARGS, log=log)
    try:
        def new_checkpointed_run():
            runs = [p for p in train_root.glob("finetune-*")
                    if p.name not in known and registered_epoch(p) is not None]
            return runs[0] if runs else None

        run = wait_for(new_checkpointed_run, 240, "a registered fine-tune checkpoint", proc)
        node = fault_cluster.node_hosting("RayTrainWorker")
        assert node is not None, "no node hosts the fine-tune's RayTrainWorker"
        trial_actors = len(fault_cluster.processes_on(node, "ImplicitFunc"))
        fault_cluster.cluster.remove_node(node)
        removed = {"checkpoint_epoch": registered_epoch(run), "trial_actors": trial_actors}
        rc = wait_cli(proc, 240)
    finally:
        if proc.poll() is None:
            kill_group(proc)
            proc.wait()
        fault_cluster.ensure_workers(2)  # later tests get their two worker nodes back
    return {"rc": rc, "log": log.read_text(errors="replace"), "run": run.name, **removed,
            "failures": tune_failures(results, NAME)}


def test_sweep_exits_cleanly_after_losing_a_node(node_loss):
    assert node_loss["rc"] == 0, node_loss["log"][-3000:]


def test_every_trial_completes(fault_cluster, node_loss):
    trials = load_study(fault_cluster.results, NAME).trials
    assert len(trials) == SAMPLES
    outcomes = [(t.state.name, t.user_attrs.get(FAIL_REASON_ATTR)) for t in trials]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials), outcomes


def test_optuna_and_tune_hold_the_same_trials(fault_cluster, node_loss):
    optuna_ids = [t.user_attrs.get(TUNE_TRIAL_ID_ATTR) for t in load_study(fault_cluster.results, NAME).trials]
    assert sorted(optuna_ids) == sorted(node_loss["failures"])


def _resume_lines(fault_cluster, run_name: str) -> list[str]:
    found = []
    for path in fault_cluster.ray_tmp.glob("**/logs/train/ray-train-app-worker-*.log"):
        for line in log_lines(path):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("run_name") == run_name and "resuming at epoch" in record.get("message", ""):
                found.append(record["message"])
    return found


def test_interrupted_finetune_resumes_after_its_checkpoint_elsewhere(fault_cluster, node_loss):
    expected = f"finetune: resuming at epoch {node_loss['checkpoint_epoch'] + 2}/{EPOCHS}"
    lines = _resume_lines(fault_cluster, node_loss["run"])
    assert lines and set(lines) == {expected}, lines

