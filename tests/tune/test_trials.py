"""tune.trials: what a finished study says about its trials (config, front, stored predictions)."""

import json
import warnings

import numpy as np
import optuna
import pytest

from trainables.cache import StageCache
from trainables.evaluate.evaluation import Predictions
from tune.budget import Bound
from tune.study import CONFIG_ATTR
from tune.sweep import SweepSettings
from tune.trials import front_frame, predictions_loader, reference_front, trial_config, trial_temperature

optuna.logging.set_verbosity(optuna.logging.WARNING)

OBJECTIVES = (("val_auroc", "max"), ("params", "min"), ("latency_ms", "min"))
TAU = optuna.distributions.FloatDistribution(0.5, 1.0)
BASE = {"finetune.epochs": 1, "eval.tta": "none", "compress.tau_mlp": 0.975}


def _settings(tmp_path, **changes):
    fields = dict(name="s", results_dir=str(tmp_path), storage_url=None, preset="digits", space="compress_only",
                  sampler="tpe", seed=0, objectives=OBJECTIVES, num_samples=4, max_concurrent=1,
                  trial_resources={"cpu": 1}, max_failures=0, base=BASE)
    return SweepSettings(**{**fields, **changes})


def _sweep_study(rows):
    """A study as a sweep leaves it: named objectives, the seed point enqueued first (fixed_params), each
    trial's config recorded under CONFIG_ATTR; `rows` are (tau_mlp, values, gflops)."""
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([name for name, _ in OBJECTIVES])
    for number, (tau, values, gflops) in enumerate(rows):
        study.add_trial(optuna.trial.create_trial(
            values=values, params={"compress.tau_mlp": tau}, distributions={"compress.tau_mlp": TAU},
            user_attrs={CONFIG_ATTR: {"compress.tau_mlp": tau, "tokens.r_max": 0.0}, "gflops": gflops},
            system_attrs={"fixed_params": {"compress.tau_mlp": tau}} if number == 0 else {}))
    return study


def test_trial_config_overlays_the_recorded_config_on_the_base():
    study = _sweep_study([(0.9, [0.9, 100.0, 2.0], 1.0)])
    flat = trial_config(study.trials[0], BASE)
    assert flat == {**BASE, "compress.tau_mlp": 0.9, "tokens.r_max": 0.0}


def test_trial_config_reads_a_config_recorded_as_json_text():
    trial = optuna.trial.create_trial(value=0.5, user_attrs={CONFIG_ATTR: json.dumps({"eval.tta": "flips"})})
    assert trial_config(trial, BASE)["eval.tta"] == "flips"


def test_trial_config_without_a_recorded_config_takes_the_params_and_resolves_switches():
    trial = optuna.trial.create_trial(value=0.5, params={"tokens.enabled": False},
                                      distributions={"tokens.enabled": optuna.distributions.CategoricalDistribution(
                                          [False, True])})
    flat = trial_config(trial, BASE)
    assert "tokens.enabled" not in flat and flat["tokens.r_max"] == 0.0 and flat["finetune.epochs"] == 1


def test_front_frame_puts_the_seed_point_first_as_the_reference(tmp_path):
    study = _sweep_study([(0.975, [0.9, 100.0, 2.0], 3.0), (0.9, [0.85, 60.0, 1.5], 2.0),
                          (0.8, [0.8, 70.0, 1.8], 0.5)])
    table = front_frame(_settings(tmp_path), study)
    assert list(zip(table["role"], table["number"])) == [("reference", 0), ("front", 0), ("front", 1)]
    assert table["compress.tau_mlp"].tolist() == [0.975, 0.975, 0.9]


def test_reference_front_gives_the_table_and_the_trials_by_number(tmp_path):
    study = _sweep_study([(0.975, [0.9, 100.0, 2.0], 3.0), (0.9, [0.85, 60.0, 1.5], 2.0)])
    table, by_number = reference_front(_settings(tmp_path), study, "replicate")
    assert table["role"].iloc[0] == "reference" and sorted(by_number) == [0, 1]
    assert by_number[1].params["compress.tau_mlp"] == 0.9


def test_reference_front_of_a_sweep_without_a_complete_trial_names_the_purpose(tmp_path):
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    with pytest.raises(ValueError, match="sweep 's' has no reference trial to re-time against"):
        reference_front(_settings(tmp_path), study, "re-time against")


def test_front_frame_adds_the_front_of_the_feasible_trials_under_the_sweeps_budget(tmp_path):
    # Trial 2 is dominated by trial 1, which breaks gflops<=1: a user with that budget wants trial 2.
    study = _sweep_study([(0.975, [0.9, 100.0, 2.0], 3.0), (0.9, [0.85, 60.0, 1.5], 2.0),
                          (0.8, [0.8, 70.0, 1.8], 0.5)])
    table = front_frame(_settings(tmp_path, budget=(Bound("gflops", "<=", 1.0),)), study)
    front = table[table["role"] == "front"]
    assert list(front["number"]) == [0, 1, 2] and list(front["feasible"]) == [False, False, True]


def test_front_frame_of_a_study_without_a_complete_trial_is_empty(tmp_path):
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    assert front_frame(_settings(tmp_path), study).empty


def test_predictions_loader_reads_a_trials_stored_outcome_and_none_without_one(tmp_path):
    stored = Predictions(labels=np.repeat([0, 1], 5), probs=np.linspace(0, 1, 10, dtype=np.float32))
    StageCache(str(tmp_path)).get_or_compute("outcome", "0123abcd", stored.save)
    load = predictions_loader(_settings(tmp_path))
    assert np.array_equal(load({"outcome_key": "0123abcd"}).probs, stored.probs)
    assert load({}) is None and load({"outcome_key": "ffff0000"}) is None


def test_trial_temperature_prefers_the_recorded_one(tmp_path):
    trial = optuna.trial.create_trial(values=[0.9, 1.0, 1.0], user_attrs={"val_temperature": 1.7})
    assert trial_temperature(_settings(tmp_path), trial) == pytest.approx(1.7)
