"""Run one training stage either in this process or on Ray Train workers, and return its model.

In-process (`backend="local"`) is what `--debug-trial` uses: breakpoints work, tqdm shows
epochs and batches. On Ray (`backend="ray"`) the stage becomes a `TorchTrainer` run named
`<stage>-<key>` on the sweep's storage, so a retried or restored trial resumes the same run
from its last epoch checkpoint (Ray Train 2.60: a new TorchTrainer with the same name and
storage picks up its snapshot).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from trainables.job import TrainJob
from trainables.train.loop import best_model, train_loop
from trainables.refs import resolve_ref
from trainables.train.sessions import DIVERGED_FILE, LocalSession, RayTrainSession, pick_device, raise_if_diverged
from trainables.storage import EPOCHS_FILE
from trainables.train.entry import EpochLog, ray_worker, worker_config

log = logging.getLogger(__name__)

# Ray Train's controller polls its workers every this many seconds (Ray's default: 2); a run's
# start, each epoch's report and its end reach the controller only at a poll, which a short
# stage pays several times over: a 3-epoch run took 15.0 s at 2 s and 11.0 s at 0.5, its
# training work unchanged (bench/bench_train_poll.py; 0.1 s saved one second more there and
# nothing measurable in the test suite, so the polls stay at a modest rate for large groups).
# A worker too busy to answer is awaited again at the next poll and declared dead only after
# RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S (10 min). Ray Train passes this variable from the
# process that calls fit() on to its controller and workers, on a cluster too.
TRAIN_POLL_ENV, TRAIN_POLL_DEFAULT_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5"


def set_train_poll_default() -> str:
    """Set Ray Train's poll interval to 0.5 s unless the environment sets one; return the value in force."""
    return os.environ.setdefault(TRAIN_POLL_ENV, TRAIN_POLL_DEFAULT_S)


def make_penalty(job: TrainJob) -> Callable[[nn.Module], torch.Tensor] | None:
    """Return lambda * low-rank surrogate over the SVD targets for prehab, else None."""
    if job.stage != "prehab":
        return None
    from compress import load_input_stats, lowrank_penalty

    cfg = job.config
    stats = None
    if cfg.prehab.space == "whitened":
        if job.whitening_path is None:
            raise ValueError("prehab.space 'whitened' needs whitening statistics (whitening_path)")
        stats = load_input_stats(str(resolve_ref(job.whitening_path, job.cache_root)))
    fisher = None
    if job.fisher_path is not None:
        fisher = torch.load(str(resolve_ref(job.fisher_path, job.cache_root)), weights_only=True)
    lam, kind, targets = cfg.prehab.lambda_, cfg.prehab.kind, cfg.compress.svd_targets

    def penalty(model: nn.Module) -> torch.Tensor:
        return lam * lowrank_penalty(model, kind, whitening=stats, targets=targets, fisher=fisher)

    return penalty


def _worker_device(kind: str) -> torch.device:
    if kind == "cuda":
        import ray.train.torch

        return ray.train.torch.get_device()
    return torch.device(kind)


def train_on_worker(job: TrainJob, device: str) -> None:
    """Train `job` on this Ray Train worker (trainables.train.entry.ray_worker calls it), reporting
    a checkpoint every epoch."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    session = RayTrainSession(_worker_device(device))
    try:
        train_loop(job, session, make_penalty(job))
    except FloatingPointError as err:
        # Divergence is deterministic: raising would make Train restart the worker group and
        # diverge again. Record it as the run's last checkpoint; the trial raises it once.
        if session.rank != 0:
            session.save_checkpoint(None, {"diverged": 1.0})
            return
        with tempfile.TemporaryDirectory(prefix="diverged-") as tmp:
            (Path(tmp) / DIVERGED_FILE).write_text(json.dumps({"reason": str(err)}))
            session.save_checkpoint(Path(tmp), {"diverged": 1.0})


def run_local(job: TrainJob, work_dir: Path, *, show_progress: bool = True,
              on_epoch=None) -> tuple[nn.Module, dict]:
    """Train the job in this process (resuming from work_dir's checkpoint); return (best model, history)."""
    device = pick_device(job.config.run.device)
    session = LocalSession(work_dir, device, show_progress=show_progress)
    train_loop(job, session, make_penalty(job), on_epoch=on_epoch)
    return best_model(job, session.checkpoint_dir)


def run_on_ray(job: TrainJob, *, run_name: str, storage_path: str, storage_filesystem=None,
               epochs_path: str | None = None, max_failures: int = 2) -> tuple[nn.Module, dict]:
    """Train the job on a TorchTrainer (N workers: DDP over nccl on CUDA, gloo on CPU); return (best model, history).

    Each epoch is logged for the sweep's console: in the run's epochs.jsonl on local storage, or
    as objects under `epochs_path` on `storage_filesystem` (none logged when that is None).
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg = job.config
    device = pick_device(cfg.run.device) if cfg.run.device != "auto" else _cluster_device()
    use_gpu = device.type == "cuda"
    # DDP runs on CUDA (nccl) and on CPU (gloo). gloo has no MPS tensors and a Mac has one
    # GPU, so on MPS the stage trains in one worker.
    workers = 1 if device.type == "mps" else cfg.finetune.workers
    if workers != cfg.finetune.workers:
        log.warning("finetune.workers=%d ignored on mps: one worker (torch.distributed has no MPS backend)",
                    cfg.finetune.workers)
    resources = {"CPU": cfg.finetune.cpus_per_worker}
    threads = cfg.finetune.threads_per_worker
    # Ray gives a worker floor(CPUs) OpenMP threads. More threads than reserved CPUs pay where
    # the trial driver idles beside the worker (digits: 0.1 + 0.9 CPU on 2 cores); passive
    # waiting keeps them from spinning against each other when the cores are busy elsewhere.
    worker_env = {"env_vars": {"OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}} if threads else None
    trainer = TorchTrainer(
        ray_worker,
        train_loop_config=worker_config(dataclasses.replace(job, threads=threads), device.type),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources,
            accelerator_type=(cfg.finetune.accelerator_type or None) if use_gpu else None),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=storage_path, storage_filesystem=storage_filesystem,
            callbacks=_epoch_logs(run_name, storage_path, storage_filesystem, epochs_path),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            worker_runtime_env=worker_env,
            failure_config=ray.train.FailureConfig(max_failures=max_failures,
                                                   controller_failure_limit=3),
        ),
    )
    set_train_poll_default()
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {run_name!r} finished without a checkpoint; see its logs under {storage_path}")
    with result.checkpoint.as_directory() as directory:
        raise_if_diverged(Path(directory))
        return best_model(job, Path(directory))


def _epoch_logs(run_name: str, storage_path: str, storage_filesystem, epochs_path: str | None) -> list:
    if storage_filesystem is None:
        return [EpochLog(str(Path(storage_path) / run_name / EPOCHS_FILE), run_name)]
    return [EpochLog(epochs_path, run_name, storage_filesystem)] if epochs_path else []


def _cluster_device() -> torch.device:
    """Return cuda when the Ray cluster has GPUs (workers may sit on other nodes), else the local best device."""
    import ray

    if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0:
        return torch.device("cuda")
    return pick_device("auto")

