"""prehab.kind fisher_weighted end to end: the Fisher is a cached stage of its own and the prehab trains on it.

The trial is the session digits sweep's (tests/conftest.py digits_sweep) with prehab on, run in this
process on a copy of that sweep's pretrain and fine-tune: only the Fisher, whitening and prehab train here.
"""

import shutil
from pathlib import Path

import pytest
import torch

from trainables.config import parse_overrides
from trainables.trial import TrialContext, run_trial
from tune.presets import PRESETS
from tune.sweep import build_base

from _digits_sweep import TINY_SWEEP

PREHAB = {"prehab.lambda": 0.01, "prehab.kind": "fisher_weighted", "compress.svd_space": "whitened",
          "compress.tau_svd": 0.8, "compress.svd_targets": "v,down", "calib.batches": 2, "calib.batch_size": 16}


@pytest.mark.slow
def test_a_fisher_weighted_prehab_trial_caches_the_fisher_and_trains_with_it(digits_sweep, tmp_path):
    for stage in ("pretrain", "finetune"):
        shutil.copytree(digits_sweep.results / "cache" / stage, tmp_path / "cache" / stage,
                        ignore=shutil.ignore_patterns(".*"))
    sets = parse_overrides([TINY_SWEEP[i + 1] for i, arg in enumerate(TINY_SWEEP) if arg == "--set"])
    trial = {**build_base(PRESETS["digits"], sets, "seed_only"), **PREHAB}
    context = TrialContext(results_dir=str(tmp_path), show_progress=False)
    first = run_trial(trial, context)
    assert (first["cache_hit_pretrain"], first["cache_hit_finetune"], first["cache_hit_fisher"]) == (True, True, False)
    cache = tmp_path / "cache"
    (fisher_entry,) = [p for p in (cache / "fisher").iterdir() if p.is_dir()]
    fisher = torch.load(fisher_entry / "fisher.pt", weights_only=True)
    assert sorted({".".join(name.split(".")[-2:]) for name in fisher}) == ["attention.v_proj", "mlp.down_proj"]
    assert all(values.ndim == 1 and (values >= 0).all() and values.sum() > 0 for values in fisher.values())
    assert first["cache_hit_prehab"] is False
    # The same trial again: the Fisher and the prehab are cache hits.
    again = run_trial(trial, context)
    assert (again["cache_hit_fisher"], again["cache_hit_prehab"]) == (True, True)
