"""The sweep driver SIGKILLed mid-sweep on the multi-node cluster, then `--resume`.

The CLI attaches to the cluster (RAY_ADDRESS), runs 4 trials 2 at once and is killed with
its whole process group once one trial is COMPLETE in Optuna; the cluster lives on, as it
would when a head-node job dies. `--resume` must finish the sweep so that the Optuna study
and Tune's own trial results agree trial for trial: no duplicates, none RUNNING.
"""

from __future__ import annotations

import json

import optuna
import pytest

from _faultkit import (
    TINY, cli_sets, count_complete, kill_group, load_study, start_cli, tune_results, wait_cli,
    wait_for,
)
from tune.study import FAIL_REASON_ATTR, TUNE_TRIAL_ID_ATTR

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(300)]

NAME, SAMPLES = "killed", 4
# The configuration of test_cache_writer_kill: its fine-tune is a cache hit when that ran first.
CONFIG = {**TINY, "finetune.epochs": 2, "finetune.lr": 1e-3}
OBJECTIVES = ("val_auroc", "params", "latency_ms")
State = optuna.trial.TrialState


@pytest.fixture(scope="module")
def resumed(fault_cluster, tmp_path_factory):
    """Kill the driver after its first COMPLETE trial, resume; return counts and the resume log."""
    fault_cluster.ensure_workers(2)
    results, logs = fault_cluster.results, tmp_path_factory.mktemp("driver-kill")
    proc = start_cli(fault_cluster, "--results-dir", str(results), "--name", NAME, "--num-samples",
                     str(SAMPLES), "--max-concurrent", "2", *cli_sets(CONFIG), log=logs / "first.log")
    try:
        wait_for(lambda: count_complete(results / NAME / "optuna.db") >= 1, 240,
                 "the first COMPLETE trial", proc)
    finally:
        kill_group(proc)  # the driver and everything in its group, as a crash would
        proc.wait()
    done_before = count_complete(results / NAME / "optuna.db")
    again = start_cli(fault_cluster, "--results-dir", str(results), "--resume", NAME, log=logs / "resume.log")
    rc = wait_cli(again, 240)
    return {"done_before": done_before, "rc": rc, "log": (logs / "resume.log").read_text(errors="replace")}


def test_driver_was_killed_mid_sweep(resumed):
    assert 1 <= resumed["done_before"] < SAMPLES


def test_resume_exits_cleanly(resumed):
    assert resumed["rc"] == 0, resumed["log"][-3000:]


def test_study_ends_with_num_samples_complete_and_none_running(fault_cluster, resumed):
    trials = load_study(fault_cluster.results, NAME).trials
    assert sum(t.state == State.COMPLETE for t in trials) == SAMPLES
    assert not [t.number for t in trials if t.state == State.RUNNING]


def test_trials_not_complete_are_failed_with_a_reason(fault_cluster, resumed):
    others = [t for t in load_study(fault_cluster.results, NAME).trials if t.state != State.COMPLETE]
    assert all(t.state == State.FAIL and t.user_attrs.get(FAIL_REASON_ATTR) for t in others)


def test_no_duplicate_trials(fault_cluster, resumed):
    complete = [t for t in load_study(fault_cluster.results, NAME).trials if t.state == State.COMPLETE]
    assert len({t.user_attrs[TUNE_TRIAL_ID_ATTR] for t in complete}) == len(complete)
    assert len({json.dumps(t.params, sort_keys=True) for t in complete}) == len(complete)


def test_optuna_and_tune_agree_trial_for_trial(fault_cluster, resumed):
    complete = {t.user_attrs[TUNE_TRIAL_ID_ATTR]: t for t in load_study(fault_cluster.results, NAME).trials
                if t.state == State.COMPLETE}
    reported = {tid: r for tid, r in tune_results(fault_cluster.results, NAME).items() if "val_auroc" in r}
    assert sorted(reported) == sorted(complete)
    for tid, trial in complete.items():
        assert trial.values == [reported[tid][name] for name in OBJECTIVES], tid
