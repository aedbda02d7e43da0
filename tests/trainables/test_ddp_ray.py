"""DDP on CPU: two Ray Train workers (gloo) train on disjoint halves and score validation once."""

import os

import pytest

from trainables.data.datasets import ensure_digits
from trainables.job import TrainJob
from trainables.runner import run_on_ray

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TRAIN, VALID = 384, 270
# A linear head on a random-init digits ViT: it learns in seconds, and DDP still has to keep the
# workers' heads in sync. The global batch is 16 in both runs.
FLAT = {"data.train_limit": TRAIN, "data.val_limit": VALID, "finetune.method": "head_only", "finetune.epochs": 2,
        "finetune.lr": 3e-2, "finetune.warmup_frac": 0.0, "model.pooling": "mean", "finetune.cpus_per_worker": 0.9}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    tmp = tmp_path_factory.mktemp("ray")
    root = str(ensure_digits(tmp / "digits"))
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(tmp), log_to_driver=False)
    try:
        out = {}
        # The one-worker run asks for 2 torch threads on its 0.9 CPU (what the digits preset does).
        for workers, batch, threads in ((1, 16, 2), (2, 8, 0)):
            job = TrainJob("finetune", {**FLAT, "finetune.workers": workers, "finetune.batch_size": batch,
                                        "finetune.threads_per_worker": threads}, root)
            _, summary = run_on_ray(job, run_name=f"ddp-{workers}", storage_path=str(tmp / "train"))
            out[workers] = summary["history"]
        yield out
    finally:
        ray.shutdown()


def test_two_workers_train_on_disjoint_halves(runs):
    for record in runs[2]:
        assert record["train_overlap"] == 0
        assert record["train_images"] == TRAIN  # 2 x 192: every training image once per epoch


def test_one_worker_trains_on_every_image(runs):
    assert [r["train_images"] for r in runs[1]] == [TRAIN, TRAIN]


def test_validation_scores_every_image_exactly_once(runs):
    assert all(r["val_images"] == VALID for r in runs[1] + runs[2])


def test_two_workers_reach_the_one_worker_auroc(runs):
    one, two = runs[1][-1]["val_auroc"], runs[2][-1]["val_auroc"]
    assert one > 0.6 and two > 0.6, (one, two)   # both learned something
    assert abs(one - two) < 0.05, (one, two)


def test_threads_per_worker_sets_the_workers_torch_threads(runs):
    assert [r["threads"] for r in runs[1]] == [2, 2]     # finetune.threads_per_worker = 2
    # Unset: Ray's default, floor(0.9 CPU) but at least 1, unless the environment fixes it.
    assert [r["threads"] for r in runs[2]] == [int(os.environ.get("OMP_NUM_THREADS", 1))] * 2
