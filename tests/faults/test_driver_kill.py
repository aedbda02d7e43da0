"""The sweep driver SIGKILLed mid-sweep on the multi-node cluster, then `--resume`.

The CLI attaches to the cluster (RAY_ADDRESS), runs 4 trials 2 at once and kills itself
(test hook tune.study.KILL_AFTER_TELL_ENV) right after Optuna is told its first COMPLETE
trial, before Tune's experiment checkpoint records that trial as finished: the crash after
which Tune reruns a trial Optuna already holds. The cluster lives on, as it would when a
head-node job dies. `--resume` must finish the sweep so that the Optuna study and Tune's
own trial results agree trial for trial: no duplicates, none RUNNING, and the rerun trial
reports the outcome stored the first time (`outcome_replayed`), not a new measurement. Its
console prints only what happens after the resume, not the first run's epochs again.
"""

from __future__ import annotations

import json
import re
import signal

import optuna
import pytest

from _faultkit import (
    TINY, cli_sets, kill_group, load_study, log_lines, start_cli, tune_results, wait_cli,
)
from trainables.storage import epoch_files
from tune.study import FAIL_REASON_ATTR, KILL_AFTER_TELL_ENV, TUNE_TRIAL_ID_ATTR

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(300)]

NAME, SAMPLES = "killed", 4
# The configuration of test_cache_writer_kill: its fine-tune is a cache hit when that ran first.
CONFIG = {**TINY, "finetune.epochs": 2, "finetune.lr": 1e-3}
OBJECTIVES = ("val_auroc", "params", "latency_ms")
State = optuna.trial.TrialState


@pytest.fixture(scope="module")
def resumed(fault_cluster, tmp_path_factory):
    """Let the driver kill itself after its first tell, resume; return what each run left."""
    fault_cluster.ensure_workers(2)
    results, logs = fault_cluster.results, tmp_path_factory.mktemp("driver-kill")
    proc = start_cli(fault_cluster, "--results-dir", str(results), "--name", NAME, "--num-samples",
                     str(SAMPLES), "--max-concurrent", "2", *cli_sets(CONFIG), log=logs / "first.log",
                     env={KILL_AFTER_TELL_ENV: "1"})
    try:
        first_rc = proc.wait(timeout=240)
    finally:
        kill_group(proc)  # whatever the driver started dies with it, as in a crash
        proc.wait()
    told = {t.user_attrs[TUNE_TRIAL_ID_ATTR]: t.values for t in load_study(results, NAME).trials
            if t.state == State.COMPLETE}
    epochs_before = _epoch_records(results)
    # The re-timing pass at the end is not what this tests (tests/tune/test_sweep.py checks it).
    again = start_cli(fault_cluster, "--results-dir", str(results), "--resume", NAME, "--no-retime",
                      log=logs / "resume.log")
    rc = wait_cli(again, 240)
    return {"first_rc": first_rc, "first_log": (logs / "first.log").read_text(errors="replace"),
            "told": told, "rc": rc, "log": (logs / "resume.log").read_text(errors="replace"),
            "epochs_before": epochs_before, "epochs_after": _epoch_records(results)}


def _epoch_records(results) -> int:
    """Return how many epochs all Ray Train runs under the results root have logged."""
    return sum(len(log_lines(path)) for path in epoch_files(results))


def test_driver_killed_itself_right_after_the_first_tell(resumed):
    assert resumed["first_rc"] == -signal.SIGKILL, resumed["first_log"][-3000:]
    assert len(resumed["told"]) == 1


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


def test_trial_told_before_the_kill_replays_its_stored_outcome(fault_cluster, resumed):
    reported = tune_results(fault_cluster.results, NAME)
    ((told_id, told_values),) = resumed["told"].items()
    assert reported[told_id]["outcome_replayed"] is True
    assert [reported[told_id][name] for name in OBJECTIVES] == told_values


def test_resume_console_prints_only_epochs_trained_after_the_resume(resumed):
    # Every Ray Train run of the shared results root logged its epochs before the resume (at least
    # test_ddp_worker_kill's fine-tune: the fault modules run in file order); a resume that printed
    # them again (as it once did) would show more lines than it trained.
    assert resumed["epochs_before"] > 0
    printed = [line for line in resumed["log"].splitlines() if re.match(r"\s+\w+ \S+ epoch \d+\b", line)]
    assert len(printed) == resumed["epochs_after"] - resumed["epochs_before"], resumed["log"][-3000:]
