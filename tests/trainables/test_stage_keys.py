"""Every stage's cache key, pinned: a refactor of the trial must not orphan a stored sweep's cache.

Training is replaced by a seeded untrained model (the keys depend on configs, parent keys and
the data fingerprint, never on trained weights); every other stage runs for real on the
embedded digits data.
"""

import pytest
import torch

from trainables import runner
from trainables.cache import StageCache
from trainables.job import build_stage_model
from trainables.model import finalize_model
from trainables.config import TrialConfig
from trainables.trial import TrialContext, build_trial_model, outcome_key

TINY = {"data.train_limit": 96, "data.val_limit": 64, "calib.batches": 1, "calib.batch_size": 16,
        "eval.batch_size": 64}

# Stage keys as computed before the trial was split into stage functions (commit 987b2d3).
PRETRAIN = "pretrain/8b66a5361897e65e49ac"
PINNED = {
    "default": [PRETRAIN, "finetune/b131fbdf2bba92e229e0"],
    "lora_prehab": [PRETRAIN, "finetune/4b27e0b4324a2e874c7d", "whitening/b20c9e6ae8a437ec84b8",
                    "prehab/9aef0692b42b9f163584", "whitening/9b1db2dc5245ac92fbf9"],
    "head_only": [PRETRAIN, "finetune/0a9d4157f66fea62aad5", "features/3a78334c24d30f53876f"],
    "tokens_training": [PRETRAIN, "finetune/2562799c324a47b4c546"],
    "svd_taps": [PRETRAIN, "finetune/c9a79d03df794ae4bd3a", "features/05c2055a2f00d7e43023",
                 "prehab/a1f34cc66300fde5a0ea"],
    "recover_whitened": [PRETRAIN, "finetune/9e90fe86c57fa991cbdc", "whitening/2ce093c679967c12d079",
                         "recover/d4e074dcd225f27b4eb4"],
}
PINNED_OUTCOME = "97b3763acd5c1cbd6ecd"
CONFIGS = {
    "default": {},
    "lora_prehab": {"finetune.method": "lora", "finetune.lora_rank": 4, "finetune.lora_mlp": True,
                    "prehab.lambda": 0.001, "compress.tau_svd": 0.9, "compress.svd_space": "whitened"},
    "head_only": {"finetune.method": "head_only", "compress.tau_heads": 0.8},
    "tokens_training": {"finetune.epochs": 4, "tokens.r_max": 0.5, "tokens.alpha": 2.0,
                        "tokens.train_from_epoch": "middle"},
    "svd_taps": {"model.head": "svd_taps", "finetune.method": "head_only", "prehab.lambda": 0.01,
                 "prehab.space": "raw"},
    "recover_whitened": {"compress.tau_heads": 0.7, "compress.tau_svd": 0.8, "compress.svd_space": "whitened",
                         "recover.epochs": 1, "finetune.lr_scaling": "linear", "data.stain_norm": "none"},
}


def _untrained(job, work_dir, *, show_progress=True, on_epoch=None):
    torch.manual_seed(0)
    return finalize_model(build_stage_model(job)), {"history": [], "best": {"score": 0.0, "epoch": 0}}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return str(tmp_path_factory.mktemp("keys"))


def stage_keys(flat, results, monkeypatch) -> list[str]:
    """Return "stage/key" of every cached stage one trial goes through, in order."""
    seen: list[str] = []
    original = StageCache.get_or_compute

    def recording(self, stage, key, compute, **kwargs):
        seen.append(f"{stage}/{key}")
        return original(self, stage, key, compute, **kwargs)

    monkeypatch.setattr(StageCache, "get_or_compute", recording)
    monkeypatch.setattr(runner, "run_local", _untrained)
    build_trial_model({**TINY, **flat}, TrialContext(results_dir=results, show_progress=False))
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_stage_keys_are_unchanged(name, results, monkeypatch):
    assert stage_keys(CONFIGS[name], results, monkeypatch) == PINNED[name]


def test_outcome_key_is_unchanged():
    flat = TrialConfig.from_flat({"compress.tau_mlp": 0.9, "finetune.method": "lora"}).key_flat()
    assert outcome_key(flat, "sweep-1", "trial_00001") == PINNED_OUTCOME
