"""latency_rel in the driver: an objective choice, the cluster preset's default, verdicts and the
hypervolume reference point (the measurement itself: tests/trainables/test_latency.py)."""

import warnings

import optuna
import pandas as pd
import pytest

from tune.presets import CLUSTER_OBJECTIVES, PRESETS
from tune.report.summary import reference_point
from tune.report.verdicts import add_deltas, add_verdicts
from tune.sweep import build_base, parse_objectives

optuna.logging.set_verbosity(optuna.logging.WARNING)

REL_OBJECTIVES = (("val_auroc", "max"), ("params", "min"), ("latency_rel", "min"))


def test_the_cluster_preset_optimises_latency_rel():
    assert PRESETS["pcam-a100"].objectives == CLUSTER_OBJECTIVES == REL_OBJECTIVES


def test_the_cluster_presets_trials_time_latency_rel_over_enough_rounds_for_a_95_percent_interval():
    base = build_base(PRESETS["pcam-a100"], {}, PRESETS["pcam-a100"].space)
    assert base["eval.latency_rel"] is True and base["eval.latency_rounds"] >= 7


@pytest.mark.parametrize("name", ["digits", "pcam-local"])
def test_single_machine_presets_keep_latency_ms_and_time_one_model(name):
    preset = PRESETS[name]
    assert ("latency_ms", "min") in preset.objectives and "eval.latency_rel" not in preset.trial


def test_latency_rel_is_an_objective_choice():
    assert parse_objectives("val_auroc:max,latency_rel:min") == (("val_auroc", "max"), ("latency_rel", "min"))


def _rel_table(rows):
    """A front table over latency_rel alone: (role, number, value, lo, hi) rows, the reference first."""
    table = pd.DataFrame(rows, columns=["role", "number", "latency_rel", "latency_rel_lo", "latency_rel_hi"])
    table["delta_latency_rel"] = table["latency_rel"] - table["latency_rel"].iloc[0]
    objectives = [("latency_rel", "min")]
    return add_verdicts(add_deltas(table, objectives), objectives).set_index("number")


def test_a_clearly_faster_ratio_is_better():
    table = _rel_table([("reference", 0, 0.80, 0.79, 0.81), ("front", 1, 0.50, 0.49, 0.51)])
    assert table.loc[1, "verdict_latency_rel"] == "better"


def test_a_latency_rel_difference_under_five_percent_of_the_reference_is_a_tie():
    # 0.83 vs 0.80: the interval [0.028, 0.032] excludes 0, but 0.03 is under 5% of 0.80.
    table = _rel_table([("reference", 0, 0.80, 0.799, 0.801), ("front", 1, 0.83, 0.829, 0.831)])
    assert table.loc[1, "delta_latency_rel_lo"] > 0 and table.loc[1, "verdict_latency_rel"] == "tie"


def test_the_front_report_explains_latency_rel(tmp_path):
    from tune.report.reports import write_reports

    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([name for name, _ in REL_OBJECTIVES])
    study.enqueue_trial({"tau": 1.0})
    for tau, values, interval in ((1.0, [0.9, 1000, 0.8], (0.79, 0.81)), (0.7, [0.9, 600, 0.5], (0.49, 0.51))):
        trial = study.ask()
        trial.suggest_float("tau", 0.5, 1.0)
        trial.set_user_attr("latency_rel_lo", interval[0])
        trial.set_user_attr("latency_rel_hi", interval[1])
        study.tell(trial, values)
    write_reports(study, tmp_path, REL_OBJECTIVES)
    table = pd.read_csv(tmp_path / "pareto.csv").set_index(["role", "number"])
    assert table.loc[("front", 1), "verdict_latency_rel"] == "better"
    assert "latency_rel is each trial's latency over the uncompressed model's" in (tmp_path / "pareto.md").read_text()


def _study(latencies_rel):
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    for latency_rel in latencies_rel:
        trial = study.ask()
        trial.set_user_attr("params_uncompressed", 400)
        study.tell(trial, [0.9, 100.0, latency_rel])
    return study


def test_hypervolume_reference_point_of_latency_rel_is_the_uncompressed_model():
    assert reference_point(_study([0.5, 0.7]), REL_OBJECTIVES)["latency_rel"] == 1.0


def test_hypervolume_reference_point_of_latency_rel_takes_a_slower_trial_in():
    assert reference_point(_study([0.5, 3.2]), REL_OBJECTIVES)["latency_rel"] == 3.2
