"""Stratified bootstrap: resampling weights and percentile intervals, of one model or a paired difference.

This module owns resampling only; the metrics are trainables.evaluate.metrics.weighted_metrics. The
images are resampled with replacement within each class (so every resample keeps the
split's class counts, as DeLong's variance assumes), each resample is a row of per-image
counts, and weighted_metrics scores all rows at once from the sorted scores, which is what
makes a thousand resamples per trial cost milliseconds instead of seconds. One model's
interval and the paired difference of two models on the same images use the same
machinery: a paired resample applies one weight row to both models' scores. The sweep's
trial intervals, the reports' paired differences (tune.report.verdicts) and
`python -m trainables.evaluate` all come from here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from trainables.evaluate.metrics import (
    BINARY_WEIGHTED_METRICS,
    MULTICLASS_WEIGHTED_METRICS,
    checked_predictions,
    weighted_metrics,
)

RESAMPLES = 1000
SEED = 0
CONFIDENCE = 0.95
METRICS = ("auroc", "auprc", "accuracy")
_CHUNK_CELLS = 4_000_000  # weights held at once (resamples x images), ~32 MB of float64


def _checked(labels, scores: list,
             metrics: Sequence[str] | None) -> tuple[np.ndarray, list[np.ndarray], tuple[str, ...]]:
    """Return (labels, scores, metric names) checked: scores of one shape, as checked_predictions wants them,
    and names that weighted_metrics gives for that shape (None: those of METRICS it gives)."""
    checked = [checked_predictions(labels, s) for s in scores]
    shapes = {s.shape for _, s in checked}
    if len(shapes) > 1:
        raise ValueError(f"scores of paired models must have one shape, got {sorted(shapes)}")
    available = BINARY_WEIGHTED_METRICS if checked[0][1].ndim == 1 else MULTICLASS_WEIGHTED_METRICS
    names = tuple(name for name in METRICS if name in available) if metrics is None else tuple(metrics)
    unknown = [name for name in names if name not in available]
    if unknown:
        raise ValueError(f"metrics {unknown} are not available for scores of shape {checked[0][1].shape}: "
                         f"choose from {available}")
    return checked[0][0], [s for _, s in checked], names


def stratified_weights(labels: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Return (resamples, n) image counts: each row draws n_c images with replacement within each class c."""
    weights = np.zeros((resamples, labels.size))
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        weights[:, members] = rng.multinomial(members.size, np.full(members.size, 1.0 / members.size),
                                              size=resamples)
    return weights


def _resampled(labels: np.ndarray, scores: list[np.ndarray], names: tuple[str, ...], resamples: int,
               seed: int) -> dict[str, np.ndarray]:
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // labels.size)
    out = {name: np.empty((len(scores), resamples)) for name in names}
    for begin in range(0, resamples, chunk):
        end = min(resamples, begin + chunk)
        weights = stratified_weights(labels, end - begin, rng)
        for index, s in enumerate(scores):
            values = weighted_metrics(labels, s, weights)
            for name in names:
                out[name][index, begin:end] = values[name]
    return out


def resampled_metrics(labels, scores: list, *, resamples: int = RESAMPLES, seed: int = SEED,
                      metrics: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Return {metric: (len(scores), resamples) array}: every model scored on the same stratified resamples.

    `scores` are each model's probabilities (1-D positive-class, or (N, K)); `metrics` names
    weighted_metrics' outputs (default: those of METRICS it gives for the scores' shape).
    """
    labels, scores, names = _checked(labels, scores, metrics)
    return _resampled(labels, scores, names, resamples, seed)


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = 100.0 * (1.0 - confidence) / 2.0
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return float(lo), float(hi)


def metric_intervals(labels, scores, *, resamples: int = RESAMPLES, seed: int = SEED,
                     confidence: float = CONFIDENCE, metrics: Sequence[str] | None = None) -> dict[str, float]:
    """Return {<metric>_lo, <metric>_hi} percentile intervals by stratified bootstrap of `metrics`
    (default: auroc, auprc and accuracy; auroc and accuracy for (N, K) probabilities)."""
    resampled = resampled_metrics(labels, [scores], resamples=resamples, seed=seed, metrics=metrics)
    out: dict[str, float] = {}
    for name, values in resampled.items():
        out[f"{name}_lo"], out[f"{name}_hi"] = _percentiles(values[0], confidence)
    return out


def paired_deltas(labels, scores, reference_scores, *, resamples: int = RESAMPLES, seed: int = SEED,
                  confidence: float = CONFIDENCE) -> dict[str, float]:
    """Return {delta_<metric>, delta_<metric>_lo, delta_<metric>_hi}: metric(scores) - metric(reference) on the
    same images, the interval from a paired stratified bootstrap (both models scored on each resample)."""
    labels, both, names = _checked(labels, [scores, reference_scores], None)
    resampled = _resampled(labels, both, names, resamples, seed)
    full = [weighted_metrics(labels, s, np.ones((1, labels.size))) for s in both]
    out: dict[str, float] = {}
    for name in names:
        out[f"delta_{name}"] = float(full[0][name][0] - full[1][name][0])
        diff = resampled[name][0] - resampled[name][1]
        out[f"delta_{name}_lo"], out[f"delta_{name}_hi"] = _percentiles(diff, confidence)
    return out


def verdict(lo: float, hi: float, mode: str) -> str:
    """Return "better", "worse" or "tie" for a difference interval [lo, hi] (value - reference) and a direction."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "n/a"
    sign = 1.0 if mode == "max" else -1.0
    if min(sign * lo, sign * hi) > 0:
        return "better"
    if max(sign * lo, sign * hi) < 0:
        return "worse"
    return "tie"
