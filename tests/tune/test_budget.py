"""Budgets (--budget): parsing, the constraints the searcher records, the recommendation they filter, the front
they extend, and the sweep's saved settings. No Ray: the searcher is told results as Tune would tell them."""

import json

import optuna
import pandas as pd
import pytest
from optuna.study._constrained_optimization import _CONSTRAINTS_KEY
from optuna.trial import TrialState

from tune.budget import Bound, budget_text, check_measured, constraint_values, parse_budget, violations
from tune.report.reports import front_table
from tune.report.verdicts import recommend
from tune.run import main, make_parser
from tune.study import SweepSearch, make_sampler, make_storage
from tune.sweep import read_settings, write_settings

optuna.logging.set_verbosity(optuna.logging.WARNING)

OBJECTIVES = [("val_auroc", "max"), ("params", "min"), ("latency_ms", "min")]


def test_a_budget_parses_into_bounds_with_optunas_sign_convention():
    budget = parse_budget(" latency_ms<=0.8, params<=1e5,val_auroc>=0.9 ")
    assert budget == (Bound("latency_ms", "<=", 0.8), Bound("params", "<=", 1e5), Bound("val_auroc", ">=", 0.9))
    assert constraint_values(budget, {"latency_ms": 1.0, "params": 5e4, "val_auroc": 0.95}) == pytest.approx(
        [0.2, -5e4, -0.05])
    assert budget_text(budget) == "latency_ms<=0.8,params<=100000,val_auroc>=0.9"


def test_none_is_no_budget():
    assert parse_budget("none") == () and parse_budget("") == () and budget_text(()) == "none"


@pytest.mark.parametrize("text, message", [
    ("flops<=1", "flops<=1: unknown metric 'flops'; allowed: val_auroc, params"),
    ("params<=1e5x", "params<=1e5x: the bound must be a finite number (e.g. 0.8 or 1e5), got '1e5x'"),
    ("params<=inf", "the bound must be a finite number"),
    ("params<1e5", "expects METRIC<=LIMIT or METRIC>=LIMIT terms separated by commas"),
    ("params<=1,params<=2", "names params<= twice"),
])
def test_a_bad_budget_exits_2_with_one_line_naming_the_term(text, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as caught:
        main(["--results-dir", str(tmp_path), "--name", "new", "--budget", text])
    err = capsys.readouterr().err.strip().splitlines()
    assert caught.value.code == 2 and err[-1].startswith("python tune/run.py: error: argument --budget: ")
    assert message in err[-1] and not (tmp_path / "new").exists()


def test_a_budget_on_latency_rel_needs_the_trials_to_measure_it():
    budget = parse_budget("latency_rel<=0.5")
    with pytest.raises(ValueError, match="--budget latency_rel: the trials of this sweep do not measure it"):
        check_measured(budget, OBJECTIVES, {})
    check_measured(budget, OBJECTIVES, {"eval.latency_rel": True})
    check_measured(budget, [("val_auroc", "max"), ("latency_rel", "min")], {})


def test_violations_name_each_broken_bound():
    budget = parse_budget("latency_ms<=0.8,val_auroc>=0.9")
    assert violations(budget, {"latency_ms": 0.93, "val_auroc": 0.85}) == ["latency_ms 0.93 > 0.8",
                                                                           "val_auroc 0.85 < 0.9"]
    with pytest.raises(ValueError, match="budget metric val_auroc is missing"):
        violations(budget, {"latency_ms": 0.5})


# --- the searcher records the constraints ----------------------------------------------------


def _space(trial):
    trial.suggest_float("x", 0.0, 1.0)


def _budgeted_searcher(tmp_path):
    return SweepSearch(_space, metric=["val_auroc", "params", "latency_ms"], mode=["max", "min", "min"],
                       storage=make_storage(None, tmp_path, "b"), study_name="b",
                       sampler=make_sampler("tpe", seed=0), budget=parse_budget("params<=50,gflops<=2"))


def _result(x):
    return {"val_auroc": 1 - x / 2, "params": 100 * x, "latency_ms": 5 + x, "gflops": 1.5, "config/x": x}


def test_the_searcher_records_constraints_on_every_completed_trial(tmp_path):
    searcher = _budgeted_searcher(tmp_path)
    for index, x in enumerate([0.2, 0.7, 0.4]):
        searcher.suggest(f"t{index}")
        searcher.on_trial_complete(f"t{index}", _result(x))
    trials = searcher.study.get_trials(states=(TrialState.COMPLETE,))
    assert [t.system_attrs[_CONSTRAINTS_KEY] for t in trials] == [pytest.approx([100 * x - 50, -0.5])
                                                                    for x in (0.2, 0.7, 0.4)]
    # What TPE, NSGA-II and GP read: the trial with params 70 is the infeasible one.
    assert [all(v <= 0 for v in t.constraints.values()) for t in trials] == [True, False, True]


def test_a_result_without_a_budget_metric_fails_the_trial_naming_it(tmp_path):
    searcher = _budgeted_searcher(tmp_path)
    searcher.suggest("t0")
    result = _result(0.1)
    del result["gflops"]
    searcher.on_trial_complete("t0", result)
    (trial,) = searcher.study.trials
    assert trial.state == TrialState.FAIL and trial.user_attrs["fail_reason"] == "budget metric gflops is missing"


def test_tpe_samples_on_a_constrained_study(tmp_path):
    searcher = _budgeted_searcher(tmp_path)
    for index in range(10):  # TPE's random start-up trials; the next one comes from its constrained model
        config = searcher.suggest(f"t{index}")
        searcher.on_trial_complete(f"t{index}", _result(config["x"]))
    assert 0.0 <= searcher.suggest("t10")["x"] <= 1.0


# --- the recommendation and the front ----------------------------------------------------------


def _front(rows):
    """A hand-built Pareto table: (number, params, latency_ms); AUROC 0.949 [-0.002, +0.003] everywhere."""
    records = [{"role": "reference", "number": 0, "val_auroc": 0.95, "params": 1000.0, "latency_ms": 10.0,
                "delta_val_auroc": 0.0, "delta_val_auroc_lo": 0.0, "delta_val_auroc_hi": 0.0,
                "verdict_val_auroc": "reference", "delta_params": 0.0, "verdict_params": "reference",
                "delta_latency_ms": 0.0, "verdict_latency_ms": "reference"}]
    for number, params, latency in rows:
        records.append({"role": "front", "number": number, "val_auroc": 0.949, "params": params,
                        "latency_ms": latency, "delta_val_auroc": -0.001, "delta_val_auroc_lo": -0.002,
                        "delta_val_auroc_hi": 0.003, "verdict_val_auroc": "tie", "delta_params": params - 1000.0,
                        "verdict_params": "better", "delta_latency_ms": latency - 10.0, "verdict_latency_ms": "better"})
    return pd.DataFrame(records)


FRONT = _front([(1, 200.0, 9.0), (2, 500.0, 6.0)])


def test_the_recommendation_skips_a_point_outside_the_budget():
    assert recommend(FRONT, OBJECTIVES, prefer="params")[0] == 1
    recommended, line = recommend(FRONT, OBJECTIVES, prefer="params", budget=parse_budget("latency_ms<=8"))
    assert recommended == 2 and "1 qualifying front point" in line and "within the budget latency_ms<=8" in line


def test_with_no_point_within_the_budget_the_line_says_so_and_names_the_closest():
    recommended, line = recommend(FRONT, OBJECTIVES, prefer="params", budget=parse_budget("latency_ms<=5"))
    assert recommended is None and line.startswith("No recommendation: none of 2 front points")
    assert "closest: trial 1: outside the budget (latency_ms 9 > 5)" in line


def test_a_feasible_point_that_only_infeasible_ones_dominate_joins_the_front():
    trials = pd.DataFrame({"number": [0, 1, 2], "val_auroc": [0.95, 0.95, 0.94], "params": [1000.0, 400.0, 500.0],
                           "latency_ms": [10.0, 6.0, 7.0], "gflops": [4.0, 3.0, 1.0]})
    plain = front_table(trials, OBJECTIVES, trials.iloc[0])
    budgeted = front_table(trials, OBJECTIVES, trials.iloc[0], extra_columns=["gflops"],
                           budget=parse_budget("gflops<=2"))
    assert plain[plain["role"] == "front"]["number"].tolist() == [1]   # 1 dominates 0 and 2
    front = budgeted[budgeted["role"] == "front"]
    assert front["number"].tolist() == [1, 2] and front["feasible"].tolist() == [False, True]


# --- saved with the sweep; a defining flag on resume -------------------------------------------


def _new_sweep(results, *extra):
    from tune.run import _new_settings

    parser = make_parser()
    args = parser.parse_args(["--results-dir", str(results), "--name", "b", "--space", "compress_only", *extra])
    settings = _new_settings(args, parser)
    write_settings(settings)
    return settings


def test_the_budget_is_saved_in_sweep_json_and_read_back(tmp_path):
    _new_sweep(tmp_path, "--budget", "params<=6e4,latency_ms<=0.8")
    assert json.loads((tmp_path / "b" / "sweep.json").read_text())["budget"] == [["params", "<=", 60000.0],
                                                                                 ["latency_ms", "<=", 0.8]]
    assert read_settings(str(tmp_path), "b").budget == parse_budget("params<=6e4,latency_ms<=0.8")


def test_a_sweep_json_from_before_budgets_loads_without_one(tmp_path):
    _new_sweep(tmp_path)
    path = tmp_path / "b" / "sweep.json"
    saved = json.loads(path.read_text())
    del saved["budget"]
    path.write_text(json.dumps(saved))
    assert read_settings(str(tmp_path), "b").budget == ()


@pytest.mark.parametrize("saved, given, shown", [
    (["--budget", "params<=6e4"], "params<=7e4", "saved params<=60000, given params<=70000"),
    ([], "params<=7e4", "saved none, given params<=70000"),
])
def test_resume_refuses_a_different_budget(tmp_path, capsys, saved, given, shown):
    _new_sweep(tmp_path, *saved)
    with pytest.raises(SystemExit) as caught:
        main(["--results-dir", str(tmp_path), "--resume", "b", "--budget", given])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert caught.value.code == 2 and f"--budget differs: {shown}" in line


def test_resume_accepts_the_saved_budget_written_another_way(tmp_path):
    from tune.run import _saved_settings

    _new_sweep(tmp_path, "--budget", "params<=6e4")
    parser = make_parser()
    args = parser.parse_args(["--results-dir", str(tmp_path), "--resume", "b", "--budget", "params <= 60000"])
    assert _saved_settings("b", args, parser, "--resume").budget == (Bound("params", "<=", 60000.0),)
