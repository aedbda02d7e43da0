"""Cache keys are a stored format: the same trial config must key the same entries across refactors.

The keys below were computed on main (987b2d3) before the configs became one typed plan per
idea; a change here orphans every cached stage and stored outcome of existing sweeps.
"""

from pathlib import Path

import pytest

from trainables.cache import stage_key
from trainables.config import TrialConfig
from trainables.trial import TrialContext, run_trial, tune_trainable

# One trial that runs every keyed stage: pretrain, fine-tune pruning tokens from epoch 1,
# whitening statistics, prehab, whitened SVD over a subset of roles, recover.
EVERY_STAGE = {
    "data.train_limit": 128, "data.val_limit": 64, "pretrain.epochs": 1, "pretrain.batch_size": 64,
    "finetune.epochs": 1, "finetune.batch_size": 64, "eval.latency_repeats": 2, "eval.latency_warmup": 1,
    "eval.latency_rounds": 1, "calib.batches": 1, "prehab.lambda": 0.01, "compress.svd_space": "whitened",
    "compress.tau_svd": 0.8, "compress.tau_heads": 0.9, "compress.svd_targets": "q,v,down",
    "tokens.r_max": 0.5, "tokens.alpha": 1.2, "tokens.train_from_epoch": 1, "recover.epochs": 1,
}
PINNED = {
    "pretrain": ["0d28f3a204d29a4232e6"], "finetune": ["6ca7a35d2fb3d9cf4c1e"],
    "whitening": ["0c18512eb3f778f4229a", "a7a57759df9f7669e459"], "prehab": ["7e36a0d66a3f96c7573a"],
    "recover": ["46bd5ae24306bdebe466"], "outcome": "d2c24bbe4f31bd04c934",
}

SEED = {"compress.tau_heads": 0.89, "compress.tau_mlp": 0.975, "compress.tau_svd": 0.975,
        "compress.svd_space": "raw", "tokens.r_max": 0.0, "tokens.alpha": 1.0, "prehab.lambda": 0.0}
SEARCHED = {"finetune.method": "lora", "finetune.lora_rank": 16, "compress.svd_targets": "q,v,down",
            "compress.svd_space": "whitened", "tokens.r_max": 0.5, "tokens.alpha": 1.2,
            "tokens.train_from_epoch": "middle", "finetune.epochs": 3, "tokens.fuse": True, "prehab.lambda": 0.01}
# (outcome, finetune fields, whitening targets, recover fields) keys, computed on main 987b2d3.
FAST_PINNED = {
    "defaults": ({}, ("33a7868218a537e76c63", "11c389f1046bde62eb71", "b80878d24a14bb4e21a7", "4743bffbdcb023afe4ea")),
    "seed": (SEED, ("05120f1fd8399c91b647", "11c389f1046bde62eb71", "b80878d24a14bb4e21a7", "c67c97cb2adbcfbcd3a9")),
    "searched": (SEARCHED, ("d641ff3425b10b18960a", "5f6d289ab7ed7eafeb8c", "75ac0605f950a3265af9",
                            "1bd5c6a479a35fcf6f22")),
}


@pytest.mark.parametrize("name", sorted(FAST_PINNED))
def test_config_sections_key_as_they_did(name):
    from trainables.trial import outcome_key

    flat, pinned = FAST_PINNED[name]
    cfg = TrialConfig.from_flat(flat)
    keys = (outcome_key(cfg.key_flat(), "s1", "t1"),
            stage_key("finetune", cfg.finetune_key_fields(), None, "fp"),
            stage_key("whitening", {"targets": list(cfg.compress.svd_targets)}, None, "fp"),
            stage_key("recover", cfg.recover_key_fields(), None, "fp"))
    assert keys == pinned


def test_a_list_of_targets_keys_like_the_comma_string():
    as_list = TrialConfig.from_flat({**SEARCHED, "compress.svd_targets": ["q", "v", "down"]})
    assert as_list.key_flat() == TrialConfig.from_flat(SEARCHED).key_flat()


class _FakeTuneContext:
    def get_trial_id(self) -> str:
        return "trial-a"


def _entries(results: str) -> dict[str, list[str]]:
    cache = Path(results) / "cache"  # <results>/cache/<stage>/<key>/
    return {stage: sorted(p.name for p in (cache / stage).iterdir() if p.is_dir())
            for stage in ("pretrain", "finetune", "whitening", "prehab", "recover")}


@pytest.mark.slow
def test_every_stage_keeps_the_keys_it_had(tmp_path, monkeypatch):
    from ray import tune

    results = str(tmp_path)
    run_trial(EVERY_STAGE, TrialContext(results_dir=results, show_progress=False))
    reports = []
    monkeypatch.setattr(tune, "report", reports.append)
    monkeypatch.setattr(tune, "get_context", _FakeTuneContext)
    tune_trainable({}, base=EVERY_STAGE,
                   context=TrialContext(results_dir=results, show_progress=False, sweep="s1"))
    assert {**_entries(results), "outcome": reports[0]["outcome_key"]} == PINNED
