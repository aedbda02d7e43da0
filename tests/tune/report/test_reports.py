import math
import warnings

import numpy as np
import optuna
import pandas as pd
import pytest

from tune.report.reports import (
    compute_report,
    front_table,
    hypervolume,
    hypervolume_history,
    hypervolume_reference_point,
    pareto_front,
    reference_row,
    trials_frame,
    write_reports,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

OBJECTIVES = [("auroc", "max"), ("params", "min")]


def _table(rows):
    return pd.DataFrame(rows, columns=["number", "auroc", "params"])


def test_front_keeps_exactly_the_non_dominated_rows_with_max_min_mix():
    df = _table([
        (0, 0.90, 100),  # front: best auroc
        (1, 0.80, 50),   # front
        (2, 0.70, 60),   # dominated by 1
        (3, 0.60, 10),   # front: fewest params
        (4, 0.90, 120),  # dominated by 0 (same auroc, more params)
    ])
    assert sorted(pareto_front(df, OBJECTIVES)["number"]) == [0, 1, 3]


def test_front_keeps_both_rows_of_an_exact_tie():
    df = _table([(0, 0.8, 50), (1, 0.8, 50), (2, 0.7, 60)])
    assert sorted(pareto_front(df, OBJECTIVES)["number"]) == [0, 1]


def test_front_skips_rows_with_missing_objective():
    df = _table([(0, math.nan, 1), (1, 0.5, 10)])
    assert list(pareto_front(df, OBJECTIVES)["number"]) == [1]


def test_front_of_three_objectives_matches_brute_force():
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.random((40, 3)), columns=["a", "b", "c"]).assign(number=range(40))
    objectives = [("a", "max"), ("b", "min"), ("c", "min")]
    loss = np.stack([-df["a"], df["b"], df["c"]], axis=1)
    expected = [
        i for i in range(40)
        if not any(np.all(loss[j] <= loss[i]) and np.any(loss[j] < loss[i]) for j in range(40))
    ]
    assert sorted(pareto_front(df, objectives)["number"]) == expected


def test_unknown_objective_column_is_named_in_error():
    with pytest.raises(ValueError, match="latency_ms"):
        pareto_front(_table([(0, 0.5, 1)]), [("latency_ms", "min")])


def test_bad_objective_mode_is_rejected():
    with pytest.raises(ValueError, match="'best'"):
        pareto_front(_table([(0, 0.5, 1)]), [("auroc", "best")])


def test_hypervolume_2d_equals_hand_computation():
    # Points (minimised) (1,3), (2,2), (3,1) with reference (4,4): a staircase of
    # 3 + 2 + 1 unit columns = 6.
    assert hypervolume(np.array([[1, 3], [2, 2], [3, 1]]), np.array([4, 4])) == pytest.approx(6.0)


def test_hypervolume_ignores_points_beyond_the_reference():
    points = np.array([[1.0, 1.0], [5.0, 0.5]])
    assert hypervolume(points, np.array([2.0, 2.0])) == pytest.approx(1.0)


def test_hypervolume_3d_of_two_boxes_equals_inclusion_exclusion():
    # Boxes [1,3]x[0,3]x[0,3] (from (0,0,0)... ) : point a=(0,0,2), b=(2,0,0), ref (3,3,3).
    # vol(a)=3*3*1=9, vol(b)=1*3*3=9, overlap=1*3*1=3 -> 15.
    points = np.array([[0, 0, 2], [2, 0, 0]], dtype=float)
    assert hypervolume(points, np.array([3.0, 3.0, 3.0])) == pytest.approx(15.0)


def test_hypervolume_3d_matches_optuna_on_random_points():
    from optuna._hypervolume import compute_hypervolume

    rng = np.random.default_rng(1)
    points = rng.random((30, 3))
    reference = np.array([1.1, 1.1, 1.1])
    assert hypervolume(points, reference) == pytest.approx(compute_hypervolume(points, reference))


def test_hypervolume_history_converts_max_objectives_and_never_decreases():
    df = _table([(0, 0.7, 3.0), (1, 0.6, 4.0), (2, 0.9, 2.0)])
    history = hypervolume_history(df, OBJECTIVES, {"auroc": 0.5, "params": 5.0})
    # trial 0: (0.7-0.5)*(5-3)=0.4; trial 1 dominated: 0.4; trial 2: (0.9-0.5)*(5-2)=1.2.
    assert history == pytest.approx([0.4, 0.4, 1.2])


def test_hypervolume_history_requires_every_objective_in_reference():
    with pytest.raises(ValueError, match="params"):
        hypervolume_history(_table([(0, 0.7, 3.0)]), OBJECTIVES, {"auroc": 0.5})


def _finished_study(n=8, metric_names=("auroc", "params", "latency_ms")):
    study = optuna.create_study(
        directions=["maximize", "minimize", "minimize"],
        sampler=optuna.samplers.RandomSampler(seed=3),
        study_name="toy",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(metric_names))
    study.enqueue_trial({"tau": 0.9, "method": "full"})
    for i in range(n):
        trial = study.ask()
        tau = trial.suggest_float("tau", 0.5, 1.0)
        trial.suggest_categorical("method", ["lora", "full"])
        trial.set_user_attr("val_auprc", tau / 2)
        trial.set_user_attr("config", {"tau": tau})
        trial.set_user_attr("val_ece", 0.1 if i % 2 else "nan")
        if i == 3:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, [tau, 1000 * tau, 10 * tau + (i % 3)])
    return study


def test_trials_frame_has_every_trial_objective_param_and_attr():
    df = trials_frame(_finished_study())
    assert len(df) == 8
    assert {"number", "state", "auroc", "params", "latency_ms", "tau", "method",
            "val_auprc", "config", "enqueued", "duration_s"} <= set(df.columns)
    assert math.isnan(df.loc[df["number"] == 3, "auroc"].item())


def test_reference_row_defaults_to_the_enqueued_trial():
    df = trials_frame(_finished_study())
    ref = reference_row(df[df["state"] == "COMPLETE"], [("auroc", "max")])
    assert ref["number"] == 0 and ref["tau"] == 0.9


def test_front_table_sorts_best_first_and_adds_deltas():
    df = trials_frame(_finished_study())
    objectives = [("auroc", "max"), ("params", "min"), ("latency_ms", "min")]
    ref = reference_row(df, objectives)
    table = front_table(df, objectives, ref, extra_columns=["tau"])
    front = table[table["role"] == "front"]
    assert table["role"].iloc[0] == "reference"
    assert list(front["auroc"]) == sorted(front["auroc"], reverse=True)
    assert np.allclose(front["delta_params"], front["params"] - ref["params"])


def test_write_reports_writes_every_file_and_parquet_reads_back(tmp_path):
    study = _finished_study()
    objectives = [("auroc", "max"), ("params", "min"), ("latency_ms", "min")]
    written = write_reports(study, tmp_path, objectives,
                            reference_point={"auroc": 0.5, "params": 1000, "latency_ms": 20})
    assert {"pareto.md", "pareto.csv", "answer.md", "trials.parquet", "hypervolume.csv", "hypervolume.png",
            "pareto_auroc__params.png", "pareto_auroc__latency_ms.png",
            "pareto_params__latency_ms.png"} == set(written)
    assert all(path.stat().st_size > 0 for path in written.values())
    back = pd.read_parquet(tmp_path / "trials.parquet")
    assert list(back.columns) == list(trials_frame(study).columns) and len(back) == 8
    assert not list(tmp_path.glob(".*.tmp"))


def test_pareto_csv_lists_only_non_dominated_trials_after_reference(tmp_path):
    study = _finished_study()
    objectives = [("auroc", "max"), ("params", "min"), ("latency_ms", "min")]
    write_reports(study, tmp_path, objectives)
    table = pd.read_csv(tmp_path / "pareto.csv")
    df = trials_frame(study)
    expected = sorted(pareto_front(df, objectives)["number"])
    assert sorted(table.loc[table["role"] == "front", "number"]) == expected
    assert "| reference | 0 |" in (tmp_path / "pareto.md").read_text()


def test_write_reports_on_study_without_complete_trials_writes_only_parquet(tmp_path):
    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = study.ask()
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    written = write_reports(study, tmp_path, [("values_0", "max"), ("values_1", "min")])
    assert set(written) == {"trials.parquet"}


def _verdict_study(top_probs_by_number):
    """Reference (trial 0) and two compressed trials with stored predictions and latency intervals."""
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"], study_name="verdicts")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["val_auroc", "params", "latency_ms"])
    study.enqueue_trial({"tau": 1.0})
    rows = [(1000, 2.0), (440, 1.5), (300, 1.0)]  # params, latency (each clearly below the last)
    for number, (params, latency) in enumerate(rows):
        trial = study.ask()
        trial.suggest_float("tau", 0.5, 1.0)
        labels, probs = top_probs_by_number[number]
        trial.set_user_attr("latency_ms_lo", latency * 0.98)
        trial.set_user_attr("latency_ms_hi", latency * 1.02)
        from sklearn.metrics import roc_auc_score

        study.tell(trial, [roc_auc_score(labels, probs), params, latency])
    return study


def _synthetic(shift, seed=0, n=135):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(n, int), np.zeros(n, int)]
    probs = 1 / (1 + np.exp(-np.r_[rng.normal(shift, 1, n), rng.normal(0, 1, n)]))
    return labels, probs.astype(np.float32)


def _predictions(by_number):
    from trainables.evaluate.evaluation import Predictions

    return lambda row: Predictions(*by_number[int(row["number"])])


def test_a_top_auroc_gain_inside_the_interval_is_never_reported_as_dominating(tmp_path):
    labels, ref = _synthetic(2.0)
    better = ref.copy()
    # One positive moved above the negatives just over it: a gain of a few pairs out of 18,225.
    pos = np.flatnonzero(labels == 1)
    weakest = pos[np.argmin(ref[pos])]
    better[weakest] = np.sort(ref[labels == 0])[-20]
    by_number = {0: (labels, ref), 1: (labels, better), 2: (labels, ref * 0.9)}
    study = _verdict_study(by_number)
    write_reports(study, tmp_path, [("val_auroc", "max"), ("params", "min"), ("latency_ms", "min")],
                  predictions=_predictions(by_number))
    table = pd.read_csv(tmp_path / "pareto.csv")
    top = table[(table["role"] == "front") & (table["number"] == 1)].iloc[0]
    assert top["delta_val_auroc"] > 0 and top["delta_val_auroc_lo"] <= 0 < top["delta_val_auroc_hi"]
    assert top["verdict_val_auroc"] == "tie"
    assert top["verdict_params"] == "better" and top["verdict_latency_ms"] == "better"
    dominance_line = (tmp_path / "pareto.md").read_text().splitlines()[4]
    assert dominance_line.startswith("None of") and "closest: trial 1: ties on val_auroc" in dominance_line


def test_a_clearly_better_smaller_faster_point_is_reported_as_dominating(tmp_path):
    labels, ref = _synthetic(0.8)
    _, strong = _synthetic(3.0)
    by_number = {0: (labels, ref), 1: (labels, strong), 2: (labels, ref)}
    study = _verdict_study(by_number)
    write_reports(study, tmp_path, [("val_auroc", "max"), ("params", "min"), ("latency_ms", "min")],
                  predictions=_predictions(by_number))
    table = pd.read_csv(tmp_path / "pareto.csv")
    assert table.loc[table["number"] == 1, "verdict_val_auroc"].tolist()[-1] == "better"
    # trial 2 has the reference's predictions: delta exactly 0, a tie
    row2 = table[(table["number"] == 2) & (table["role"] == "front")].iloc[0]
    assert row2["delta_val_auroc"] == 0 and row2["verdict_val_auroc"] == "tie"
    assert (tmp_path / "pareto.md").read_text().splitlines()[4].startswith("1 of 2 front points dominate")


def test_front_uses_retimed_latencies_and_keeps_the_sweep_ones(tmp_path):
    labels, ref = _synthetic(0.8)
    by_number = {0: (labels, ref), 1: (labels, _synthetic(3.0)[1]), 2: (labels, ref)}
    study = _verdict_study(by_number)
    # The pass found the reference 40% faster than in the sweep and trial 1 no faster than it.
    retimed = pd.DataFrame({
        "number": [0, 0, 1, 2], "role": ["reference", "repeat", "front", "front"],
        "latency_ms_retimed": [1.2, 1.21, 1.19, 0.9], "latency_ms_retimed_lo": [1.1, 1.1, 1.1, 0.85],
        "latency_ms_retimed_hi": [1.3, 1.3, 1.3, 0.95], "delta_latency_ms": [0.0, 0.01, -0.01, -0.3],
        "delta_latency_ms_lo": [0.0, -0.02, -0.03, -0.35], "delta_latency_ms_hi": [0.0, 0.03, 0.02, -0.25],
    })
    write_reports(study, tmp_path, [("val_auroc", "max"), ("params", "min"), ("latency_ms", "min")],
                  predictions=_predictions(by_number), retimed=retimed)
    table = pd.read_csv(tmp_path / "pareto.csv").set_index(["role", "number"])
    assert table.loc[("reference", 0), "latency_ms"] == 1.2 and table.loc[("reference", 0), "latency_ms_sweep"] == 2.0
    assert table.loc[("front", 1), "verdict_latency_ms"] == "tie"
    assert table.loc[("front", 2), "verdict_latency_ms"] == "better"
    assert "re-timing pass" in (tmp_path / "pareto.md").read_text()
    assert pd.read_parquet(tmp_path / "trials.parquet").set_index("number").loc[0, "latency_ms"] == 2.0


THREE = [("val_auroc", "max"), ("params", "min"), ("latency_ms", "min")]


def _trials(rows, **columns):
    """A trials table as trials_frame gives it: (state, val_auroc, params, latency_ms) per trial, trial 0 enqueued."""
    df = pd.DataFrame(rows, columns=["state", "val_auroc", "params", "latency_ms"])
    return df.assign(number=range(len(df)), enqueued=[n == 0 for n in range(len(df))], **columns)


def test_the_reference_point_is_chance_auroc_uncompressed_params_and_the_worst_latency():
    df = _trials([("COMPLETE", 0.9, 1000.0, 2.0), ("COMPLETE", 0.7, 500.0, 2.5)], params_uncompressed=1200)
    assert hypervolume_reference_point(df, THREE) == {"val_auroc": 0.5, "params": 1200.0, "latency_ms": 2.5}


def test_the_reference_point_takes_the_most_params_when_the_uncompressed_count_is_not_recorded():
    df = _trials([("COMPLETE", 0.9, 1000.0, 2.0), ("COMPLETE", 0.7, 500.0, 2.5)])
    assert hypervolume_reference_point(df, THREE)["params"] == 1000.0


def test_the_reference_point_of_latency_rel_is_one_unless_a_trial_is_slower():
    df = pd.DataFrame({"val_auroc": [0.9, 0.8], "latency_rel": [0.5, 0.7]})
    objectives = [("val_auroc", "max"), ("latency_rel", "min")]
    assert hypervolume_reference_point(df, objectives)["latency_rel"] == 1.0
    assert hypervolume_reference_point(df.assign(latency_rel=[0.5, 1.3]), objectives)["latency_rel"] == 1.3


def test_the_reference_point_widens_latency_to_the_slowest_retimed_row():
    df = _trials([("COMPLETE", 0.9, 1000.0, 2.0), ("COMPLETE", 0.7, 500.0, 2.5)])
    retimed = pd.DataFrame({"number": [0, 1], "latency_ms": [1.0, 3.1]})
    assert hypervolume_reference_point(df, THREE, retimed)["latency_ms"] == 3.1


def test_compute_report_gives_the_front_its_hypervolume_and_history_on_numbers():
    # Trial 1 dominates the reference (trial 0); trial 2 is dominated; trial 3 failed.
    df = _trials([("COMPLETE", 0.9, 1000.0, 2.0), ("COMPLETE", 0.9, 500.0, 1.5), ("COMPLETE", 0.85, 800.0, 2.5),
                  ("FAIL", math.nan, math.nan, math.nan)], params_uncompressed=1200)
    report = compute_report(df, THREE, study_name="numbers")
    assert list(zip(report.table["role"], report.table["number"])) == [("reference", 0), ("front", 1)]
    assert report.reference_point == {"val_auroc": 0.5, "params": 1200.0, "latency_ms": 2.5}
    # The box of trial 1 up to the reference point: (0.9 - 0.5) * (1200 - 500) * (2.5 - 1.5).
    assert report.front_hypervolume == pytest.approx(0.4 * 700 * 1.0)
    # Trial 0 alone: 0.4 * 200 * 0.5; trial 2 sits on the latency bound and adds nothing.
    assert report.history["number"].tolist() == [0, 1, 2]
    assert report.history["hypervolume"].tolist() == pytest.approx([40.0, 280.0, 280.0])
    assert report.lines[4].startswith("3 complete of 4 trials; 1 on the front")


def test_compute_report_recommends_the_smaller_non_inferior_point():
    labels, ref = _synthetic(2.0)
    by_number = {0: (labels, ref), 1: (labels, ref), 2: (labels, _synthetic(0.5)[1])}
    df = _trials([("COMPLETE", 0.92, 1000.0, 2.0), ("COMPLETE", 0.92, 500.0, 2.0), ("COMPLETE", 0.6, 300.0, 2.0)])
    report = compute_report(df, THREE, predictions=_predictions(by_number))
    assert report.recommended == 1 and report.recommendation.startswith("Recommended: trial 1")
    assert report.table.loc[report.table["recommended"], "number"].tolist() == [1]


def test_compute_report_keeps_a_reference_point_it_is_given():
    df = _trials([("COMPLETE", 0.9, 1000.0, 2.0), ("COMPLETE", 0.8, 500.0, 1.5)])
    point = {"val_auroc": 0.0, "params": 2000.0, "latency_ms": 4.0}
    assert compute_report(df, THREE, reference_point=point).reference_point == point


def test_compute_report_without_a_complete_trial_raises_naming_the_study():
    df = _trials([("FAIL", math.nan, math.nan, math.nan)])
    with pytest.raises(ValueError, match="study 'empty' has no complete trial"):
        compute_report(df, THREE, study_name="empty")


def test_write_reports_bounds_the_hypervolume_by_the_sweeps_reference_point(tmp_path):
    from tune.report.summary import reference_point

    study = _verdict_study({n: _synthetic(1.0) for n in range(3)})
    write_reports(study, tmp_path, THREE)
    assert f"(reference point {reference_point(study, THREE)})" in (tmp_path / "pareto.md").read_text()
