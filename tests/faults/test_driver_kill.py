"""The cluster path for real: a sweep on two Ray nodes with its results on an S3 API server, its
driver SIGKILLed mid-sweep, then `--resume`, `--export` and what the bucket holds.

The CLI attaches to the multi-node cluster (RAY_ADDRESS) with `--results-dir s3://...?
endpoint_override=...&scheme=http` (the suite's moto server) and an Optuna SQLite file on the
head's disk, as on a cluster: the stage cache, Ray Train runs, Tune's experiment and the reports
all live in the bucket. It runs 4 trials 2 at once and kills itself (the driver runs through
tests/faults/_kill_after_tell.py, which wraps Optuna's tell) right after Optuna is told its first
COMPLETE trial, before Tune's experiment checkpoint records that trial as finished: the crash after
which Tune reruns a
trial Optuna already holds. `--resume` must finish the sweep so that the Optuna study and Tune's
own trial results agree trial for trial: no duplicates, none RUNNING, and the rerun trial
reports the outcome stored the first time (`outcome_replayed`), not a new measurement.

Before the resume the node that measured the told trial is removed from the cluster (the crash
took it too), so the resumed trials run on the other node, which reads the sweep's stages from the
bucket into a scratch folder of its own (trainables.cache). This module
replaced the same scenario on local disk: resume differs there only in the paths Tune is given
(tune.sweep.tune_experiment_path), which tests/tune/test_run_cli.py checks without Ray.
"""

from __future__ import annotations

import io
import json
import re
import signal
import tempfile
from pathlib import Path

import optuna
import pandas as pd
import pyarrow.fs
import pytest

from _faultkit import (
    TINY, cli_sets, kill_group, load_study, start_cli, tune_results, wait_cli,
)
from trainables.cache import StageCache
from trainables.report_keys import NODE_ID_KEY, OUTCOME_KEY_ATTR
from trainables.storage import EPOCHS_DIR, results_location
from tune.study import FAIL_REASON_ATTR, TUNE_TRIAL_ID_ATTR

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(400)]

NAME, SAMPLES = "killed", 4
KILL_AFTER_TELL = str(Path(__file__).with_name("_kill_after_tell.py"))
CONFIG = {**TINY, "finetune.epochs": 2, "finetune.lr": 1e-3}
OBJECTIVES = ("val_auroc", "params", "latency_ms")
EPOCH_LINE = re.compile(r"\s+\w+ \S+ epoch \d+\b")
State = optuna.trial.TrialState


@pytest.fixture(scope="module")
def resumed(fault_cluster, s3_server, tmp_path_factory):
    """Let the driver kill itself after its first tell, resume; return what each run left."""
    fault_cluster.ensure_workers(2)
    logs = tmp_path_factory.mktemp("driver-kill")
    results, storage = s3_server.uri("driver-kill"), f"sqlite:///{logs / 'optuna.db'}"
    proc = start_cli(fault_cluster, "--results-dir", results, "--storage", storage, "--name", NAME,
                     "--num-samples", str(SAMPLES), "--max-concurrent", "2", *cli_sets(CONFIG),
                     log=logs / "first.log", program=KILL_AFTER_TELL)
    try:
        first_rc = proc.wait(timeout=300)
    finally:
        kill_group(proc)  # whatever the driver started dies with it, as in a crash
        proc.wait()
    complete = [t for t in load_study(None, NAME, storage).trials if t.state == State.COMPLETE]
    told = {t.user_attrs[TUNE_TRIAL_ID_ATTR]: t.values for t in complete}
    epochs_before = _epoch_objects(results)
    # The node that measured the told trial goes with the driver: the resume runs every other
    # trial on the remaining node, which has only the bucket to read the sweep's stages from.
    # (Left to Ray, which node runs what is a coin toss: CI once ran every trial on one node.)
    (first_node,) = {t.user_attrs[NODE_ID_KEY] for t in complete}
    lost = next(node for node in fault_cluster.cluster.worker_nodes if node.node_id == first_node)
    (survivor,) = {node.node_id for node in fault_cluster.cluster.worker_nodes} - {first_node}
    fault_cluster.cluster.remove_node(lost)
    try:
        # The re-timing pass at the end is not what this tests (tests/tune/test_sweep.py checks it).
        again = start_cli(fault_cluster, "--results-dir", results, "--resume", NAME, "--no-retime",
                          log=logs / "resume.log")
        rc = wait_cli(again, 300)
    finally:
        fault_cluster.ensure_workers(2)  # later tests get their two worker nodes back
    return {"first_rc": first_rc, "first_log": (logs / "first.log").read_text(errors="replace"),
            "told": told, "rc": rc, "log": (logs / "resume.log").read_text(errors="replace"),
            "epochs_before": epochs_before, "epochs_after": _epoch_objects(results),
            "results": results, "storage": storage, "reports": fault_cluster.results / "results" / NAME,
            "first_node": first_node, "survivor": survivor}


def _epoch_objects(results: str) -> int:
    """Return how many Ray Train epochs the sweep's runs logged in the bucket."""
    location = results_location(results)
    selector = pyarrow.fs.FileSelector(location.path(NAME, EPOCHS_DIR), allow_not_found=True)
    return len(location.fs.get_file_info(selector))


def _read(results: str, *parts: str) -> bytes:
    location = results_location(results)
    with location.fs.open_input_stream(location.path(*parts)) as handle:
        return handle.read()


def _in_process(args: list[str]) -> int:
    """Run `python tune/run.py ARGS` in this process; leave no Ray connection behind for later modules."""
    import ray

    from tune.run import main

    try:
        return main(args)
    finally:
        ray.shutdown()


def _complete(resumed) -> list:
    return [t for t in load_study(None, NAME, resumed["storage"]).trials if t.state == State.COMPLETE]


def test_driver_killed_itself_right_after_the_first_tell(resumed):
    assert resumed["first_rc"] == -signal.SIGKILL, resumed["first_log"][-3000:]
    assert len(resumed["told"]) == 1


def test_resume_exits_cleanly(resumed):
    assert resumed["rc"] == 0, resumed["log"][-3000:]


def test_study_ends_with_num_samples_complete_and_none_running(resumed):
    trials = load_study(None, NAME, resumed["storage"]).trials
    assert sum(t.state == State.COMPLETE for t in trials) == SAMPLES
    assert not [t.number for t in trials if t.state == State.RUNNING]


def test_trials_not_complete_are_failed_with_a_reason(resumed):
    others = [t for t in load_study(None, NAME, resumed["storage"]).trials if t.state != State.COMPLETE]
    assert all(t.state == State.FAIL and t.user_attrs.get(FAIL_REASON_ATTR) for t in others)


def test_no_duplicate_trials(resumed):
    complete = _complete(resumed)
    assert len({t.user_attrs[TUNE_TRIAL_ID_ATTR] for t in complete}) == len(complete)
    assert len({json.dumps(t.params, sort_keys=True) for t in complete}) == len(complete)


def test_optuna_and_tune_agree_trial_for_trial(resumed):
    complete = {t.user_attrs[TUNE_TRIAL_ID_ATTR]: t for t in _complete(resumed)}
    reported = {tid: r for tid, r in tune_results(resumed["results"], NAME).items() if "val_auroc" in r}
    assert sorted(reported) == sorted(complete)
    for tid, trial in complete.items():
        assert trial.values == [reported[tid][name] for name in OBJECTIVES], tid


def test_trial_told_before_the_kill_replays_its_stored_outcome(resumed):
    reported = tune_results(resumed["results"], NAME)
    ((told_id, told_values),) = resumed["told"].items()
    assert reported[told_id]["outcome_replayed"] is True
    assert [reported[told_id][name] for name in OBJECTIVES] == told_values


def test_first_run_console_printed_every_epoch_its_train_runs_logged(resumed):
    # Results on S3: the runs' epochs reach the console through the bucket (trainables.storage).
    printed = [line for line in resumed["first_log"].splitlines() if EPOCH_LINE.match(line)]
    assert resumed["epochs_before"] > 0
    assert len(printed) == resumed["epochs_before"], resumed["first_log"][-3000:]


def test_resume_console_prints_only_epochs_trained_after_the_resume(resumed):
    printed = [line for line in resumed["log"].splitlines() if EPOCH_LINE.match(line)]
    assert len(printed) == resumed["epochs_after"] - resumed["epochs_before"], resumed["log"][-3000:]


def test_trials_ran_on_both_worker_nodes(resumed):
    nodes = {t.user_attrs[NODE_ID_KEY] for t in _complete(resumed)}
    assert nodes == {resumed["first_node"], resumed["survivor"]}


def test_a_fine_tune_computed_on_one_node_is_a_cache_hit_on_the_other(resumed):
    complete = _complete(resumed)
    computed = {t.user_attrs[NODE_ID_KEY] for t in complete if t.user_attrs["cache_hit_finetune"] is False}
    hits = {t.user_attrs[NODE_ID_KEY] for t in complete if t.user_attrs["cache_hit_finetune"] is True}
    # The fine-tune was trained before the kill (by the told trial, or by the one killed beside it).
    assert computed <= {resumed["first_node"]} and resumed["survivor"] in hits, (computed, hits)
    # ...and the survivor read it from the bucket: its own scratch folder holds a downloaded copy.
    other = resumed["survivor"]
    copies = Path(tempfile.gettempdir()).glob(f"vitsweep-cache/*/node-{other[:12]}/**/cache/finetune/*/_MANIFEST.json")
    assert list(copies), f"no scratch copy of a fine-tune on node {other}"


def test_every_trials_outcome_is_read_back_from_the_bucket(resumed):
    cache = StageCache(resumed["results"])
    for trial in _complete(resumed):
        entry = cache.get("outcome", trial.user_attrs[OUTCOME_KEY_ATTR])
        metrics = json.loads((entry / "metrics.json").read_text())
        assert [metrics[name] for name in OBJECTIVES] == trial.values, trial.number


def test_reports_in_the_bucket_equal_the_drivers(resumed):
    for name in ("pareto.csv", "pareto.md"):
        assert _read(resumed["results"], NAME, name) == (resumed["reports"] / name).read_bytes(), name
    table = pd.read_parquet(io.BytesIO(_read(resumed["results"], NAME, "trials.parquet")))
    assert sorted(table.loc[table["state"] == "COMPLETE", "number"]) == sorted(t.number for t in _complete(resumed))


def test_export_reads_the_sweep_from_the_bucket_through_aws_endpoint_url(resumed, s3_server, tmp_path):
    from compress import load_compressed
    plain = f"s3://{s3_server.bucket}/driver-kill"  # the endpoint comes from AWS_ENDPOINT_URL
    rc = _in_process(["--export", NAME, "--trial", "reference", "--results-dir", plain,
                      "--storage", resumed["storage"], "--out", str(tmp_path / "ref")])
    reference = next(t for t in _complete(resumed) if t.number == 0)
    model = load_compressed(tmp_path / "ref")
    assert rc == 0 and sum(p.numel() for p in model.parameters()) == reference.values[1]


def test_report_retimes_and_scores_the_front_on_test_from_the_bucket(resumed, fault_cluster, monkeypatch):
    monkeypatch.chdir(fault_cluster.results)  # the driver's copy of the reports lands in ./results/<name>/
    rc = _in_process(["--report", NAME, "--retime", "--retime-rounds", "3", "--final-eval",
                      "--results-dir", resumed["results"], "--storage", resumed["storage"]])
    final = pd.read_csv(io.BytesIO(_read(resumed["results"], NAME, "final_eval.csv")))
    retimed = pd.read_csv(io.BytesIO(_read(resumed["results"], NAME, "retime.csv")))
    front = pd.read_csv(io.BytesIO(_read(resumed["results"], NAME, "pareto.csv")))
    # final_eval scores the configs the re-timing pass timed (the reference and the front by the study's
    # values); pareto.csv's front is judged on the re-timed latencies, so a point the pass moved off it
    # is scored on test but not listed there (CI once saw exactly that).
    assert rc == 0 and 0 in set(final["number"]) and set(final["number"]) == set(retimed["number"])
    assert final["test_auroc"].between(0, 1).all() and set(front["number"]) <= set(retimed["number"])
