"""Classification metrics, temperature scaling and dihedral test-time augmentation.

This module owns every metric formula. AUROC, AUPRC, accuracy, sensitivity at 95%
specificity and ECE have one implementation each, `weighted_metrics`: it scores many rows
of per-image weights at once, so the same code gives the point estimates (one row of unit
weights, in `binary_metrics` / `multiclass_metrics`) and the bootstrap's resamples (rows of
resample counts, trainables.evaluate.bootstrap). With unit weights it equals scikit-learn's
roc_auc_score / average_precision_score / roc_curve (ties count one half; tests check it),
and with weights it equals them with `sample_weight`. NLL and Brier are scikit-learn's.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import brier_score_loss, log_loss

from trainables.data.augment import DIHEDRAL_COUNT, dihedral

ECE_BINS = 15
# Temperatures searched when fitting (a log-spaced bracket; NLL is unimodal in log T).
TEMPERATURE_BOUNDS = (1e-2, 1e2)
CALIBRATION_FOLDS = 2
# Probabilities are floored here before their log, so a float32 0 or 1 stays a finite log-odds.
_LOG_FLOOR = 1e-12
TARGET_SPECIFICITY = 0.95
TTA_TRANSFORMS = {"none": (0,), "flips": (0, 2, 4, 6), "dihedral": tuple(range(DIHEDRAL_COUNT))}
# What weighted_metrics returns for 1-D positive-class and for (N, K > 2) probabilities.
BINARY_WEIGHTED_METRICS = ("auroc", "auprc", "accuracy", "sens_at_95spec", "ece")
MULTICLASS_WEIGHTED_METRICS = ("accuracy", "auroc", "ece")


def _as_labels(y_true, count: int | None = None) -> np.ndarray:
    labels = np.asarray(y_true)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"y_true must be a non-empty 1-D array of class labels, got shape {labels.shape}")
    if count is not None and labels.shape[0] != count:
        raise ValueError(f"y_true has {labels.shape[0]} labels but the probabilities have {count} rows")
    if labels.dtype == bool:
        labels = labels.astype(np.int64)
    if not np.issubdtype(labels.dtype, np.number) or not np.all(np.equal(np.mod(labels, 1), 0)):
        raise ValueError("y_true must hold integer class labels")
    return labels.astype(np.int64)


def _as_probs(probs) -> np.ndarray:
    array = np.asarray(probs, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"probabilities must be finite, got {int((~np.isfinite(array)).sum())} non-finite values")
    if array.size and (array.min() < 0.0 or array.max() > 1.0):
        raise ValueError(f"probabilities must lie in [0, 1], got range [{array.min():.4g}, {array.max():.4g}]")
    return array


def _checked_binary(y_true, prob_pos) -> tuple[np.ndarray, np.ndarray]:
    prob_pos = _as_probs(prob_pos)
    if prob_pos.ndim != 1:
        raise ValueError(f"prob_pos must be 1-D (one positive-class probability per row), got shape {prob_pos.shape}")
    y_true = _as_labels(y_true, prob_pos.shape[0])
    present = np.unique(y_true)
    if not set(present.tolist()) <= {0, 1}:
        raise ValueError(f"binary y_true must hold only 0 and 1, got {present.tolist()}")
    if present.size < 2:
        raise ValueError(f"y_true holds only class {present[0]}: AUROC and sensitivity need both classes 0 and 1")
    return y_true, prob_pos


def _checked_multiclass(y_true, probs) -> tuple[np.ndarray, np.ndarray]:
    probs = _as_probs(probs)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probs must have shape (N, K) with K >= 2, got {probs.shape}")
    row_sums = probs.sum(axis=1)
    if not np.allclose(row_sums, 1.0, atol=1e-4):
        worst = int(np.argmax(np.abs(row_sums - 1.0)))
        raise ValueError(f"each row of probs must sum to 1 (softmax output); row {worst} sums to {row_sums[worst]:.6g}")
    y_true = _as_labels(y_true, probs.shape[0])
    classes = np.arange(probs.shape[1])
    if y_true.min() < 0 or y_true.max() >= classes.size:
        raise ValueError(f"y_true must be in 0..{classes.size - 1}, got range [{y_true.min()}, {y_true.max()}]")
    absent = np.setdiff1d(classes, y_true)
    if absent.size:
        raise ValueError(f"y_true lacks classes {absent.tolist()}: one-vs-rest AUROC is undefined for them")
    return y_true, probs


def checked_predictions(y_true, probs) -> tuple[np.ndarray, np.ndarray]:
    """Return (int64 labels, float64 probabilities) checked as weighted_metrics needs them: 1-D positive-class
    probabilities with both classes 0 and 1 present, or (N, K) softmax rows with every class 0..K-1 present."""
    if np.ndim(probs) == 1:
        return _checked_binary(y_true, probs)
    return _checked_multiclass(y_true, probs)


def _score_groups(positive: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (P, N): the weighted positives and negatives of each group of equal score, groups by descending
    score, one row per row of `weights`."""
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    hits = positive[order]
    w = weights[:, order]
    return (np.add.reduceat(np.where(hits, w, 0.0), starts, axis=1),
            np.add.reduceat(np.where(hits, 0.0, w), starts, axis=1))


def _auroc(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    n1, n0 = pos.sum(axis=1), neg.sum(axis=1)
    return np.sum(pos * (n0[:, None] - np.cumsum(neg, axis=1) + 0.5 * neg), axis=1) / (n1 * n0)


def _calibration_error(confidence: np.ndarray, correct: np.ndarray, weights: np.ndarray,
                       bins: int = ECE_BINS) -> np.ndarray:
    index = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    gaps = np.zeros((confidence.size, bins))
    gaps[np.arange(confidence.size), index] = correct - confidence
    return np.abs(weights @ gaps).sum(axis=1) / weights.sum(axis=1)


def weighted_metrics(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Return BINARY_WEIGHTED_METRICS for 1-D positive-class probabilities, MULTICLASS_WEIGHTED_METRICS for
    (N, K) ones, each a (rows,) array: the metric with each row of `weights` as per-image counts.

    Inputs as checked_predictions returns them. With images sorted by descending score and grouped by
    equal score g, P_g and N_g the weighted positives and negatives in group g and n1, n0 their totals:
    AUROC = sum_g P_g (n0 - cumsum(N)_g + N_g / 2) / (n1 n0) (ties count one half);
    AUPRC = sum_g (P_g / n1) * cumsum(P)_g / (cumsum(P)_g + cumsum(N)_g), scikit-learn's
    average precision (a step function, no interpolation);
    sens_at_95spec = max of TPR_g = cumsum(P)_g / n1 over the g with FPR_g = cumsum(N)_g / n0 <= 0.05
    (0 when none), the ROC curve's best sensitivity at TARGET_SPECIFICITY;
    accuracy = weighted share of rows whose prediction (p >= 0.5; K classes: the argmax) is right;
    ECE = sum_b |sum_{i in b} w_i (correct_i - confidence_i)| / sum_i w_i over ECE_BINS equal-width
    bins of the confidence (p against the 0/1 outcome; K classes: the max probability against
    correctness), i.e. sum_b (W_b / W) |mean(correct in b) - mean(confidence in b)|.
    K classes: AUROC is the macro mean of each class's one-vs-rest AUROC.
    """
    weights = np.atleast_2d(weights)
    if probs.ndim == 2:
        predicted = probs.argmax(axis=1)
        correct = (predicted == labels).astype(np.float64)
        per_class = [_auroc(*_score_groups(labels == k, probs[:, k], weights)) for k in range(probs.shape[1])]
        return {"accuracy": weights @ correct / weights.sum(axis=1),
                "auroc": np.mean(per_class, axis=0),
                "ece": _calibration_error(probs.max(axis=1), correct, weights)}
    pos, neg = _score_groups(labels == 1, probs, weights)
    n1, n0 = pos.sum(axis=1), neg.sum(axis=1)
    cum_pos, cum_neg = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
    predicted = cum_pos + cum_neg
    precision = np.divide(cum_pos, predicted, out=np.zeros_like(cum_pos), where=predicted > 0)
    # 1e-12 absorbs float error in fpr = k / n at exactly the boundary.
    within = cum_neg / n0[:, None] <= 1.0 - TARGET_SPECIFICITY + 1e-12
    outcome = labels.astype(np.float64)
    return {
        "auroc": _auroc(pos, neg),
        "auprc": np.sum(pos * precision, axis=1) / n1,
        "accuracy": weights @ ((probs >= 0.5) == labels).astype(np.float64) / weights.sum(axis=1),
        "sens_at_95spec": np.where(within, cum_pos / n1[:, None], 0.0).max(axis=1),
        "ece": _calibration_error(probs, outcome, weights),
    }


def _unit_weighted(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    weighted = weighted_metrics(labels, probs, np.ones((1, labels.size)))
    return {name: float(values[0]) for name, values in weighted.items()}


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """Return ECE = sum_b (n_b / n) * |mean(correct in b) - mean(confidence in b)| over `bins` equal-width bins of [0, 1] (the last bin includes 1)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    return float(_calibration_error(confidence, np.asarray(correct, dtype=np.float64),
                                    np.ones((1, confidence.size)), bins)[0])


def binary_metrics(y_true, prob_pos) -> dict[str, float]:
    """Return auroc, auprc, accuracy (p >= 0.5), sens_at_95spec, ece (of p against the 0/1 outcome, 15 bins), nll and brier for positive-class probabilities."""
    y_true, prob_pos = _checked_binary(y_true, prob_pos)
    return {
        **_unit_weighted(y_true, prob_pos),
        "nll": float(log_loss(y_true, prob_pos, labels=[0, 1])),
        "brier": float(brier_score_loss(y_true, prob_pos)),
    }


def multiclass_metrics(y_true, probs) -> dict[str, float]:
    """Return accuracy, auroc (macro one-vs-rest), nll, brier and ece (of the max probability against correctness, 15 bins) for (N, K) probabilities."""
    y_true, probs = _checked_multiclass(y_true, probs)
    classes = np.arange(probs.shape[1])
    weighted = _unit_weighted(y_true, probs)
    return {
        "accuracy": weighted["accuracy"],
        "auroc": weighted["auroc"],
        "nll": float(log_loss(y_true, probs, labels=classes)),
        "brier": float(brier_score_loss(y_true, probs, labels=classes)),
        "ece": weighted["ece"],
    }


def classification_metrics(y_true, probs) -> dict[str, float]:
    """Return binary_metrics for 1-D or (N, 2) probabilities (using column 1), multiclass_metrics for (N, K > 2)."""
    array = probs.detach().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
    if isinstance(y_true, torch.Tensor):
        y_true = y_true.detach().cpu().numpy()
    if array.ndim == 1:
        return binary_metrics(y_true, array)
    if array.ndim == 2 and array.shape[1] == 2:
        return binary_metrics(y_true, array[:, 1])
    return multiclass_metrics(y_true, array)


def _log_probs(probs: np.ndarray) -> np.ndarray:
    """Return (N, K) log-probabilities of 1-D positive-class or (N, K) probabilities (floored at _LOG_FLOOR)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 1:
        probs = np.stack([1.0 - probs, probs], axis=1)
    return np.log(np.clip(probs, _LOG_FLOOR, 1.0))


def temperature_scale(probs, temperature: float) -> np.ndarray:
    """Return softmax(log p / T) in probs' own layout (1-D positive-class or (N, K)).

    For softmax outputs log p = z - logsumexp(z), so this equals softmax(z / T) of the logits
    z that produced them: a model's logits divided by T give the same probabilities.
    """
    from scipy.special import softmax

    scaled = softmax(_log_probs(probs) / temperature, axis=1)
    return scaled[:, 1] if np.asarray(probs).ndim == 1 else scaled


def _scaled_nll(log_probs: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    from scipy.special import log_softmax

    return float(-log_softmax(log_probs / temperature, axis=1)[np.arange(labels.size), labels].mean())


def fit_temperature(y_true, probs) -> float:
    """Return the temperature T in TEMPERATURE_BOUNDS minimising NLL = -mean log softmax(log p / T)[y].

    One scalar for all classes (Guo et al. 2017, temperature scaling): it rescales confidence
    and keeps every ranking, so AUROC and the predicted class do not change. NLL is convex in
    1/T, so a bounded Brent search over log T finds its minimum (scipy.optimize.minimize_scalar).
    """
    from scipy.optimize import minimize_scalar

    log_probs = _log_probs(_as_probs(probs))
    labels = _as_labels(y_true, log_probs.shape[0])
    low, high = np.log(TEMPERATURE_BOUNDS)
    result = minimize_scalar(lambda log_t: _scaled_nll(log_probs, labels, float(np.exp(log_t))),
                             bounds=(low, high), method="bounded", options={"xatol": 1e-5})
    return float(np.exp(result.x))


def cross_fitted_probs(y_true, probs, folds: int = CALIBRATION_FOLDS, seed: int = 0) -> np.ndarray:
    """Return the probabilities temperature-scaled out of fold: each row by the T fitted on the other folds.

    The folds are stratified by class (scikit-learn's StratifiedKFold, shuffled with `seed`), so
    no row is scored with a temperature that was fitted on it.
    """
    from sklearn.model_selection import StratifiedKFold

    probs = _as_probs(probs)
    labels = _as_labels(y_true, probs.shape[0])
    scaled = np.empty_like(probs)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fit_rows, score_rows in splitter.split(np.zeros(labels.size), labels):
        scaled[score_rows] = temperature_scale(probs[score_rows], fit_temperature(labels[fit_rows], probs[fit_rows]))
    return scaled


def calibration_metrics(y_true, probs, folds: int = CALIBRATION_FOLDS, seed: int = 0) -> dict[str, float]:
    """Return temperature (fitted on every row) and ece_cal, nll_cal: the ECE and NLL of the
    cross-fitted probabilities (cross_fitted_probs), ECE and NLL as classification_metrics defines them."""
    probs = _as_probs(probs)
    pooled = classification_metrics(y_true, cross_fitted_probs(y_true, probs, folds, seed))
    return {"temperature": fit_temperature(y_true, probs), "ece_cal": pooled["ece"], "nll_cal": pooled["nll"]}


@torch.no_grad()
def tta_probs(model: torch.nn.Module, x: torch.Tensor, transforms: str = "dihedral") -> torch.Tensor:
    """Return softmax(model(t(x))) averaged over the transforms t: "dihedral" (8 flips/rotations), "flips" (identity, rot180, and the two axis flips) or "none"."""
    if transforms not in TTA_TRANSFORMS:
        raise ValueError(f"transforms must be one of {tuple(TTA_TRANSFORMS)}, got {transforms!r}")
    if x.ndim != 4:
        raise ValueError(f"x must be an NCHW batch, got shape {tuple(x.shape)}")
    total = None
    for index in TTA_TRANSFORMS[transforms]:
        output = model(dihedral(x, index))
        logits = getattr(output, "logits", output)
        if logits.ndim != 2 or logits.shape[1] < 2:
            raise ValueError(f"model must return (N, K >= 2) logits, got shape {tuple(logits.shape)}")
        probs = torch.softmax(logits.float(), dim=1)
        total = probs if total is None else total + probs
    return total / len(TTA_TRANSFORMS[transforms])
