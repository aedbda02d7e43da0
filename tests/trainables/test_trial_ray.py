"""The same trial through Ray Train (one worker) reports what the in-process trial reports."""

import os
import shutil

import pytest

from trainables.trial import TrialContext, run_trial

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TINY = {
    "data.train_limit": 128, "data.val_limit": 128, "pretrain.epochs": 1, "finetune.epochs": 1,
    "eval.latency_repeats": 3, "eval.latency_warmup": 1,
}


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    tmp = tmp_path_factory.mktemp("ray")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(tmp), log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_train_trial_reports_the_same_metric_keys(ray_local, tmp_path):
    local = run_trial(TINY, TrialContext(results_dir=str(tmp_path / "local"), show_progress=False))
    ray_results = tmp_path / "ray"
    # The backbone comes from the local run's cache: the fine-tune is the stage that runs on Ray
    # Train here (the digits sweeps in tests/tune pretrain on Ray Train too), one Train run fewer.
    shutil.copytree(tmp_path / "local" / "cache" / "pretrain", ray_results / "cache" / "pretrain")
    remote = run_trial(TINY, TrialContext(results_dir=str(ray_results), backend="ray"))
    assert set(remote) == set(local)
    assert remote["cache_hit_pretrain"] is True and remote["cache_hit_finetune"] is False
    # The Train runs are named by stage and key on the sweep's storage, so a retry resumes them.
    runs = sorted(p.name.split("-")[0] for p in (ray_results / "train").iterdir())
    assert runs == ["finetune"]
    # Same seed, same data, same code path inside the worker: the same model comes out.
    assert remote["val_auroc"] == pytest.approx(local["val_auroc"], abs=1e-6)
