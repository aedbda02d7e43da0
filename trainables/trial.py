"""One trial end to end: pretrain -> finetune -> [prehab] -> [whitening] -> [importance] -> compress
-> [recover] -> tokens -> [quant] -> evaluate.

`run_trial(flat_config, context)` is the whole trial as a plain function; `build_trial_model`
is its pipeline, one call per stage (trainables.stages). The Tune sweep wraps it in
`tune_trainable`; `python -m trainables.trial --set key=value ...` (and `python tune/run.py
--debug-trial`) run it in this process without Ray, with progress bars and working
breakpoints, and print the metrics the sweep would record.

Training stages (pretrain, finetune, whitening statistics, importance scores, prehab, recover)
are cached by content (trainables.cache): a trial whose training stages are all hits starts no Ray Train
run and spends its time on compression and evaluation only.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Callable

from torch import nn

from compress import load_compressed
from compress.quant import check_quant_device, quantize_model
from trainables import stages
from trainables.cache import StageCache, stage_key
from trainables.config import TrialConfig, parse_overrides
from trainables.evaluate.evaluation import Predictions, check_finite, cost_metrics, split_evaluation
from trainables.evaluate.runtime import check_runtime_device, runtime_model
from trainables.refs import resolve_ref
from trainables.report_keys import NODE_ID_KEY, OUTCOME_KEY_ATTR, TRIAL_ERROR_KEY
from trainables.stages import TrialContext, TrialRun, data_root
from trainables.train.sessions import pick_device

log = logging.getLogger(__name__)

OBJECTIVE_METRICS = ("val_auroc", "params", "latency_ms", "gflops")
RELATIVE_LATENCY = "latency_rel"   # measured only when eval.latency_rel (or named as an objective)

__all__ = ["OBJECTIVE_METRICS", "OUTCOME_KEY_ATTR", "TRIAL_ERROR_KEY", "TrialContext", "TrialModel",
           "build_model", "build_trial_model", "data_root", "evaluate_trial", "format_metrics", "main",
           "outcome_key", "run_trial", "tune_trainable"]


@dataclass
class TrialModel:
    """The model one trial evaluates, rebuilt from its stages, and what went into it."""

    model: nn.Module                  # compressed, token pruning on when the trial prunes, compress.quant applied
    float_model: nn.Module            # the same before compress.quant (what the ONNX runtime exports)
    cfg: TrialConfig
    data_root: str
    data_fingerprint: str
    report: Any                       # compress.CompressionReport of heads -> MLP -> SVD
    tokens: dict[str, Any] | None     # enable_token_pruning's summary, None without pruning
    params_uncompressed: int
    stages: TrialRun                  # cache hits and seconds per stage
    # Recorded with the metrics: cache refs of the fine-tuned and prehab models (the reports'
    # spectrum diagnostics) and the fine-tune's feature spread (the collapse watch).
    facts: dict[str, Any]


def run_trial(config: Mapping[str, Any] | TrialConfig, ctx: TrialContext = TrialContext(),
              *, split: str | None = None) -> dict[str, Any]:
    """Run one trial from its flat config (or its TrialConfig); return every metric the sweep records
    (scalars only)."""
    return evaluate_trial(config, ctx, split=split)[0]


def evaluate_trial(config: Mapping[str, Any] | TrialConfig, ctx: TrialContext = TrialContext(),
                   *, split: str | None = None) -> tuple[dict[str, Any], Predictions]:
    """Run one trial from its flat config (or its TrialConfig); return (its metrics, its predictions on
    the evaluated split)."""
    started = time.perf_counter()
    built = build_trial_model(config, ctx)
    cfg, run, tokens = built.cfg, built.stages, built.tokens
    device = pick_device(cfg.run.device)
    eval_split = split or cfg.eval.split
    metrics, predictions = run.timed(
        "evaluate", lambda: _evaluate(built, eval_split, device))
    metrics.update({
        "params_uncompressed": built.params_uncompressed,
        "params_ratio": metrics["params"] / built.params_uncompressed,
        "tokens_last_layer": tokens["schedule"][-1] if tokens and tokens.get("schedule") else -1,
        **{f"cache_hit_{stage}": hit for stage, hit in run.hits.items()},
        **{f"stage_s_{stage}": round(seconds, 3) for stage, seconds in run.seconds.items()},
        "trial_s": round(time.perf_counter() - started, 3),
        **built.facts,
    })
    prefix = "val" if eval_split == "valid" else eval_split
    check_finite(metrics, [f"{prefix}_auroc", "params", "model_bytes", "latency_ms", "gflops"]
                 + ([RELATIVE_LATENCY] if cfg.eval.latency_rel else []))
    return metrics, predictions


def _evaluate(built: TrialModel, split: str, device) -> tuple[dict[str, Any], Predictions]:
    """Score and time the model on eval.runtime: the AUROC is that of the model that is timed."""
    cfg = built.cfg
    scored = runtime_model(built.model, built.float_model, cfg.eval.runtime, cfg.compress.quant,
                           cfg.data.image_size)
    metrics, predictions = split_evaluation(scored, cfg, built.data_root, split, device)
    costs = cost_metrics(built.model, cfg, device, timed=scored, float_model=built.float_model)
    return {**metrics, **costs}, predictions


def build_model(config: Mapping[str, Any] | TrialConfig,
                ctx: TrialContext = TrialContext()) -> tuple[nn.Module, TrialConfig]:
    """Return (the trial's final model, compressed and token-pruned as evaluated, its config); training
    stages come from the cache (or run, when missing), nothing is evaluated."""
    built = build_trial_model(config, ctx)
    return built.model, built.cfg


def build_trial_model(config: Mapping[str, Any] | TrialConfig, ctx: TrialContext = TrialContext()) -> TrialModel:
    """Return the trial's compressed model, built through its cached stages (computing missing ones);
    `config` is the flat dict or the TrialConfig parsed from it."""
    cfg = parsed(config)
    if cfg.compress.quant != "none" or cfg.eval.runtime != "torch":   # before any training: one line
        device = pick_device(cfg.run.device)
        check_quant_device(cfg.compress.quant, device)
        check_runtime_device(cfg.eval.runtime, device)
    run = TrialRun.start(cfg, ctx)
    weights = stages.PRETRAIN.output(run, otherwise=stages.user_weights(cfg))
    tuned = stages.FINETUNE.output(run, weights)
    regularised = stages.PREHAB.output(run, tuned, otherwise=tuned,
                                       whitening=stages.PREHAB_WHITENING.output(run, tuned),
                                       fisher=stages.FISHER.output(run, tuned))
    stats = stages.WHITENING.output(run, regularised)   # input statistics of the model to factorise
    scores = stages.IMPORTANCE.output(run, regularised)
    compressed, report, params_before = stages.compress(run, regularised, stats, scores)
    recovered = stages.RECOVER.output(run, regularised, whitening=stats, scores=scores)
    if recovered.ref is not None:
        compressed = load_compressed(resolve_ref(recovered.ref, ctx.results_dir))
    tokens = stages.prune_tokens(cfg, compressed)
    final = quantize_model(compressed, cfg.compress.quant)   # the last step: nothing trains after it
    facts = {**tuned.facts, **regularised.facts}   # the same mapping twice without prehab
    return TrialModel(model=final, float_model=compressed, cfg=cfg, data_root=run.data_root,
                      data_fingerprint=run.fingerprint, report=report, tokens=tokens,
                      params_uncompressed=params_before, stages=run, facts=facts)


def parsed(config: Mapping[str, Any] | TrialConfig) -> TrialConfig:
    """Return `config` as a TrialConfig (a flat dict is parsed; a TrialConfig is returned as is)."""
    return config if isinstance(config, TrialConfig) else TrialConfig.from_flat(config)


def tune_trainable(config: dict[str, Any], *, base: dict[str, Any], context: TrialContext,
                   objectives: tuple[str, ...] = OBJECTIVE_METRICS,
                   to_config: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
    """Ray Tune function trainable: the preset `base` overlaid with the searcher's `config`.

    `to_config` turns the searcher's values into config keys (search_spaces.config_values:
    the spaces' switches become the values they stand for); None takes them as they are.

    A numerical failure (divergence, non-finite metrics) is deterministic, so it is reported,
    not raised: retrying would fail the same way. The report carries NaN objectives (Tune's
    strict metric check wants them) and `trial_error`, which the searcher turns into FAIL.
    An objective `latency_rel` switches eval.latency_rel on, so the trial times it.
    The metrics of a finished trial are stored in the cache under its experiment and trial
    id, so a trial Tune reruns after restoring a crashed sweep reports them again unchanged;
    its validation predictions are stored beside them (probs.npy, labels.npy) and the
    report carries the entry's key as `outcome_key`.
    """
    import ray
    from ray import tune

    flat = {**base, **(to_config(config) if to_config else config)}
    if RELATIVE_LATENCY in objectives:
        flat["eval.latency_rel"] = True  # an objective must be measured, whatever the preset says
    tune_ctx = tune.get_context()
    cache = StageCache(context.results_dir)
    cfg = TrialConfig.from_flat(flat)   # parsed once: every stage below reads this frozen config
    key = outcome_key(cfg.key_flat(), context.sweep, tune_ctx.get_trial_id())
    stored = cache.get("outcome", key)
    if stored is not None:
        # Tune reruns a trial it restored after a driver crash; Optuna may already hold
        # this trial's values, so the rerun reports what was measured, not a new latency.
        log.info("trial %s was measured before this restore; reporting its stored outcome",
                 tune_ctx.get_trial_id())
        tune.report({**json.loads((stored / "metrics.json").read_text()), OUTCOME_KEY_ATTR: key,
                     "outcome_replayed": True})
        return
    from trainables.data.inputs import MissingInputError, check_inputs, node_name
    from trainables.report_keys import INPUT_ERROR_KEY

    try:
        check_inputs(cfg, data_root(cfg, context))
    except MissingInputError as err:
        # Every other trial would fail the same way: the sweep stops on this key (tune.sweep).
        line = f"{err} (on node {node_name()})"
        log.error("trial cannot start: %s", line)
        tune.report({**{name: math.nan for name in objectives}, TRIAL_ERROR_KEY: line, INPUT_ERROR_KEY: line})
        return
    try:
        metrics, predictions = evaluate_trial(cfg, context)
    except FloatingPointError as err:
        log.error("trial failed: %s", err)
        tune.report({**{name: math.nan for name in objectives}, TRIAL_ERROR_KEY: str(err)})
        return
    # Which Ray node measured it: on a cluster, where its latency and its cache hits came from.
    # (get_runtime_context would start a Ray of its own where none runs, as in tests calling this.)
    if ray.is_initialized():
        metrics[NODE_ID_KEY] = ray.get_runtime_context().get_node_id()

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
        cfg = TrialConfig.from_flat(flat)
        cfg.check_applicable(flat)
    except (TypeError, ValueError) as err:
        parser.error(str(err))
    metrics = run_trial(cfg, TrialContext(results_dir=args.results_dir, show_progress=not args.no_progress),
                        split=args.split)
    print(json.dumps(metrics, indent=2) if args.json else format_metrics(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
