"""One trial end to end, in-process (fast) and through Ray Train (marked ray)."""

import threading
from pathlib import Path

import numpy as np
import pytest

from trainables.cache import MANIFEST_NAME, StageCache
from trainables.trial import TrialContext, main, run_trial, tune_trainable

TINY = {
    "data.train_limit": 192, "data.val_limit": 128, "pretrain.epochs": 1, "pretrain.batch_size": 64,
    "finetune.epochs": 1, "finetune.batch_size": 64, "eval.latency_repeats": 3,
    "eval.latency_warmup": 1, "calib.batches": 2,
}
OBJECTIVES = {"val_auroc", "params", "latency_ms", "gflops"}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A results folder whose pretrain/finetune entries the first trial fills."""
    return str(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def first(results):
    return run_trial(TINY, TrialContext(results_dir=results, show_progress=False))


@pytest.mark.slow
def test_trial_reports_objectives_and_secondary_metrics(first):
    assert OBJECTIVES <= set(first)
    assert {"val_auprc", "val_ece", "device", "cache_hit_finetune", "stage_s_finetune"} <= set(first)
    assert 0.0 <= first["val_auroc"] <= 1.0 and first["params"] == first["params_uncompressed"]


@pytest.mark.slow
def test_trial_records_its_validation_temperature_and_cross_fitted_calibration(first):
    assert 0.01 <= first["val_temperature"] <= 100.0
    assert 0.0 <= first["val_ece_cal"] <= 1.0 and first["val_nll_cal"] > 0.0


@pytest.mark.slow
def test_trial_reports_intervals_around_its_metrics(first):
    for name in ("val_auroc", "val_auprc", "val_accuracy", "latency_ms"):
        assert first[f"{name}_lo"] <= first[name] <= first[f"{name}_hi"], name
    assert first["val_auroc_hi"] > first["val_auroc_lo"]
    assert first["latency_threads"] >= 1


@pytest.mark.slow
def test_first_trial_computes_its_training_stages(first):
    assert first["cache_hit_pretrain"] is False and first["cache_hit_finetune"] is False


@pytest.mark.slow
def test_same_finetune_config_is_a_cache_hit(first, results):
    second = run_trial({**TINY, "compress.tau_mlp": 0.9, "tokens.r_max": 0.5},
                       TrialContext(results_dir=results, show_progress=False))
    assert second["cache_hit_finetune"] is True and second["cache_hit_pretrain"] is True
    assert second["stage_s_finetune"] < first["stage_s_finetune"] / 3
    assert second["params"] < first["params"] and second["gflops"] < first["gflops"]


@pytest.mark.slow
def test_an_int8_trial_is_scored_and_timed_in_onnx_runtime(first, results):
    metrics = run_trial({**TINY, "compress.quant": "int8", "eval.runtime": "onnxruntime"},
                        TrialContext(results_dir=results, show_progress=False))
    assert metrics["eval_runtime"] == "onnxruntime" and metrics["quant"] == "int8"
    assert metrics["params"] == first["params"]            # the count is the count, whatever the storage
    assert metrics["model_bytes"] < first["model_bytes"] / 3
    assert metrics["cache_hit_finetune"] is True            # quantization keys no training stage
    assert 0.0 <= metrics["val_auroc"] <= 1.0 and metrics["latency_ms"] > 0


@pytest.mark.slow
def test_whitened_svd_and_prehab_stages_run_and_are_cached(first, results):
    flat = {**TINY, "compress.svd_space": "whitened", "compress.tau_svd": 0.8, "prehab.lambda": 0.01,
            "prehab.space": "whitened"}
    ctx = TrialContext(results_dir=results, show_progress=False)
    once = run_trial(flat, ctx)
    again = run_trial(flat, ctx)
    assert once["cache_hit_prehab"] is False and again["cache_hit_prehab"] is True
    assert again["cache_hit_whitening"] is True
    assert once["val_auroc"] == pytest.approx(again["val_auroc"])


@pytest.mark.slow
def test_data_aware_importance_scores_are_a_cached_stage(first, results):
    flat = {**TINY, "compress.tau_heads": 0.5, "compress.tau_mlp": 0.5, "compress.importance": "taylor",
            "compress.allocation": "global"}
    ctx = TrialContext(results_dir=results, show_progress=False)
    once = run_trial(flat, ctx)
    # recover rebuilds the compressed model from the cached scores (TrainJob.scores_path).
    again = run_trial({**flat, "compress.tau_mlp": 0.4, "recover.epochs": 1}, ctx)
    assert once["cache_hit_importance"] is False and again["cache_hit_importance"] is True
    assert again["cache_hit_recover"] is False
    assert again["params"] < once["params"] < first["params"]
    assert "cache_hit_importance" not in first


@pytest.mark.slow
def test_recover_stage_trains_the_compressed_model(first, results):
    metrics = run_trial({**TINY, "compress.tau_heads": 0.7, "recover.epochs": 1},
                        TrialContext(results_dir=results, show_progress=False))
    assert metrics["cache_hit_recover"] is False and metrics["params"] < first["params"]


@pytest.mark.slow
def test_corrupt_finetune_entry_is_recomputed(first, results):
    flat = {**TINY, "finetune.method": "head_only"}
    ctx = TrialContext(results_dir=results, show_progress=False)
    run_trial(flat, ctx)
    entries = [p for p in (Path(results) / "cache" / "finetune").iterdir()
               if p.is_dir() and (p / MANIFEST_NAME).exists()]
    damaged = 0
    for entry in entries:
        for weights in entry.rglob("*.safetensors"):
            data = bytearray(weights.read_bytes())
            data[len(data) // 2] ^= 0xFF
            weights.write_bytes(bytes(data))
            damaged += 1
    assert damaged
    assert run_trial(flat, ctx)["cache_hit_finetune"] is False


@pytest.mark.slow
def test_concurrent_trials_with_one_key_train_once(tmp_path):
    ctx = TrialContext(results_dir=str(tmp_path), show_progress=False)
    outcomes, errors = [], []

    def trial(tau: float) -> None:
        try:
            outcomes.append(run_trial({**TINY, "compress.tau_mlp": tau}, ctx))
        except Exception as err:  # surfaced by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=trial, args=(tau,)) for tau in (0.9, 0.95)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(o["cache_hit_finetune"] for o in outcomes) == [False, True]
    assert len(list((tmp_path / "cache" / "finetune").iterdir())) == 1


class _FakeTuneContext:
    def __init__(self, trial_id: str):
        self.trial_id = trial_id

    def get_trial_id(self) -> str:
        return self.trial_id


@pytest.mark.slow
def test_a_rerun_tune_trial_reports_its_stored_metrics(first, results, monkeypatch):
    """Tune reruns a trial restored after a driver crash: it must report what it measured."""
    from ray import tune

    reports = []
    monkeypatch.setattr(tune, "report", reports.append)
    for sweep, trial_id in (("s1", "trial-a"), ("s1", "trial-a"), ("s1", "trial-b"), ("s2", "trial-a")):
        monkeypatch.setattr(tune, "get_context", lambda trial_id=trial_id: _FakeTuneContext(trial_id))
        ctx = TrialContext(results_dir=results, show_progress=False, sweep=sweep)
        tune_trainable({"compress.tau_mlp": 0.93}, base=TINY, context=ctx)
    measured, rerun, other_trial, other_sweep = reports
    assert [r["outcome_replayed"] for r in reports] == [False, True, False, False]
    assert {k: v for k, v in rerun.items() if k != "outcome_replayed"} == \
        {k: v for k, v in measured.items() if k != "outcome_replayed"}
    # the stored outcome keeps the validation probabilities, 4 bytes an image, for paired comparisons
    entry = StageCache(results).get("outcome", measured["outcome_key"])
    probs, labels = np.load(entry / "probs.npy"), np.load(entry / "labels.npy")
    assert probs.dtype == np.float32 and probs.shape == labels.shape == (TINY["data.val_limit"],)
    assert rerun["outcome_key"] == measured["outcome_key"] != other_trial["outcome_key"]
    # another trial id, or the same id in another sweep sharing the cache, is measured afresh
    assert measured["trial_s"] not in (other_trial["trial_s"], other_sweep["trial_s"])


@pytest.mark.slow
def test_debug_cli_prints_the_metrics(results, first, capsys):
    args = ["--results-dir", results, "--no-progress"]
    for key, value in TINY.items():
        args += ["--set", f"{key}={value}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "val_auroc" in out and "cache_hit_finetune" in out


def test_debug_cli_rejects_a_bad_key(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--set", "compress.tau_mlp=1.5"])
    assert exit_info.value.code == 2
    assert "compress.tau_mlp must be in (0, 1]" in capsys.readouterr().err


@pytest.mark.slow
def test_lora_on_attention_and_mlp_merges_then_compresses_with_whitened_svd(first, results):
    flat = {**TINY, "finetune.method": "lora", "finetune.lora_rank": 8, "finetune.lora_mlp": True,
            "compress.svd_space": "whitened", "compress.tau_svd": 0.9}
    metrics = run_trial(flat, TrialContext(results_dir=results, show_progress=False))
    assert metrics["cache_hit_finetune"] is False and metrics["cache_hit_whitening"] is False
    assert metrics["params"] < metrics["params_uncompressed"]
    attention_only = run_trial({**flat, "finetune.lora_mlp": False},
                               TrialContext(results_dir=results, show_progress=False))
    assert attention_only["cache_hit_finetune"] is False  # lora_mlp keys the fine-tune


@pytest.mark.slow
def test_tta_is_evaluation_only_and_costs_every_pass(first, results):
    ctx = TrialContext(results_dir=results, show_progress=False)
    flips = run_trial({**TINY, "eval.tta": "flips"}, ctx)
    assert flips["cache_hit_finetune"] is True and flips["tta_passes"] == 4 and first["tta_passes"] == 1
    assert flips["gflops"] == pytest.approx(4 * first["gflops"], rel=1e-6)
    assert flips["params"] == first["params"]


@pytest.mark.slow
def test_training_time_pruning_keys_its_own_finetune(first, results):
    ctx = TrialContext(results_dir=results, show_progress=False)
    pruned = {**TINY, "tokens.r_max": 0.5, "tokens.alpha": 1.2}
    inference_only = run_trial(pruned, ctx)
    assert inference_only["cache_hit_finetune"] is True
    trained = run_trial({**pruned, "tokens.train_from_epoch": 1}, ctx)
    assert trained["cache_hit_finetune"] is False
    assert trained["tokens_last_layer"] == inference_only["tokens_last_layer"]


def test_debug_cli_refuses_an_option_the_method_does_not_use(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--set", "finetune.method=full", "--set", "finetune.lora_rank=16"])
    assert exit_info.value.code == 2
    assert "finetune.lora_rank do(es) not apply to finetune.method='full'" in capsys.readouterr().err


@pytest.mark.parametrize(("objectives", "timed"), [(("val_auroc", "params", "latency_rel"), True),
                                                    (("val_auroc", "params", "latency_ms"), False)])
def test_a_latency_rel_objective_makes_the_trial_time_it(objectives, timed, tmp_path, monkeypatch):
    """A sweep that names latency_rel gets it measured, whatever its preset sets."""
    import trainables.data.inputs
    import trainables.trial
    from ray import tune

    from trainables.evaluate.evaluation import Predictions

    evaluated, reports = [], []

    def fake_evaluate_trial(cfg, context):
        evaluated.append(cfg)
        return {"val_auroc": 0.5}, Predictions(np.zeros(2, np.int64), np.zeros(2, np.float32))

    monkeypatch.setattr(trainables.trial, "evaluate_trial", fake_evaluate_trial)
    monkeypatch.setattr(trainables.trial, "data_root", lambda cfg, ctx: str(tmp_path))
    monkeypatch.setattr(trainables.data.inputs, "check_inputs", lambda cfg, root: None)
    monkeypatch.setattr(tune, "get_context", lambda: _FakeTuneContext("trial-a"))
    monkeypatch.setattr(tune, "report", reports.append)
    tune_trainable({}, base=dict(TINY), context=TrialContext(results_dir=str(tmp_path), show_progress=False),
                   objectives=objectives)
    assert evaluated[0].eval.latency_rel is timed and len(reports) == 1   # the config parsed once
