"""The paired re-timing pass: the reference and every front point timed again, interleaved, in one process.

In-sweep latencies are taken minutes apart under whatever else the machine was doing,
once per trial. The pass rebuilds each config (its training stages are cache hits, as in
the final evaluation), then times them in rounds — ref, a, b, ..., ref, a, b, ... — each
at its trial's batch size and thread count, so every latency on the front comes from the
same conditions, on the trial's runtime (eval.runtime: PyTorch or ONNX Runtime). A second,
separately rebuilt copy of the reference is timed too ("repeat"), which measures how far one
configuration's median moves within one pass.

Per config: latency_ms_retimed = median over rounds of that round's per-image median,
with the order-statistic 95% interval of the median (trainables.evaluate.latency.median_interval);
delta_latency_ms = median over rounds of (config - reference in the same round), with
its interval, so slow phases of the machine cancel out of the comparison.

Imports tune.trials (the front and each trial's config), tune.report.verdicts and trainables; tune.report.summary
imports repeatability from here, never the reverse.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
import torch
from torch import nn

from trainables.config import TrialConfig
from trainables.evaluate.latency import device_name, measure_latency, median_interval
from tune.report.verdicts import latency_verdict
from tune.trials import reference_front, trial_config

log = logging.getLogger(__name__)

RETIME_FILENAME = "retime.csv"
DEFAULT_ROUNDS = 7  # the fewest rounds whose order-statistic interval of the median reaches 95%
REPEAT = "repeat"


@dataclass
class TimedModel:
    """One model of the pass: what it is, and how its trial timed it."""

    label: str
    number: int
    role: str                  # "reference", "front" or "repeat"
    model: nn.Module
    cfg: TrialConfig
    threads: int


def time_interleaved(models: Sequence[TimedModel], rounds: int, device: torch.device) -> dict[str, list[float]]:
    """Return {label: per-round ms per image}: in each round every model is timed once, in order
    (warm-up: the trial's eval.latency_warmup runs in the first round, one run in later rounds)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    threads_before = torch.get_num_threads()
    times: dict[str, list[float]] = {m.label: [] for m in models}
    try:
        for round_ in range(rounds):
            for m in models:
                torch.set_num_threads(m.threads)
                shape = (3, m.cfg.data.image_size, m.cfg.data.image_size)
                # The trial's warm-up before a model's first round; later rounds need one pass to
                # bring its weights back into cache after the other models ran.
                warmup = m.cfg.eval.latency_warmup if round_ == 0 else min(1, m.cfg.eval.latency_warmup)
                result = measure_latency(m.model, shape, device=device, warmup=warmup,
                                         repeats=m.cfg.eval.latency_repeats, batch_size=m.cfg.eval.latency_batch)
                times[m.label].append(result.latency_ms)
    finally:
        torch.set_num_threads(threads_before)
    return times


def summarize(models: Sequence[TimedModel], times: dict[str, list[float]]) -> pd.DataFrame:
    """Return one row per timed model: re-timed median and interval, paired difference to the reference, verdict."""
    reference = next(m for m in models if m.role == "reference")
    ref_times = times[reference.label]
    ref_median = median_interval(ref_times)[0]
    rows = []
    for m in models:
        median, lo, hi = median_interval(times[m.label])
        delta, delta_lo, delta_hi = median_interval([t - r for t, r in zip(times[m.label], ref_times)])
        rows.append({
            "label": m.label, "role": m.role, "number": m.number,
            "latency_ms_retimed": median, "latency_ms_retimed_lo": lo, "latency_ms_retimed_hi": hi,
            "delta_latency_ms": delta, "delta_latency_ms_lo": delta_lo, "delta_latency_ms_hi": delta_hi,
            "verdict_latency_ms": "reference" if m is reference
            else latency_verdict(delta, delta_lo, delta_hi, ref_median),
            "threads": m.threads, "batch": m.cfg.eval.latency_batch, "runtime": m.cfg.eval.runtime,
            "rounds": len(times[m.label]),
            "round_ms": " ".join(f"{t:.5g}" for t in times[m.label]),
        })
    return pd.DataFrame(rows)


def retime_sweep(settings, study: optuna.Study, *, rounds: int = DEFAULT_ROUNDS,
                 show_progress: bool = False) -> pd.DataFrame:
    """Rebuild and re-time the reference, its repeat and every in-sweep front point; write and return retime.csv.

    `settings` is the sweep's tune.sweep.SweepSettings. The table also carries the pass's
    wall seconds (`pass_s`) and the device it ran on.
    """
    from trainables.evaluate.evaluation import as_deployed, timing_lock
    from trainables.evaluate.runtime import runtime_model
    from trainables.storage import atomic_write
    from trainables.train.sessions import pick_device
    from trainables.trial import TrialContext, build_trial_model

    started = time.perf_counter()
    table, by_number = reference_front(settings, study, "re-time against")
    context = TrialContext(results_dir=settings.results_dir, backend="local", show_progress=show_progress,
                           max_failures=settings.max_failures)
    ref_number = int(table["number"].iloc[0])
    plan = [("reference", ref_number), (REPEAT, ref_number)]
    plan += [("front", int(n)) for n in dict.fromkeys(table.loc[table["role"] == "front", "number"])
             if int(n) != ref_number]
    models = []
    for role, number in plan:
        trial = by_number[number]
        built = build_trial_model(trial_config(trial, settings.base), context)
        cfg, threads = built.cfg, trial.user_attrs.get("latency_threads")
        threads = int(threads) if isinstance(threads, int) else torch.get_num_threads()
        # The trial's runtime (eval.runtime): an ONNX Runtime session gets the trial's threads.
        model = runtime_model(built.model, built.float_model, cfg.eval.runtime, cfg.compress.quant,
                              cfg.data.image_size, threads=threads)
        models.append(TimedModel(label=f"{role}-{number}", number=number, role=role,
                                 model=as_deployed(model.eval(), cfg), cfg=cfg, threads=threads))
    device = pick_device(models[0].cfg.run.device)
    built_s = time.perf_counter() - started
    with timing_lock(device):
        times = time_interleaved(models, rounds, device)
    frame = summarize(models, times)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(models[0].threads)  # the name carries the thread count the models ran with
    frame["device"] = device_name(device)
    torch.set_num_threads(threads_before)
    frame["build_s"] = round(built_s, 3)
    frame["pass_s"] = round(time.perf_counter() - started, 3)
    out = Path(settings.local_dir)
    atomic_write(out / RETIME_FILENAME, lambda temp: frame.to_csv(temp, index=False))
    log.info("re-timed %d configs in %d rounds on %s in %.1f s (building them: %.1f s)", len(models), rounds,
             frame["device"].iloc[0], frame["pass_s"].iloc[0], built_s)
    return frame


def read_retimed(local_dir: Path) -> pd.DataFrame | None:
    """Return the sweep's retime.csv, or None when the pass has not run."""
    path = Path(local_dir) / RETIME_FILENAME
    return pd.read_csv(path) if path.is_file() else None


def repeatability(frame: pd.DataFrame) -> float | None:
    """Return |repeat - reference| / reference of the re-timed medians (None without a repeat row)."""
    ref, rep = frame[frame["role"] == "reference"], frame[frame["role"] == REPEAT]
    if ref.empty or rep.empty:
        return None
    a, b = float(ref["latency_ms_retimed"].iloc[0]), float(rep["latency_ms_retimed"].iloc[0])
    return abs(b - a) / a
