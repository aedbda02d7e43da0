"""The stages of one trial, each declared once as a `Stage` record over the frozen `TrialConfig`.

A cached stage (pretrain, finetune, whitening, fisher, prehab, importance, recover; features inside a
head_only fine-tune) is content addressed: its key hashes what of the config determines its result
(its `key_config`, built from the fields' key rules: trainables.key_rules), its parent's key and the
data fingerprint. A `Stage` says when a trial runs it (`runs`), how it writes its entry and what it
records with the metrics; `Stage.run` returns one `StageOutput` (a `cache:` reference to the result,
its key, its facts), which the next stage takes as its parent. compress and prune_tokens are the
in-process steps on a model. `TrialRun` is the bookkeeping the stages share: the cache, the data,
hits and seconds per stage. trainables.trial.build_trial_model composes them.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from compress import (
    collect_input_stats, collect_output_fisher, count_params, enable_token_pruning, load_compressed, save_compressed,
    save_input_stats, save_unit_scores, unit_scores,
)
from compress.config import FISHER_WEIGHTED
from trainables.cache import StageCache, stage_key
from trainables.config import TrialConfig
from trainables.data.datasets import data_fingerprint, dataset_prefix, ensure_digits, make_dataset
from trainables.job import TrainJob, build_stage_model, compress_structure, scale_learning_rates, stage_settings
from trainables.key_rules import stage_record
from trainables.model import finalize_model
from trainables.refs import cache_ref, resolve_ref
from trainables.storage import local_scratch, remote_epochs_path, train_storage
from trainables.train.features import (
    FEATURE_SPLITS, check_collapse, pooled_feature_std, read_collapse, record_collapse,
    train_head_on_features, write_feature_cache,
)
from trainables.train.loop import autocast_dtype
from trainables.train.sessions import pick_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialContext:
    """Where a trial runs and stores things; not part of any training stage's cache key."""

    results_dir: str = "results"      # local folder or pyarrow.fs URI: cache + Train runs
    backend: str = "local"            # "local": this process; "ray": training stages on Ray Train
    show_progress: bool = True        # tqdm bars (local backend)
    max_failures: int = 2             # Ray Train worker-group restarts per training stage
    cache_wait_s: float | None = None # give up waiting for another trial's stage after this
    sweep: str = ""                   # the sweep's name: with the Tune trial id, keys stored outcomes

    def __post_init__(self):
        if self.backend not in ("local", "ray"):
            raise ValueError(f"backend must be 'local' or 'ray', got {self.backend!r}")


class StageOutput(NamedTuple):
    """A stage's result as the next stage sees it: a reference (cache:<stage>/<key>/<path>, a
    folder or a Hugging Face id), the key that names it (None for weights given by the user) and
    what the stage records with the trial's metrics."""

    ref: str | None
    key: str | None
    facts: Mapping[str, Any] = MappingProxyType({})


# ---------------------------------------------------------------------------- cache keys


def data_key_config(cfg: TrialConfig) -> dict[str, Any]:
    """Return what of the data section changes a trained stage."""
    return stage_record(cfg.data)


def pretrain_key_config(cfg: TrialConfig) -> dict[str, Any]:
    return {"model": cfg.model.backbone, "pooling": cfg.model.pooling,
            "pretrain": stage_record(cfg.pretrain), "data": data_key_config(cfg), "seed": cfg.run.seed}


def finetune_key_config(cfg: TrialConfig) -> dict[str, Any]:
    return {"model": stage_record(cfg.model), **cfg.finetune_key_fields(), "data": data_key_config(cfg),
            "seed": cfg.run.seed}


def features_key_config(cfg: TrialConfig, parent: str | None) -> dict[str, Any]:
    """What the head inputs depend on: backbone weights (parent), data, image size, pooling, head
    type, and the seed where it initialises the backbone or the tap projections."""
    config = {"data": data_key_config(cfg), "backbone": cfg.model.backbone, "pooling": cfg.model.pooling,
              "head": cfg.model.head, "precision": cfg.finetune.precision}
    if parent is None or cfg.model.head != "linear":
        config["seed"] = cfg.run.seed
    return config


def whitening_key_config(cfg: TrialConfig) -> dict[str, Any]:
    return {"calib": stage_record(cfg.calib), "targets": list(cfg.compress.svd_targets)}


def importance_key_config(cfg: TrialConfig) -> dict[str, Any]:
    """The calibration batches and the score: what the heads' and MLP units' importance depends on."""
    return {"calib": stage_record(cfg.calib), "importance": cfg.compress.importance}


def prehab_key_config(cfg: TrialConfig) -> dict[str, Any]:
    return {"prehab": stage_record(cfg.prehab), "targets": list(cfg.compress.svd_targets),
            "batch_size": cfg.finetune.batch_size}


def recover_key_config(cfg: TrialConfig) -> dict[str, Any]:
    """The recover section and the structural compression plan the recovered model was compressed with."""
    return cfg.recover_key_fields()


# ---------------------------------------------------------------------------- bookkeeping


@dataclass
class TrialRun:
    """What the stages of one trial share: its config, context, data, cache, hits and seconds."""

    cfg: TrialConfig
    ctx: TrialContext
    data_root: str
    fingerprint: str
    cache: StageCache
    hits: dict[str, bool] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def start(cls, cfg: TrialConfig, ctx: TrialContext) -> "TrialRun":
        """Return the run of a trial: its data written where needed and fingerprinted."""
        root = data_root(cfg, ctx)
        return cls(cfg=cfg, ctx=ctx, data_root=root, fingerprint=data_fingerprint(root, dataset_prefix(cfg)),
                   cache=StageCache(ctx.results_dir, wait_timeout_s=ctx.cache_wait_s))

    @property
    def device(self):
        return pick_device(self.cfg.run.device)

    def key(self, stage: str, config: dict[str, Any], parent: str | None) -> str:
        return stage_key(stage, config, parent, self.fingerprint)

    def job(self, stage: str, **refs: str | None) -> TrainJob:
        return TrainJob(stage=stage, config=self.cfg, data_root=self.data_root,
                        cache_root=self.ctx.results_dir, **refs)

    def cached(self, stage: str, key: str, compute: Callable[[Path], None]) -> Path:
        """Return the local folder of the stage's cache entry, computing it if missing."""
        result = self.cache.get_or_compute(stage, key, compute, log=log)
        self.hits[stage] = result.hit
        self.seconds[stage] = result.seconds
        log.info("%s %s: %s in %.1f s", stage, key, "cache hit" if result.hit else "computed", result.seconds)
        return result.path

    def timed(self, stage: str, work: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        value = work()
        self.seconds[stage] = time.perf_counter() - started
        return value

    def train(self, job: TrainJob, key: str, out: Path) -> nn.Module:
        """Run a training stage (locally or on Ray Train); write its history.json into `out`
        and return its best plain model."""
        from trainables.runner import run_local, run_on_ray

        started = time.perf_counter()
        try:
            if self.ctx.backend == "local":
                # Kept until the entry is published, so an interrupted debug run resumes its epochs.
                work_dir = local_scratch(self.ctx.results_dir, Path(tempfile.gettempdir())) / "train-local" / \
                    f"{job.stage}-{key}"
                model, summary = run_local(job, work_dir, show_progress=self.ctx.show_progress)
                shutil.rmtree(work_dir, ignore_errors=True)
            else:
                storage_path, filesystem = train_storage(self.ctx.results_dir)
                model, summary = run_on_ray(job, run_name=f"{job.stage}-{key}", storage_path=storage_path,
                                            storage_filesystem=filesystem,
                                            epochs_path=remote_epochs_path(self.ctx.results_dir, self.ctx.sweep),
                                            max_failures=self.ctx.max_failures)
        except FloatingPointError as err:
            raise FloatingPointError(f"{job.stage} stage diverged: {err}") from err
        summary["seconds"] = time.perf_counter() - started
        (out / "history.json").write_text(json.dumps(summary, indent=1))
        return model

    def loader(self, split: str):
        """Return an unshuffled, unaugmented loader over a split at the evaluation batch size."""
        from torch.utils.data import DataLoader

        return DataLoader(make_dataset(self.cfg, self.data_root, split), batch_size=self.cfg.eval.batch_size,
                          shuffle=False, num_workers=self.cfg.data.loader_workers)

    def calibration_batches(self):
        """Return the calibration batches, (pixels, labels): the first calib.batches of the train split,
        unshuffled, at calib.batch_size. The whitening, Fisher and importance stages all read these."""
        from torch.utils.data import DataLoader

        loader = DataLoader(make_dataset(self.cfg, self.data_root, "train"), batch_size=self.cfg.calib.batch_size,
                            shuffle=False)
        return itertools.islice(loader, self.cfg.calib.batches)


def data_root(cfg: TrialConfig, ctx: TrialContext) -> str:
    """Return the local data folder; the embedded digits set is written there on first use."""
    base = local_scratch(ctx.results_dir, Path(tempfile.gettempdir()) / "vitsweep")
    if cfg.data.dataset == "pcam":
        if cfg.data.synthetic:
            # Written on the node that needs it: on a cluster no other node's disk is visible.
            from trainables.data.synthetic import ensure_synthetic_pcam

            return str(ensure_synthetic_pcam(base / "data" / "pcam-synthetic"))
        return cfg.data.root or "data/pcam"
    if cfg.data.root:
        return str(ensure_digits(cfg.data.root))
    return str(ensure_digits(base / "data" / "digits"))


# ---------------------------------------------------------------------------- the stages

NO_OUTPUT = StageOutput(None, None)


@dataclass(frozen=True)
class Stage:
    """One cached stage, declared: its name, what of the config keys it (`key_config`), when a trial
    runs it (`runs`), how it writes its cache entry (`compute`), the file in the entry the next stage
    reads (`result`) and what it records with the trial's metrics (`facts`).

    `compute(run, key, out, parent, **inputs)` writes the entry into the folder `out`;
    `facts(run, entry, output)` reads them from the published entry.
    """

    name: str
    key_config: Callable[[TrialConfig], dict[str, Any]]
    runs: Callable[[TrialConfig], bool]
    compute: Callable[..., None]
    result: str
    facts: Callable[[TrialRun, Path, StageOutput], dict[str, Any]] | None = None

    def run(self, run: TrialRun, parent: StageOutput = NO_OUTPUT, **inputs: StageOutput) -> StageOutput:
        """Return this stage's output for `parent` (computed, or a cache hit), whether or not `runs` holds."""
        key = run.key(self.name, self.key_config(run.cfg), parent.key)
        entry = run.cached(self.name, key, lambda out: self.compute(run, key, out, parent, **inputs))
        output = StageOutput(cache_ref(self.name, key, self.result), key)
        return output._replace(facts=self.facts(run, entry, output)) if self.facts else output

    def output(self, run: TrialRun, parent: StageOutput = NO_OUTPUT, *, otherwise: StageOutput = NO_OUTPUT,
               **inputs: StageOutput) -> StageOutput:
        """Return `run`'s output when this trial runs the stage, else `otherwise`."""
        return self.run(run, parent, **inputs) if self.runs(run.cfg) else otherwise


def user_weights(cfg: TrialConfig) -> StageOutput:
    """Return the backbone weights the trial names (model.weights), or NO_OUTPUT for a random init."""
    return StageOutput(cfg.model.weights or None, cfg.model.weights or None)


def _pretrain(run: TrialRun, key: str, out: Path, parent: StageOutput) -> None:
    model = run.train(run.job("pretrain"), key, out)
    model.backbone.save_pretrained(out / "backbone")


def _finetune(run: TrialRun, key: str, out: Path, weights: StageOutput) -> None:
    cfg = run.cfg
    job = run.job("finetune", init_weights=weights.ref)
    # Pruning tokens while training changes the backbone's features epoch by epoch.
    if cfg.finetune.uses_feature_cache and cfg.tokens.train_from_epoch == 0:
        model = _finetune_on_features(run, job, weights.key, out)
    else:
        model = run.train(job, key, out)
        record_collapse(out, pooled_feature_std(model, run.loader("valid"), run.device))
    save_compressed(model, out / "model")


def _finetune_facts(run: TrialRun, entry: Path, tuned: StageOutput) -> dict[str, Any]:
    """The collapse watch (the fine-tune's feature spread, checked here) and the model's ref (the
    reports' spectrum diagnostics)."""
    spread = read_collapse(entry)
    if spread is None:  # an entry written before the collapse watch
        spread = pooled_feature_std(load_compressed(entry / "model"), run.loader("valid"), run.device)
    check_collapse(spread, run.cfg.finetune.min_feature_std)
    return {"model_ref_finetune": tuned.ref, "feature_std": spread}


def _finetune_on_features(run: TrialRun, job: TrainJob, parent: str | None, out: Path) -> nn.Module:
    """Train a head_only fine-tune on cached features (computed once per backbone, data and head)
    in this process; write history.json and collapse.json into `out`; return the model."""
    cfg, device = run.cfg, run.device
    started = time.perf_counter()
    key = run.key("features", features_key_config(cfg, parent), parent)

    def build() -> nn.Module:
        torch.manual_seed(cfg.run.seed)
        return build_stage_model(job)

    def compute(features_out: Path) -> None:
        amp = autocast_dtype(cfg.finetune.precision, device)
        write_feature_cache(features_out, build(), {split: run.loader(split) for split in FEATURE_SPLITS},
                            device, amp)

    features_dir = run.cached("features", key, compute)
    settings = scale_learning_rates(job, stage_settings(job), world_size=1)
    model, summary = train_head_on_features(build(), features_dir, cfg, settings, device)
    record_collapse(out, summary.pop("feature_std"))
    summary["seconds"] = time.perf_counter() - started
    (out / "history.json").write_text(json.dumps(summary, indent=1))
    return finalize_model(model)


def _loaded(run: TrialRun, output: StageOutput) -> nn.Module:
    return load_compressed(resolve_ref(output.ref, run.ctx.results_dir))


def _whitening(run: TrialRun, key: str, out: Path, of: StageOutput) -> None:
    stats = collect_input_stats(_loaded(run, of).eval(), run.calibration_batches(),
                                targets=run.cfg.compress.svd_targets)
    save_input_stats(stats, str(out / "stats.pt"))


def _fisher(run: TrialRun, key: str, out: Path, of: StageOutput) -> None:
    fisher = collect_output_fisher(_loaded(run, of), run.calibration_batches(), targets=run.cfg.compress.svd_targets)
    torch.save(fisher, out / "fisher.pt")


def _importance(run: TrialRun, key: str, out: Path, of: StageOutput) -> None:
    # The whitening stage's batches, labels kept (taylor's loss needs them).
    scores = unit_scores(_loaded(run, of).to(run.device), run.cfg.compress.importance, run.calibration_batches())
    save_unit_scores(scores, str(out / "scores.pt"))


def _prehab(run: TrialRun, key: str, out: Path, tuned: StageOutput, *, whitening: StageOutput,
            fisher: StageOutput) -> None:
    job = run.job("prehab", init_path=tuned.ref, whitening_path=whitening.ref, fisher_path=fisher.ref)
    save_compressed(run.train(job, key, out), out / "model")


def _recover(run: TrialRun, key: str, out: Path, model: StageOutput, *, whitening: StageOutput,
             scores: StageOutput) -> None:
    job = run.job("recover", init_path=model.ref, whitening_path=whitening.ref, scores_path=scores.ref)
    save_compressed(run.train(job, key, out), out / "model")


# The embedded digits preset pretrains a backbone on the 10 digit classes; model.weights skips it.
PRETRAIN = Stage("pretrain", pretrain_key_config, lambda cfg: not cfg.model.weights and cfg.pretrain.epochs > 0,
                 _pretrain, "backbone")
# head_only trains on cached frozen-backbone features unless finetune.feature_cache is off or tokens
# are pruned while training; every fine-tune is checked for collapse.
FINETUNE = Stage("finetune", finetune_key_config, lambda cfg: True, _finetune, "model", _finetune_facts)
# Input statistics of the SVD targets over the calibration batches: of the model to factorise
# (whitened SVD, compress.CompressionPlan.whitened_svd), and of the fine-tuned model for whitened prehab.
WHITENING = Stage("whitening", whitening_key_config, lambda cfg: cfg.compress.whitened_svd, _whitening, "stats.pt")
PREHAB_WHITENING = dataclasses.replace(
    WHITENING, runs=lambda cfg: cfg.prehab.enabled and cfg.prehab.space == "whitened")
# The diagonal Fisher of the SVD targets' outputs, for prehab.kind fisher_weighted.
FISHER = Stage("fisher", whitening_key_config, lambda cfg: cfg.prehab.enabled and cfg.prehab.kind == FISHER_WEIGHTED,
               _fisher, "fisher.pt")
# A short run of task loss + lambda * low-rank surrogate before SVD.
PREHAB = Stage("prehab", prehab_key_config, lambda cfg: cfg.prehab.enabled, _prehab, "model",
               lambda run, entry, output: {"model_ref_prehab": output.ref})
# Taylor / activation scores of heads and MLP units (compress.importance), on the calibration batches.
IMPORTANCE = Stage("importance", importance_key_config, lambda cfg: cfg.compress.needs_scores, _importance,
                   "scores.pt")
# A short LoRA fine-tune of the compressed model, merged back.
RECOVER = Stage("recover", recover_key_config, lambda cfg: cfg.recover.epochs > 0, _recover, "model")


def compress(run: TrialRun, model: StageOutput, stats: StageOutput, scores: StageOutput = StageOutput(None, None)):
    """Return (the model after heads -> MLP -> SVD, its report, its parameter count before)."""
    base = load_compressed(resolve_ref(model.ref, run.ctx.results_dir))
    before = count_params(base)
    compressed, report = run.timed("compress", lambda: compress_structure(base, run.cfg, stats.ref,
                                                                          run.ctx.results_dir, scores.ref))
    return compressed, report, before


def prune_tokens(cfg: TrialConfig, model: nn.Module) -> dict[str, Any] | None:
    """Switch on inference-time token pruning (tokens.r_max > 0); return its summary, else None."""
    if cfg.tokens.r_max == 0:
        return None
    return enable_token_pruning(model, cfg.tokens.r_max, cfg.tokens.alpha, fuse=cfg.tokens.fuse)

