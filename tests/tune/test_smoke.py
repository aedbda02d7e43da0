"""`--smoke` runs each PCam preset's real code path end to end on CPU and prints a real sweep's reports."""

import os
import shutil

import pytest
from _digits_sweep import finish_cli, start_cli, stop_cli
from _ray_guard import ray_tmp_dir

from tune.presets import PRESETS
from tune.smoke import smoke_overrides
from tune.sweep import build_base

SMOKE_PRESETS = ("pcam-local", "pcam-a100")


@pytest.mark.parametrize("name", SMOKE_PRESETS)
def test_smoke_keeps_the_presets_architecture_and_image_size(name, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    preset = PRESETS[name]
    base = build_base(preset, smoke_overrides(preset), "compress_only")
    assert base["model.backbone"] == "dinov3-vits16" and base["finetune.method"] == "lora"
    assert base["data.image_size"] == preset.trial["data.image_size"]
    assert base["data.synthetic"] is True and base["model.weights"] == ""
    assert base["finetune.min_feature_std"] == 0.0  # random-init features are near-constant


def test_on_one_machine_the_smoke_workers_share_every_core(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    overrides = smoke_overrides(PRESETS["pcam-local"])
    # One trial at a time, its driver idle while the worker trains: the worker takes all 8 cores.
    assert overrides["finetune.workers"] == 1 and overrides["finetune.threads_per_worker"] == 8
    assert overrides["finetune.cpus_per_worker"] == 7.0  # what it reserves: all but the driver's CPU


def test_debug_trial_with_smoke_runs_the_smoke_config_with_set_on_top(monkeypatch, tmp_path):
    import trainables.trial
    from tune.run import main

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ran = {}

    def fake_run_trial(flat, context):
        ran.update(flat)
        return {"val_auroc": 0.5}

    monkeypatch.setattr(trainables.trial, "run_trial", fake_run_trial)
    assert main(["--preset", "pcam-a100", "--smoke", "--debug-trial", "--results-dir", str(tmp_path),
                 "--set", "data.train_limit=16"]) == 0
    smoke = smoke_overrides(PRESETS["pcam-a100"])
    assert ran["data.synthetic"] is True and ran["model.weights"] == "" and ran["data.image_size"] == 224
    assert ran["data.val_limit"] == smoke["data.val_limit"] and str(ran["data.train_limit"]) == "16"


def test_attached_to_a_cluster_smoke_keeps_the_presets_workers(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert "finetune.workers" not in smoke_overrides(PRESETS["pcam-a100"])


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """Run both presets' smoke sweeps at once; return {preset: (CompletedProcess, results folder)}.

    Each run is mostly a chain of process starts and imports (CLI, Ray, trial actor, Train
    controller, worker) that keeps one core of two busy: the pair at once took 106 s where one
    after the other took 149 s (2-core AMD EPYC VM, 2026-12-02; bench/RESULTS.md, "Test suite").
    """
    base = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "WANDB_API_KEY")}
    base.update(RAY_USAGE_STATS_ENABLED="0", WANDB_MODE="offline")
    started, ray_tmps = {}, []
    try:
        for name in SMOKE_PRESETS:
            folder = tmp_path_factory.mktemp(name)
            # Ray's socket paths must stay under 107 bytes: a short folder of its own, not tmp_path.
            ray_tmps.append(str(ray_tmp_dir("vs-smoke-")))
            # --no-retime: the pass that rebuilds and re-times both ViT-S/16 models (about 30 s
            # here) is the digits sweep's code path too, and tests/tune/test_sweep.py checks it there.
            started[name] = (start_cli({**base, "RAY_TMPDIR": ray_tmps[-1]}, "--preset", name, "--smoke",
                                       "--name", "smoke", "--no-retime", "--results-dir", str(folder / "results"),
                                       *_quarter_the_images(name), cwd=folder), folder / "results")
        return {name: (finish_cli(run, timeout=880), results) for name, (run, results) in started.items()}
    finally:
        for run, _ in started.values():  # one timed out or failed: take the other's process group down too
            stop_cli(run)
        for ray_tmp in ray_tmps:
            shutil.rmtree(ray_tmp, ignore_errors=True)


def _quarter_the_images(name):
    """Return `--set` arguments that give the smoke run a quarter of its images per split, 16 at
    least (the model, image size and every stage stay the smoke run's: the test checks the code
    path, which image counts do not change)."""
    overrides = smoke_overrides(PRESETS[name])
    args = []
    for key in ("data.train_limit", "data.val_limit"):
        args += ["--set", f"{key}={max(16, overrides[key] // 4)}"]
    return args


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", SMOKE_PRESETS)
def test_smoke_sweep_runs_and_reports(name, smoke_runs):
    proc, results = smoke_runs[name]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sweep = results / "smoke"
    for report in ("pareto.md", "pareto.csv", "trials.parquet", "optuna.db", "progress.jsonl"):
        assert (sweep / report).is_file(), report
    assert "2 trials" in proc.stdout and "FAILED" not in proc.stdout
    import pandas as pd

    trials = pd.read_parquet(sweep / "trials.parquet")
    assert len(trials) == 2 and trials["val_auroc"].between(0, 1).all()
    # The second trial reused the first one's LoRA fine-tune of ViT-S/16 from the cache.
    assert sorted(trials["cache_hit_finetune"].tolist()) == [False, True]
