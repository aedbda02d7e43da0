"""Numerical faults: a diverging trial stops at once and is reported FAILED with its reason,
never as a point on the front; a degenerate compression still evaluates.

Library cases call run_trial in this process; the sweep case runs `python tune/run.py` on
the digits preset with tiny epochs. All share one results root, so the tiny pretrain runs
once for the module.
"""

import json
import math
import os
import shutil
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch

from _digits_sweep import run_cli
from _ray_guard import ray_tmp_dir
from compress import CompressionPlan, compress_model, load_compressed, save_compressed
from trainables.evaluate.evaluation import check_finite
from trainables.model import build_classifier
from trainables.trial import TrialContext, run_trial

# One tiny trial: the seed case fills the pretrain/finetune cache the other cases start from.
TINY = {"pretrain.epochs": 1, "finetune.epochs": 1, "data.train_limit": 200, "data.val_limit": 100,
        "eval.latency_repeats": 2, "eval.latency_rounds": 1, "calib.batches": 2}
DIVERGING = {"finetune.lr": 1e6, "finetune.backbone_lr": 1e6}
DEGENERATE = {"compress.tau_heads": 0.01, "compress.tau_mlp": 0.01, "compress.tau_svd": 0.01}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "shared-sweep-results"


@pytest.fixture(scope="module")
def context(results):
    return TrialContext(results_dir=str(results), show_progress=False)


@pytest.fixture(scope="module")
def seed_metrics(context):
    """The tiny seed trial: fills the pretrain and finetune cache the other cases start from."""
    return run_trial(dict(TINY), context)


def _entries(results: Path, stage: str) -> set[str]:
    return {p.name for p in (results / "cache" / stage).glob("*")}


@pytest.fixture(scope="module")
def diverged_finetune(results, context, seed_metrics):
    """(the error run_trial raised, finetune cache entries before, after) for a huge learning rate."""
    before = _entries(results, "finetune")
    with pytest.raises(FloatingPointError) as info:
        run_trial({**TINY, **DIVERGING}, context)
    return info.value, before, _entries(results, "finetune")


@pytest.mark.slow
def test_diverging_finetune_raises_naming_the_stage(diverged_finetune):
    assert str(diverged_finetune[0]).startswith("finetune stage diverged: training loss became")


@pytest.mark.slow
def test_diverging_finetune_says_what_to_change(diverged_finetune):
    assert "lower the learning rate" in str(diverged_finetune[0])


@pytest.mark.slow
def test_diverged_finetune_publishes_no_cache_entry(diverged_finetune):
    _, before, after = diverged_finetune
    assert after == before


@pytest.mark.slow
def test_huge_prehab_lambda_raises_naming_the_prehab_stage(context, seed_metrics):
    with pytest.raises(FloatingPointError, match=r"^prehab stage diverged: training loss became (nan|inf)"):
        run_trial({**TINY, "prehab.lambda": 1e38}, context)


@pytest.mark.slow
def test_degenerate_compression_still_evaluates_to_finite_metrics(context, seed_metrics):
    metrics = run_trial({**TINY, **DEGENERATE}, context)
    assert all(math.isfinite(metrics[name]) for name in ("val_auroc", "params", "latency_ms", "gflops"))


@pytest.mark.slow
def test_degenerate_compression_keeps_a_small_fraction_of_the_parameters(context, seed_metrics):
    metrics = run_trial({**TINY, **DEGENERATE}, context)
    assert metrics["params"] < 0.1 * seed_metrics["params"]


def test_everything_pruned_to_one_unit_runs_and_round_trips(tmp_path):
    torch.manual_seed(0)
    plan = CompressionPlan(tau_heads=1e-6, tau_mlp=1e-6, tau_svd=1e-6)  # the energy rule keeps one of each
    model, _ = compress_model(build_classifier("digits-vit", 2).eval(), plan)
    pixels = torch.randn(2, 3, 32, 32)
    reloaded = load_compressed(save_compressed(model, tmp_path / "m"))
    layers = reloaded.backbone.model.layer
    assert all(layer.attention.num_heads == 1 and layer.mlp.up_proj.out_features == 1
               and layer.attention.q_proj.rank == 1 for layer in layers)
    assert torch.isfinite(reloaded(pixels)).all()


def test_non_finite_metric_fails_naming_the_metric():
    with pytest.raises(FloatingPointError, match="metric val_auroc is nan"):
        check_finite({"val_auroc": math.nan, "params": 10}, ["val_auroc", "params"])


# ------------------------------------------------------------------ through the sweep


@pytest.fixture(scope="module")
def nan_sweep(results):
    """A one-trial digits sweep whose fine-tune diverges; returns (process, sweep folder)."""
    ray_tmp = str(ray_tmp_dir("vsn"))
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    sets = [arg for key, value in {**TINY, **DIVERGING}.items() for arg in ("--set", f"{key}={value}")]
    proc = run_cli(env, "--results-dir", str(results), "--name", "diverging", "--num-samples", "1", *sets, timeout=400)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    return proc, results / "diverging"


def _trials(sweep_dir: Path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{sweep_dir / 'optuna.db'}")
    return optuna.load_study(study_name=sweep_dir.name, storage=storage).get_trials(deepcopy=False)


@pytest.mark.ray
@pytest.mark.slow
def test_sweep_with_a_diverging_trial_finishes_and_says_so(nan_sweep):
    proc, _ = nan_sweep
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 fail" in proc.stdout and "no complete trial" in proc.stdout


@pytest.mark.ray
@pytest.mark.slow
def test_diverging_trial_is_fail_in_optuna_with_a_fail_reason(nan_sweep):
    trials = _trials(nan_sweep[1])
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL]
    assert trials[0].user_attrs.get("fail_reason")


@pytest.mark.ray
@pytest.mark.slow
def test_diverging_trial_is_not_on_the_front(nan_sweep):
    # Reporting ran (trials.parquet lists every trial) and found no complete trial to put on a front.
    trials = pd.read_parquet(nan_sweep[1] / "trials.parquet")
    assert trials[["number", "state"]].values.tolist() == [[0, "FAIL"]]
    assert trials["val_auroc"].isna().all()
    assert not (nan_sweep[1] / "pareto.csv").exists()


@pytest.mark.ray
@pytest.mark.slow
def test_diverging_trial_fails_once_with_the_reason_in_optuna(nan_sweep):
    reason = _trials(nan_sweep[1])[0].user_attrs["fail_reason"]
    assert reason.startswith("finetune stage diverged: training loss became")
    # Divergence is deterministic: reported, not raised, so neither Tune nor Train retries it.
    assert not list((nan_sweep[1] / "tune").glob("*/error.txt"))


@pytest.mark.ray
@pytest.mark.slow
def test_progress_log_records_the_diverging_trial_as_failed(nan_sweep):
    lines = (nan_sweep[1] / "progress.jsonl").read_text().splitlines()
    assert [json.loads(line)["status"] for line in lines] == ["failed"]
