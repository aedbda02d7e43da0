import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
import warnings

import optuna
import pytest

from _dashboard import brute_force_front, start_dashboard
from tune.study import default_storage_url, make_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)

# Each test queries an optuna-dashboard process the module starts.
pytestmark = pytest.mark.slow

METRICS = ["val_auroc", "params", "latency_ms"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    study = optuna.create_study(
        storage=make_storage(None, results, "dash"),
        study_name="dash",
        directions=["maximize", "minimize", "minimize"],
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(METRICS)
    # Trial 2 is dominated by trial 0 (lower AUROC, as many parameters, slower); 3 fails.
    for values in ([0.9, 2e6, 6.0], [0.8, 1e6, 5.0], [0.7, 2e6, 7.0], None):
        trial = study.ask()
        tau = trial.suggest_float("compress.tau_heads", 0.5, 1.0)
        trial.set_user_attr("val_auprc", tau / 2)
        if values is None:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, values)
    return default_storage_url(results, "dash")


@pytest.fixture(scope="module")
def dashboard(finished_sweep):
    port = _free_port()
    proc = start_dashboard(finished_sweep, port)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                _get_json(f"{base}/api/meta")
                break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None:
                    pytest.fail(f"optuna-dashboard exited: {proc.stderr.read().decode()[-2000:]}")
                if time.monotonic() > deadline:
                    pytest.fail("optuna-dashboard did not answer within 60 s")
                time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _study_id(base: str) -> int:
    (summary,) = _get_json(f"{base}/api/studies")["study_summaries"]
    return summary["study_id"]


def test_dashboard_lists_the_study_with_its_directions(dashboard):
    (summary,) = _get_json(f"{dashboard}/api/studies")["study_summaries"]
    assert summary["study_name"] == "dash"
    assert summary["directions"] == ["maximize", "minimize", "minimize"]


def test_dashboard_labels_objectives_with_metric_names(dashboard):
    detail = _get_json(f"{dashboard}/api/studies/{_study_id(dashboard)}")
    assert detail["objective_names"] == METRICS


def test_dashboard_serves_every_trial_with_state_and_user_attrs(dashboard):
    detail = _get_json(f"{dashboard}/api/studies/{_study_id(dashboard)}")
    states = [t["state"] for t in sorted(detail["trials"], key=lambda t: t["number"])]
    assert states == ["Complete", "Complete", "Complete", "Fail"]
    first = detail["trials"][0]
    assert len(first["values"]) == 3
    assert {a["key"] for a in first["user_attrs"]} == {"val_auprc"}


def test_dashboard_pareto_front_is_the_brute_force_front(dashboard, finished_sweep):
    detail = _get_json(f"{dashboard}/api/studies/{_study_id(dashboard)}")
    study = optuna.load_study(study_name="dash", storage=finished_sweep)
    assert brute_force_front(study) == {0, 1}
    assert {t["number"] for t in detail["best_trials"]} == brute_force_front(study)


def test_dashboard_shows_the_reports_answer_in_the_study_note_and_marks_the_recommended_trial(dashboard,
                                                                                               finished_sweep):
    import pandas as pd

    from tune.notes import publish_answer

    study = optuna.load_study(study_name="dash", storage=finished_sweep)
    table = pd.DataFrame({"role": ["reference", "front", "front"], "number": [0, 0, 1],
                          "recommended": [False, False, True], "verdict_val_auroc": ["reference", "tie", "tie"]})
    publish_answer(study, "Recommended: trial 1: the answer.\n\nNone of 1 front points dominates ...", table,
                   [("val_auroc", "max")])
    detail = _get_json(f"{dashboard}/api/studies/{_study_id(dashboard)}")
    assert "Recommended: trial 1: the answer." in detail["note"]["body"]
    notes = {t["number"]: t["note"]["body"] for t in detail["trials"]}
    assert "**Recommended.**" in notes[1] and "The reference" in notes[0] and notes[2] == ""
