"""Feature cache for head_only, the collapse watch, LR scaling, and the svd_taps head in a whole trial."""

import json
import math
from pathlib import Path

import pytest
import torch

from trainables.config import TrialConfig
from trainables.job import TrainJob, scale_learning_rates, stage_settings
from trainables.key_rules import stage_record
from trainables.train.features import FeatureCollapse, check_collapse, feature_std
from trainables.trial import TRIAL_ERROR_KEY, TrialContext, run_trial, tune_trainable

TINY = {
    "data.train_limit": 192, "data.val_limit": 128, "pretrain.epochs": 1, "pretrain.batch_size": 64,
    "finetune.epochs": 1, "finetune.batch_size": 64, "eval.latency_repeats": 2,
    "eval.latency_warmup": 1, "eval.latency_rounds": 1, "calib.batches": 2,
    "finetune.method": "head_only",
}


def test_feature_std_is_the_mean_per_dimension_spread():
    features = torch.tensor([[0.0, 1.0], [2.0, 1.0]])
    assert feature_std(features) == pytest.approx(0.5)  # stds 1 and 0


def test_collapsed_features_raise_and_spread_ones_pass():
    check_collapse(0.3, 1e-4)
    with pytest.raises(FeatureCollapse, match="below finetune.min_feature_std=0.0001"):
        check_collapse(1e-6, 1e-4)
    with pytest.raises(FeatureCollapse):
        check_collapse(math.nan, 0.0)


def test_linear_lr_scaling_uses_the_global_batch():
    cfg = {"finetune.lr_scaling": "linear", "finetune.batch_size": 64, "finetune.lr": 1e-3,
           "finetune.backbone_lr": 1e-4}
    job = TrainJob(stage="finetune", config=cfg, data_root="")
    scaled = scale_learning_rates(job, stage_settings(job), world_size=8)
    assert scaled.lr == pytest.approx(2e-3) and scaled.backbone_lr == pytest.approx(2e-4)
    plain = TrainJob(stage="finetune", config={"finetune.lr": 1e-3}, data_root="")
    assert scale_learning_rates(plain, stage_settings(plain), world_size=8).lr == 1e-3
    keyed = stage_record(TrialConfig.from_flat({**cfg, "finetune.workers": 4}).finetune)
    assert keyed["workers"] == 4 and "workers" not in stage_record(TrialConfig().finetune)


def test_pcam_a100_preset_scales_the_learning_rate():
    from tune.presets import get_preset

    assert get_preset("pcam-a100").trial["finetune.lr_scaling"] == "linear"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return str(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def cached(results):
    return run_trial(TINY, TrialContext(results_dir=results, show_progress=False))


def _history(results: str) -> list[dict]:
    newest = max((Path(results) / "cache" / "finetune").glob("*/history.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(newest.read_text())


@pytest.mark.slow
def test_head_only_trains_on_cached_features_that_match_the_live_model(cached, results):
    assert cached["cache_hit_features"] is False and cached["feature_std"] > 1e-3
    best = _history(results)["best"]["score"]
    # The head was selected on fp16 cached features; the saved model re-scored on images agrees.
    assert cached["val_auroc"] == pytest.approx(best, abs=0.01)


@pytest.mark.slow
def test_another_head_schedule_reuses_the_features(cached, results):
    again = run_trial({**TINY, "finetune.epochs": 2, "finetune.lr_scaling": "linear"},
                      TrialContext(results_dir=results, show_progress=False))
    assert again["cache_hit_features"] is True and again["cache_hit_finetune"] is False
    assert [round(r["lr"], 8) for r in _history(results)["history"]] == [round(2e-3 * 64 / 256, 8)] * 2


@pytest.mark.slow
def test_collapsed_features_fail_the_tune_trial(cached, results, monkeypatch):
    from ray import tune

    class Context:
        def get_trial_id(self):
            return "collapse-1"

    reports = []
    monkeypatch.setattr(tune, "report", reports.append)
    monkeypatch.setattr(tune, "get_context", Context)
    tune_trainable({"finetune.min_feature_std": 1e3}, base=TINY,
                   context=TrialContext(results_dir=results, show_progress=False, sweep="s"))
    assert "features collapsed" in reports[0][TRIAL_ERROR_KEY] and math.isnan(reports[0]["val_auroc"])


@pytest.mark.slow
def test_svd_taps_trial_completes_with_token_pruning_and_whitened_svd(cached, results):
    metrics = run_trial({**TINY, "finetune.method": "full", "model.head": "svd_taps", "tokens.r_max": 0.5,
                         "compress.svd_space": "whitened", "compress.tau_svd": 0.8},
                        TrialContext(results_dir=results, show_progress=False))
    assert metrics["cache_hit_pretrain"] is True and metrics["cache_hit_whitening"] is False
    assert 0 < metrics["tokens_last_layer"] < 64 and metrics["params"] < metrics["params_uncompressed"]
    assert math.isfinite(metrics["val_auroc"]) and metrics["feature_std"] > 1e-3
