"""--replicates: the reference (and K front points) rerun with other run.seed values, spread reported."""

import warnings

import optuna
import pandas as pd
import pytest

import trainables.trial
from tune.presets import DEFAULT_OBJECTIVES, get_preset
from tune.replicates import replicate_notes, run_replicates, spread
from tune.sweep import SweepSettings, build_base

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study_and_settings(tmp_path):
    preset = get_preset("digits")
    settings = SweepSettings(name="r", results_dir=str(tmp_path), storage_url=None, preset="digits",
                             space=preset.space, sampler="random", seed=0, objectives=DEFAULT_OBJECTIVES,
                             num_samples=3, max_concurrent=1, trial_resources={"cpu": 1}, max_failures=0,
                             base=build_base(preset, {}, preset.space))
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"], study_name="r")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([n for n, _ in DEFAULT_OBJECTIVES])
    study.enqueue_trial({"compress.tau_mlp": 0.975})
    for values in ((0.95, 1000, 2.0), (0.97, 800, 1.5), (0.90, 500, 1.0)):
        trial = study.ask()
        trial.suggest_float("compress.tau_mlp", 0.5, 1.0)
        study.tell(trial, list(values))
    return settings, study


def test_replicates_rerun_the_reference_and_the_best_front_points_with_new_seeds(tmp_path, monkeypatch):
    calls = []

    def fake_run_trial(flat, context, split=None):
        calls.append(flat["run.seed"])
        return {"val_auroc": 0.9 + 0.01 * flat["run.seed"], "params": 1, "latency_ms": 1.0}

    monkeypatch.setattr(trainables.trial, "run_trial", fake_run_trial)
    settings, study = _study_and_settings(tmp_path)
    frame = run_replicates(settings, study, replicates=2, front_k=1)
    assert calls == [1, 2, 1, 2]  # the reference, then trial 1 (best AUROC on the front)
    assert list(frame["number"]) == [0, 0, 0, 1, 1, 1]
    assert list(frame["replicate"]) == [0, 1, 2, 0, 1, 2]
    summary = spread(frame, "val_auroc").set_index("number")
    assert summary.loc[0, "val_auroc_sd"] == pytest.approx(pd.Series([0.95, 0.91, 0.92]).std())
    assert (tmp_path / "r" / "replicates.csv").is_file() and (tmp_path / "r" / "replicates.md").is_file()
    assert "trial 0 (reference) sd" in replicate_notes(frame, "val_auroc")[0]


def test_replicates_must_be_positive(tmp_path):
    settings, study = _study_and_settings(tmp_path)
    with pytest.raises(ValueError, match="replicates"):
        run_replicates(settings, study, replicates=0)
