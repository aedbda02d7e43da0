"""One trial end to end: pretrain -> finetune -> prehab -> compress -> recover -> tokens -> evaluate.

`run_trial(flat_config, context)` is the whole trial as a plain function. The Tune sweep
wraps it in `tune_trainable`; `python -m trainables.trial --set key=value ...` (and
`python tune/run.py --debug-trial`) run it in this process without Ray, with progress bars
and working breakpoints, and print the metrics the sweep would record.

Training stages (pretrain, finetune, whitening statistics, prehab, recover) are cached by
content (trainables.cache): a trial whose training stages are all hits starts no Ray Train
run and spends its time on compression and evaluation only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn

from compress import (
    collect_input_stats, count_params, enable_token_pruning, load_compressed, save_compressed,
    save_input_stats,
)
from trainables.cache import StageCache, stage_key
from trainables.config import TrialConfig, parse_overrides
from trainables.data import data_fingerprint, ensure_digits
from trainables.evaluate import Predictions, check_finite, cost_metrics, split_evaluation

from trainables.features import (
    FEATURE_SPLITS, check_collapse, pooled_feature_std, read_collapse, record_collapse,
    train_head_on_features, write_feature_cache,
)
from trainables.finetune import TrainJob, compress_structure, dataset_prefix, make_dataset, pick_device
from trainables.refs import cache_ref, resolve_ref

log = logging.getLogger(__name__)

OBJECTIVE_METRICS = ("val_auroc", "params", "latency_ms", "gflops")
TRIAL_ERROR_KEY = "trial_error"  # in a Tune report: why the trial failed without raising
OUTCOME_KEY_ATTR = "outcome_key"  # in a Tune report: the cache entry holding metrics and predictions


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


class _Stages:
    """Bookkeeping of one trial's stages: cache hits, seconds, and the runner for training."""

    def __init__(self, cfg: TrialConfig, flat: dict[str, Any], ctx: TrialContext):
        self.cfg, self.flat, self.ctx = cfg, flat, ctx
        self.cache = StageCache(ctx.results_dir, wait_timeout_s=ctx.cache_wait_s)
        self.hits: dict[str, bool] = {}
        self.seconds: dict[str, float] = {}

    def cached(self, stage: str, key: str, compute: Callable[[Path], None]) -> Path:
        result = self.cache.get_or_compute(stage, key, compute, log=log)
        self.hits[stage] = result.hit
        self.seconds[stage] = result.seconds
        log.info("%s %s: %s in %.1f s", stage, key, "cache hit" if result.hit else "computed",
                 result.seconds)
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
        if self.ctx.backend == "local":
            # Kept until the entry is published, so an interrupted debug run resumes its epochs.
            base = Path(tempfile.gettempdir()) if "://" in self.ctx.results_dir else Path(self.ctx.results_dir)
            work_dir = base / "train-local" / f"{job.stage}-{key}"
            try:
                model, summary = run_local(job, work_dir, show_progress=self.ctx.show_progress)
            except FloatingPointError as err:
                raise FloatingPointError(f"{job.stage} stage diverged: {err}") from err
            shutil.rmtree(work_dir, ignore_errors=True)
        else:
            storage_path, filesystem = _train_storage(self.ctx.results_dir)
            try:
                model, summary = run_on_ray(job, run_name=f"{job.stage}-{key}", storage_path=storage_path,
                                            storage_filesystem=filesystem, max_failures=self.ctx.max_failures)
            except FloatingPointError as err:
                raise FloatingPointError(f"{job.stage} stage diverged: {err}") from err
        summary["seconds"] = time.perf_counter() - started
        (out / "history.json").write_text(json.dumps(summary, indent=1))
        return model


    def train_on_features(self, job: TrainJob, parent: str | None, fingerprint: str, device, out: Path) -> nn.Module:
        """Run a head_only fine-tune on cached features (computed once per backbone, data and head)
        in this process; write history.json and collapse.json into `out`; return the model."""
        import torch

        from trainables.finetune import (
            autocast_dtype, build_stage_model, finalize_model, scale_learning_rates, stage_settings,
        )

        cfg = self.cfg
        started = time.perf_counter()
        # What the head inputs depend on: backbone weights (parent), data, image size, pooling,
        # head type, and the seed where it initialises the backbone or the tap projections.
        config = {"data": _data_key(cfg), "backbone": cfg.model.backbone, "pooling": cfg.model.pooling,
                  "head": cfg.model.head, "precision": cfg.finetune.precision}
        if parent is None or cfg.model.head != "linear":
            config["seed"] = cfg.run.seed
        key = stage_key("features", config, parent, fingerprint)
        amp = autocast_dtype(cfg.finetune.precision, device)

        def build() -> nn.Module:
            torch.manual_seed(cfg.run.seed)
            return build_stage_model(job)

        def compute(features_out: Path) -> None:
            loaders = {split: _loader(cfg, job.data_root, split) for split in FEATURE_SPLITS}
            write_feature_cache(features_out, build(), loaders, device, amp)

        features_dir = self.cached("features", key, compute)
        settings = scale_learning_rates(job, stage_settings(job), world_size=1)
        model, summary = train_head_on_features(build(), features_dir, cfg, settings, device)
        record_collapse(out, summary.pop("feature_std"))
        summary["seconds"] = time.perf_counter() - started
        (out / "history.json").write_text(json.dumps(summary, indent=1))
        return finalize_model(model)


def _train_storage(results_dir: str):
    """Return (storage_path, filesystem) for Ray Train runs under <results>/train."""
    if "://" in results_dir:
        import pyarrow.fs

        filesystem, path = pyarrow.fs.FileSystem.from_uri(results_dir)
        return f"{path.rstrip('/')}/train", filesystem
    return str((Path(results_dir) / "train").resolve()), None


def data_root(cfg: TrialConfig, ctx: TrialContext) -> str:
    """Return the local data folder; the embedded digits set is written there on first use."""
    base = Path(ctx.results_dir) if "://" not in ctx.results_dir else Path(tempfile.gettempdir()) / "vitsweep"
    if cfg.data.dataset == "pcam":
        if cfg.data.synthetic:
            # Written on the node that needs it: on a cluster no other node's disk is visible.
            from trainables.synthetic import ensure_synthetic_pcam

            return str(ensure_synthetic_pcam(base / "data" / "pcam-synthetic"))
        return cfg.data.root or "data/pcam"
    if cfg.data.root:
        return str(ensure_digits(cfg.data.root))
    return str(ensure_digits(base / "data" / "digits"))


def _loader(cfg: TrialConfig, root: str, split: str):
    """Return an unshuffled, unaugmented loader over a split at the evaluation batch size."""
    from torch.utils.data import DataLoader

    return DataLoader(make_dataset(cfg, root, split), batch_size=cfg.eval.batch_size, shuffle=False,
                      num_workers=cfg.data.loader_workers)


def _data_key(cfg: TrialConfig) -> dict[str, Any]:
    d = cfg.data
    key = {"dataset": d.dataset, "image_size": d.image_size, "train_limit": d.train_limit,
           "val_limit": d.val_limit, "normalize": d.normalize}
    if d.stain_norm != "none":  # absent when off, so keys written before it existed stay valid
        key["stain_norm"] = d.stain_norm
    return key


@dataclass
class TrialModel:
    """The model one trial evaluates, rebuilt from its stages, and what went into it."""

    model: nn.Module                  # compressed, token pruning enabled when the trial prunes
    cfg: TrialConfig
    data_root: str
    data_fingerprint: str
    report: Any                       # compress.CompressionReport of heads -> MLP -> SVD
    tokens: dict[str, Any] | None     # enable_token_pruning's summary, None without pruning
    params_uncompressed: int
    stages: _Stages
    # Recorded with the metrics: cache refs of the fine-tuned and prehab models (the reports'
    # spectrum diagnostics) and the fine-tune's feature spread (the collapse watch).
    facts: dict[str, Any]


def run_trial(flat: dict[str, Any], ctx: TrialContext = TrialContext(),
              *, split: str | None = None) -> dict[str, Any]:
    """Run one trial from its flat config; return every metric the sweep records (scalars only)."""
    return evaluate_trial(flat, ctx, split=split)[0]


def evaluate_trial(flat: dict[str, Any], ctx: TrialContext = TrialContext(),
                   *, split: str | None = None) -> tuple[dict[str, Any], Predictions]:
    """Run one trial from its flat config; return (its metrics, its predictions on the evaluated split)."""
    started = time.perf_counter()
    built = build_trial_model(flat, ctx)
    cfg, stages, compressed, tokens = built.cfg, built.stages, built.model, built.tokens

    # 8. evaluate
    device = pick_device(cfg.run.device)
    eval_split = split or cfg.eval.split
    metrics, predictions = stages.timed(
        "evaluate", lambda: _evaluate(compressed, cfg, built.data_root, eval_split, device))
    metrics.update({
        "params_uncompressed": built.params_uncompressed,
        "params_ratio": metrics["params"] / built.params_uncompressed,
        "tokens_last_layer": tokens["schedule"][-1] if tokens and tokens.get("schedule") else -1,
        **{f"cache_hit_{stage}": hit for stage, hit in stages.hits.items()},
        **{f"stage_s_{stage}": round(seconds, 3) for stage, seconds in stages.seconds.items()},
        "trial_s": round(time.perf_counter() - started, 3),
        **built.facts,
    })
    prefix = "val" if eval_split == "valid" else eval_split
    check_finite(metrics, [f"{prefix}_auroc", "params", "latency_ms", "gflops"])
    return metrics, predictions


def _evaluate(model: nn.Module, cfg: TrialConfig, root: str, split: str, device) -> tuple[dict[str, Any], Predictions]:
    metrics, predictions = split_evaluation(model, cfg, root, split, device)
    return {**metrics, **cost_metrics(model, cfg, device)}, predictions


def build_model(flat: dict[str, Any], ctx: TrialContext = TrialContext()) -> tuple[nn.Module, TrialConfig]:
    """Return (the trial's final model, compressed and token-pruned as evaluated, its config); training
    stages come from the cache (or run, when missing), nothing is evaluated."""
    built = build_trial_model(flat, ctx)
    return built.model, built.cfg


def build_trial_model(flat: dict[str, Any], ctx: TrialContext = TrialContext()) -> TrialModel:
    """Return the trial's compressed model, built through its cached stages (computing missing ones)."""
    cfg = TrialConfig.from_flat(flat)
    stages = _Stages(cfg, cfg.to_flat(), ctx)
    flat = stages.flat
    root = data_root(cfg, ctx)
    fingerprint = data_fingerprint(root, dataset_prefix(cfg))
    cache_root = ctx.results_dir

    def job(stage: str, **refs: str | None) -> TrainJob:
        return TrainJob(stage=stage, trial=flat, data_root=root, cache_root=cache_root, **refs)

    # 1. pretrain (embedded preset: a backbone trained on the 10 digit classes)
    weights_ref, parent = cfg.model.weights or None, cfg.model.weights or None
    if weights_ref is None and cfg.pretrain.epochs > 0:
        key = stage_key("pretrain", {"model": cfg.model.backbone, "pooling": cfg.model.pooling,
                                     "pretrain": dataclasses.asdict(cfg.pretrain),
                                     "data": _data_key(cfg), "seed": cfg.run.seed}, None, fingerprint)

        def pretrain(out: Path) -> None:
            model = stages.train(job("pretrain"), key, out)
            model.backbone.save_pretrained(out / "backbone")

        stages.cached("pretrain", key, pretrain)
        weights_ref, parent = cache_ref("pretrain", key, "backbone"), key

    # 2. finetune (head_only: on cached frozen-backbone features unless finetune.feature_cache is off)
    ft_key = stage_key("finetune", {"model": cfg.model.key_fields(),
                                    **cfg.finetune_key_fields(), "data": _data_key(cfg),
                                    "seed": cfg.run.seed}, parent, fingerprint)
    device = pick_device(cfg.run.device)

    def finetune(out: Path) -> None:
        ft_job = job("finetune", init_weights=weights_ref)
        # Pruning tokens while training changes the backbone's features epoch by epoch.
        if cfg.finetune.uses_feature_cache and cfg.tokens.train_from_epoch == 0:
            model = stages.train_on_features(ft_job, parent, fingerprint, device, out)
        else:
            model = stages.train(ft_job, ft_key, out)
            record_collapse(out, pooled_feature_std(model, _loader(cfg, root, "valid"), device))
        save_compressed(model, out / "model")

    ft_entry = stages.cached("finetune", ft_key, finetune)
    model_ref, model_key = cache_ref("finetune", ft_key, "model"), ft_key
    # Where the models before and after prehab live (for the reports' spectrum diagnostics),
    # and the fine-tune's feature spread (the collapse watch): recorded with the metrics.
    stage_facts: dict[str, Any] = {"model_ref_finetune": model_ref}
    feature_spread = read_collapse(ft_entry)
    if feature_spread is None:  # an entry written before the collapse watch
        feature_spread = pooled_feature_std(load_compressed(ft_entry / "model"), _loader(cfg, root, "valid"), device)
    check_collapse(feature_spread, cfg.finetune.min_feature_std)
    stage_facts["feature_std"] = feature_spread

    # 3. whitening statistics of whichever model is about to be regularised or factorised
    def whitening(of_ref: str, of_key: str) -> tuple[str, str]:
        key = stage_key("whitening", {"calib": dataclasses.asdict(cfg.calib),
                                      "targets": list(cfg.compress.svd_targets)}, of_key, fingerprint)

        def compute(out: Path) -> None:
            from torch.utils.data import DataLoader

            from trainables.finetune import iterate_batches

            model = load_compressed(resolve_ref(of_ref, cache_root)).eval()
            loader = DataLoader(make_dataset(cfg, root, "train"), batch_size=cfg.calib.batch_size,
                                shuffle=False)
            stats = collect_input_stats(model, iterate_batches(loader, cfg.calib.batches),
                                        targets=cfg.compress.svd_targets)
            save_input_stats(stats, str(out / "stats.pt"))

        stages.cached("whitening", key, compute)
        return cache_ref("whitening", key, "stats.pt"), key

    # 4. prehab (lambda > 0)
    if cfg.prehab.enabled:
        stats_ref = whitening(model_ref, model_key)[0] if cfg.prehab.space == "whitened" else None
        ph_key = stage_key("prehab", {"prehab": dataclasses.asdict(cfg.prehab),
                                      "targets": list(cfg.compress.svd_targets),
                                      "batch_size": cfg.finetune.batch_size}, model_key, fingerprint)

        def prehab(out: Path) -> None:
            trained = stages.train(job("prehab", init_path=model_ref, whitening_path=stats_ref), ph_key, out)
            save_compressed(trained, out / "model")

        stages.cached("prehab", ph_key, prehab)
        model_ref, model_key = cache_ref("prehab", ph_key, "model"), ph_key
        stage_facts["model_ref_prehab"] = model_ref

    # 5. compress (heads -> MLP -> SVD), cheap and in this process
    stats_ref = None
    if cfg.compress.svd_space == "whitened" and cfg.compress.tau_svd < 1.0:
        stats_ref = whitening(model_ref, model_key)[0]
    base = load_compressed(resolve_ref(model_ref, cache_root))
    params_uncompressed = count_params(base)
    compressed, report = stages.timed("compress", lambda: compress_structure(base, cfg, stats_ref, cache_root))

    # 6. recover (optional short LoRA fine-tune of the compressed model, merged back)
    if cfg.recover.epochs > 0:
        rc_key = stage_key("recover", cfg.recover_key_fields(), model_key, fingerprint)

        def recover(out: Path) -> None:
            trained = stages.train(job("recover", init_path=model_ref, whitening_path=stats_ref), rc_key, out)
            save_compressed(trained, out / "model")

        compressed = load_compressed(stages.cached("recover", rc_key, recover) / "model")

    # 7. tokens (inference-time)
    tokens = None
    if cfg.tokens.r_max > 0:
        tokens = enable_token_pruning(compressed, cfg.tokens.r_max, cfg.tokens.alpha, fuse=cfg.tokens.fuse)

    return TrialModel(model=compressed, cfg=cfg, data_root=root, data_fingerprint=fingerprint,
                      report=report, tokens=tokens, params_uncompressed=params_uncompressed, stages=stages,
                      facts=stage_facts)



def tune_trainable(config: dict[str, Any], *, base: dict[str, Any], context: TrialContext,
                   objectives: tuple[str, ...] = OBJECTIVE_METRICS,
                   to_config: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
    """Ray Tune function trainable: the preset `base` overlaid with the searcher's `config`.

    `to_config` turns the searcher's values into config keys (search_spaces.config_values:
    the spaces' switches become the values they stand for); None takes them as they are.

    A numerical failure (divergence, non-finite metrics) is deterministic, so it is reported,
    not raised: retrying would fail the same way. The report carries NaN objectives (Tune's
    strict metric check wants them) and `trial_error`, which the searcher turns into FAIL.
    The metrics of a finished trial are stored in the cache under its experiment and trial
    id, so a trial Tune reruns after restoring a crashed sweep reports them again unchanged;
    its validation predictions are stored beside them (probs.npy, labels.npy) and the
    report carries the entry's key as `outcome_key`.
    """
    from ray import tune

    flat = {**base, **(to_config(config) if to_config else config)}
    tune_ctx = tune.get_context()
    cache = StageCache(context.results_dir)
    key = outcome_key(TrialConfig.from_flat(flat).key_flat(), context.sweep, tune_ctx.get_trial_id())
    stored = cache.get("outcome", key)
    if stored is not None:
        # Tune reruns a trial it restored after a driver crash; Optuna may already hold
        # this trial's values, so the rerun reports what was measured, not a new latency.
        log.info("trial %s was measured before this restore; reporting its stored outcome",
                 tune_ctx.get_trial_id())
        tune.report({**json.loads((stored / "metrics.json").read_text()), OUTCOME_KEY_ATTR: key,
                     "outcome_replayed": True})
        return
    from trainables.inputs import INPUT_ERROR_KEY, MissingInputError, check_inputs, node_name

    cfg = TrialConfig.from_flat(flat)
    try:
        check_inputs(cfg, data_root(cfg, context))
    except MissingInputError as err:
        # Every other trial would fail the same way: the sweep stops on this key (tune.sweep).
        line = f"{err} (on node {node_name()})"
        log.error("trial cannot start: %s", line)
        tune.report({**{name: math.nan for name in objectives}, TRIAL_ERROR_KEY: line, INPUT_ERROR_KEY: line})
        return
    try:
        metrics, predictions = evaluate_trial(flat, context)
    except FloatingPointError as err:
        log.error("trial failed: %s", err)
        tune.report({**{name: math.nan for name in objectives}, TRIAL_ERROR_KEY: str(err)})
        return

    def store(out: Path) -> None:
        (out / "metrics.json").write_text(json.dumps(metrics))
        predictions.save(out)  # 4 bytes an image: the reports compare trials paired on them

    cache.get_or_compute("outcome", key, store, log=log)
    tune.report({**metrics, OUTCOME_KEY_ATTR: key, "outcome_replayed": False})


def outcome_key(flat: dict[str, Any], sweep: str, trial_id: str) -> str:
    """Return the cache key of one Tune trial's reported metrics (its sweep, id and config)."""
    return stage_key("outcome", {"sweep": sweep, "trial_id": trial_id, "config": flat},
                     None, data_fingerprint="tune-trial")


def format_metrics(metrics: dict[str, Any]) -> str:
    """Return the metrics as aligned `name  value` lines."""
    width = max(len(name) for name in metrics)
    lines = []
    for name, value in metrics.items():
        text = f"{value:.6g}" if isinstance(value, float) else str(value)
        lines.append(f"{name:<{width}}  {text}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run one trial in this process (no Ray) and print its metrics."""
    parser = argparse.ArgumentParser(
        prog="python -m trainables.trial",
        description="Run one vitsweep trial in this process, without Ray (breakpoints work).")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set finetune.method=lora (repeatable)")
    parser.add_argument("--results-dir", default="results", help="cache and run folder (default: results)")
    parser.add_argument("--split", choices=("valid", "test"), default=None, help="evaluation split")
    parser.add_argument("--json", action="store_true", help="print metrics as JSON")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        flat = parse_overrides(args.set)
        TrialConfig.from_flat(flat).check_applicable(flat)
    except (TypeError, ValueError) as err:
        parser.error(str(err))
    metrics = run_trial(flat, TrialContext(results_dir=args.results_dir, show_progress=not args.no_progress),
                        split=args.split)
    print(json.dumps(metrics, indent=2) if args.json else format_metrics(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
