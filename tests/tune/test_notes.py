"""The answer where the user looks: --report on a sweep from before recommendations, read back through
optuna-dashboard's notes; --export --trial recommended; --margin/--prefer errors before any work."""

import warnings

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna_dashboard import get_note, save_note
from sklearn.metrics import roc_auc_score

from trainables.evaluate.evaluation import Predictions
from tune.notes import BEGIN, END, replace_section
from tune.report import summary
from tune.report.export import ExportError, find_trial
from tune.run import main as run_main
from tune.study import make_storage
from tune.sweep import SweepSettings, write_settings

optuna.logging.set_verbosity(optuna.logging.WARNING)

OBJECTIVES = (("val_auroc", "max"), ("params", "min"), ("latency_ms", "min"))
NAME = "before"
USER_NOTE = "Written by hand in the dashboard: keep it."


def _scores(n=135, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(n, int), np.zeros(n, int)]
    return labels, 1 / (1 + np.exp(-np.r_[rng.normal(2, 1, n), rng.normal(0, 1, n)]))


def _drop(labels, scores, positives, negatives_above):
    """Return `scores` with the `positives` strongest positives moved just under `negatives_above` negatives."""
    moved = scores.copy()
    strongest = np.flatnonzero(labels == 1)[np.argsort(-scores[labels == 1])][:positives]
    moved[strongest] = np.sort(scores[labels == 0])[-negatives_above] - 1e-9
    return moved


@pytest.fixture
def old_sweep(tmp_path, monkeypatch):
    """A finished sweep as written before recommendations: reference 0; 1 drops AUROC by 0.001 (inside the
    default margin) at half the size; 2 drops it by 0.027 at a third; 3 is dominated. Its study has a
    user's own note."""
    labels, ref = _scores()
    scores = {0: ref, 1: _drop(labels, ref, 1, 18), 2: _drop(labels, ref, 5, 100)}
    settings = SweepSettings(name=NAME, results_dir=str(tmp_path), storage_url=None, preset="digits",
                             space="default", sampler="tpe", seed=0, objectives=OBJECTIVES, num_samples=3,
                             max_concurrent=1, trial_resources={"cpu": 1}, max_failures=0, base={})
    write_settings(settings)
    study = optuna.create_study(study_name=NAME, storage=make_storage(None, tmp_path, NAME),
                                directions=["maximize", "minimize", "minimize"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([name for name, _ in OBJECTIVES])
    scores[3] = scores[2]  # dominated by 2: as accurate, larger, slower
    for number, (params, latency) in enumerate([(1000.0, 2.0), (500.0, 1.5), (300.0, 1.0), (800.0, 1.8)]):
        study.add_trial(optuna.trial.create_trial(
            values=[roc_auc_score(labels, scores[number]), params, latency],
            user_attrs={"latency_ms_lo": latency * 0.98, "latency_ms_hi": latency * 1.02},
            system_attrs={"fixed_params": {}} if number == 0 else {}))
    save_note(study, USER_NOTE)
    (settings.local_dir / "pareto.md").write_text("# Pareto front\n\nNone of 2 front points dominates ...\n")
    monkeypatch.setattr(summary, "predictions_loader",
                        lambda _: lambda row: Predictions(labels, scores[int(row["number"])]))
    return settings


def _report(settings, *extra):
    return run_main(["--report", NAME, "--results-dir", settings.results_dir, *extra])


def _study(settings):
    return optuna.load_study(study_name=NAME, storage=make_storage(None, settings.results_dir, NAME))


def _trial_note(study, number):
    return get_note(optuna.trial.Trial(study, study.trials[number]._trial_id))


def test_report_on_a_sweep_from_before_opens_with_the_recommendation_above_the_dominance_line(old_sweep):
    assert _report(old_sweep) == 0
    lines = (old_sweep.local_dir / "pareto.md").read_text().splitlines()
    assert lines[2].startswith("Recommended: trial 1: non-inferior on val_auroc -0.001")
    assert lines[4].startswith("None of 2 front points dominates the reference (trial 0)")
    table = pd.read_csv(old_sweep.local_dir / "pareto.csv").set_index(["role", "number"])
    assert table.loc[("front", 1), "noninferior_val_auroc"] and not table.loc[("front", 2), "noninferior_val_auroc"]
    # The reference (best AUROC) is on the front too, and the recommendation is not it.
    assert table["recommended"].tolist() == [False, False, True, False]


def test_the_study_note_holds_the_answer_and_keeps_the_users_own_note(old_sweep):
    _report(old_sweep)
    note = get_note(_study(old_sweep))
    answer = (old_sweep.local_dir / "answer.md").read_text()
    assert note.startswith(BEGIN) and answer.strip() in note and note.rstrip().endswith(USER_NOTE)
    assert "Recommended: trial 1" in note and "None of 2 front points" in note
    assert "| role | number | recommended | val_auroc |" in note


def test_front_points_are_marked_on_their_trials_and_the_recommended_one_first(old_sweep):
    _report(old_sweep)
    study = _study(old_sweep)
    assert "**Recommended.** Recommended: trial 1" in _trial_note(study, 1)
    assert _trial_note(study, 2).startswith(f"{BEGIN}\nOn the Pareto front")
    assert "val_auroc worse, not non-inferior" in _trial_note(study, 2)
    assert _trial_note(study, 0).startswith(f"{BEGIN}\nThe reference the last report's verdicts compare with")
    assert (study.user_attrs["front_trials"], study.user_attrs["recommended_trial"]) == ([0, 1, 2], 1)


def test_a_tighter_margin_reanswers_and_takes_the_mark_away(old_sweep):
    _report(old_sweep)
    assert _report(old_sweep, "--margin", "val_auroc=0.001") == 0
    study = _study(old_sweep)
    assert (old_sweep.local_dir / "pareto.md").read_text().splitlines()[2].startswith(
        "No recommendation: none of 2 front points")
    assert study.user_attrs["recommended_trial"] is None and "Recommended" not in _trial_note(study, 1)
    with pytest.raises(ExportError, match="has no recommended point: No recommendation"):
        find_trial(study, old_sweep, "recommended")


def test_export_takes_the_recommended_trial_of_the_last_report(old_sweep):
    with pytest.raises(ExportError, match="records no recommendation .* --report before first"):
        find_trial(_study(old_sweep), old_sweep, "recommended")
    _report(old_sweep, "--prefer", "latency_ms")
    trial, role, on_front = find_trial(_study(old_sweep), old_sweep, "recommended")
    assert (trial.number, role, on_front) == (1, "front", True)


def test_replace_section_swaps_only_its_own_part():
    note = replace_section("mine", "v1")
    assert note == f"{BEGIN}\nv1\n{END}\n\nmine\n"
    assert replace_section(note, "v2") == f"{BEGIN}\nv2\n{END}\n\nmine\n"
    assert replace_section(note, "") == "mine\n"


@pytest.mark.parametrize("args, message", [
    (["--margin", "val_auprc=0.01"], "--margin val_auprc=0.01: 'val_auprc' is not a quality objective"),
    (["--margin", "val_auroc=2"], "--margin val_auroc=2: the margin must be a number in [0, 1)"),
    (["--prefer", "val_auroc"], "--prefer val_auroc: not a cost objective of this sweep"),
])
def test_a_bad_margin_or_prefer_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as caught:
        run_main(["--results-dir", str(tmp_path), "--name", "new", *args])
    assert caught.value.code == 2 and message in capsys.readouterr().err.splitlines()[-1]
    assert not (tmp_path / "new").exists()


def test_margin_with_export_exits_2(capsys):
    with pytest.raises(SystemExit) as caught:
        run_main(["--export", "x", "--trial", "recommended", "--margin", "val_auroc=0.01"])
    assert caught.value.code == 2 and "--margin: only valid with a sweep" in capsys.readouterr().err


def test_a_point_an_earlier_report_marked_loses_its_mark_when_off_the_front(old_sweep):
    study = _study(old_sweep)
    handle = optuna.trial.Trial(study, study.trials[3]._trial_id)
    save_note(handle, replace_section("", "On the Pareto front of the last report; ..."))
    study.set_user_attr("front_trials", [3])
    _report(old_sweep)
    assert _trial_note(_study(old_sweep), 3) == ""


def test_the_wandb_pareto_run_gets_the_verdict_table_and_the_recommendation(old_sweep, monkeypatch):
    import sys
    import types

    from tune.callbacks import log_front_to_wandb
    from tune.report.reports import verdict_table

    logged, summary = {}, {}
    run = types.SimpleNamespace(log=logged.update, summary=summary, finish=lambda: None)
    fake = types.SimpleNamespace(init=lambda **kwargs: run, Table=lambda dataframe: dataframe)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    _report(old_sweep)
    front = pd.read_csv(old_sweep.local_dir / "pareto.csv")
    log_front_to_wandb(front, NAME, old_sweep.local_dir, verdicts=verdict_table(front, OBJECTIVES),
                       answer=(old_sweep.local_dir / "answer.md").read_text())
    assert logged["verdicts"]["recommended"].tolist() == ["", "", "yes", ""]
    assert summary["recommendation"].startswith("Recommended: trial 1")
    assert summary["dominance"].startswith("None of 2 front points")


def test_a_report_with_a_budget_reanswers_and_marks_the_trials_outside_it(old_sweep):
    _report(old_sweep)
    assert _report(old_sweep, "--budget", "params<=600") == 0
    lines = (old_sweep.local_dir / "pareto.md").read_text().splitlines()
    assert lines[2].startswith("Recommended: trial 1:") and "within the budget params<=600" in lines[2]
    assert "Budget params<=600 (--budget): 2 of 4 complete trials within it" in (old_sweep.local_dir / "pareto.md").read_text()
    table = pd.read_csv(old_sweep.local_dir / "pareto.csv")
    assert table["feasible"].tolist() == [False, False, True, True]
    trials = pd.read_parquet(old_sweep.local_dir / "trials.parquet").set_index("number")
    assert trials["feasible"].tolist() == [False, True, True, False]
    study = _study(old_sweep)
    assert study.user_attrs["infeasible_trials"] == [0, 3] and study.user_attrs["budget"] == "params<=600"
    assert "Outside the budget params<=600 of the last report: params 800 > 600." in _trial_note(study, 3)
    assert _trial_note(study, 0).rstrip().endswith("params 1000 > 600.\n" + END)
    # A budget that only the point beyond the AUROC margin meets: no recommendation, and why.
    assert _report(old_sweep, "--budget", "params<=400") == 0
    line = (old_sweep.local_dir / "pareto.md").read_text().splitlines()[2]
    assert line.startswith("No recommendation: none of 2 front points") and "outside the budget (params 500 > 400)" in line
    # The report-time budget is not saved: the next plain report has none, and the marks go.
    assert _report(old_sweep) == 0
    assert "feasible" not in pd.read_csv(old_sweep.local_dir / "pareto.csv").columns
    assert _trial_note(_study(old_sweep), 3) == "" and _study(old_sweep).user_attrs["infeasible_trials"] == []


def test_a_report_budget_on_a_metric_the_trials_did_not_record_exits_2(old_sweep, capsys):
    with pytest.raises(SystemExit) as caught:
        _report(old_sweep, "--budget", "gflops<=1")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert caught.value.code == 2 and "--budget: the trials of sweep 'before' did not record gflops" in line
