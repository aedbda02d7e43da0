"""--replicates: the reference (and K front points) rerun with other run.seed values, spread reported."""

import warnings

import optuna
import pandas as pd
import pytest
import torch

import trainables.trial
from tune.presets import DEFAULT_OBJECTIVES, get_preset
from tune.report.replicates import replicate_notes, run_replicates, spread
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


# Small enough to train in seconds: 240 training images, one pretrain and one fine-tune epoch.
TINY = {"data.train_limit": 240, "data.val_limit": 120, "pretrain.epochs": 1, "finetune.epochs": 1,
        "eval.latency_repeats": 1, "eval.latency_rounds": 1,
        "eval.latency_warmup": 0, "eval.latency_pause_s": 0.0, "calib.batches": 1}


@pytest.mark.slow
def test_replicates_retrain_with_each_seed_and_report_their_spread(tmp_path):
    import dataclasses
    import json

    settings, study = _study_and_settings(tmp_path)
    preset = get_preset("digits")
    settings = dataclasses.replace(settings, base=build_base(preset, TINY, preset.space))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a sweep's trial actor; two threads spin against each other on a busy box
    try:
        frame = run_replicates(settings, study, replicates=2)
    finally:
        torch.set_num_threads(threads)

    runs = frame[frame["replicate"] > 0]
    assert list(runs["seed"]) == [1, 2]
    assert runs["val_auroc_lo"].notna().all() and (runs["val_auroc_lo"] <= runs["val_auroc"]).all()
    # Each seed trained its own pretrain and fine-tune: two cache entries per stage, different keys.
    for stage in ("pretrain", "finetune"):
        entries = [p for p in (tmp_path / "cache" / stage).iterdir() if p.is_dir()]
        assert len(entries) == 2, (stage, entries)
    histories = [json.loads((p / "history.json").read_text())
                 for p in (tmp_path / "cache" / "finetune").iterdir() if p.is_dir()]
    assert histories[0]["history"][0]["train_loss"] != histories[1]["history"][0]["train_loss"]
    summary = spread(frame, "val_auroc").set_index("number")
    assert summary.loc[0, "runs"] == 3
    assert summary.loc[0, "val_auroc_sd"] == pytest.approx(frame["val_auroc"].astype(float).std())
    assert "sd" in (tmp_path / "r" / "replicates.md").read_text()
