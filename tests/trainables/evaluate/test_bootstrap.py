import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from trainables.evaluate.bootstrap import (
    metric_intervals,
    paired_deltas,
    resampled_metrics,
    stratified_weights,
    verdict,
)


def _scores(n_pos=135, n_neg=135, shift=1.5, seed=0, rounding=None):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    raw = np.r_[rng.normal(shift, 1.0, n_pos), rng.normal(0.0, 1.0, n_neg)]
    probs = 1.0 / (1.0 + np.exp(-raw))
    return labels, (np.round(probs, rounding) if rounding else probs)


def _delong_se(labels, scores):
    """DeLong et al. (1988): var = V10 variance / n1 + V01 variance / n0, with placement values."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return float(np.sqrt(v10.var(ddof=1) / pos.size + v01.var(ddof=1) / neg.size))


def test_stratified_resamples_keep_class_counts():
    labels, _ = _scores(n_pos=40, n_neg=90)
    weights = stratified_weights(labels, 50, np.random.default_rng(0))
    assert np.all(weights[:, labels == 1].sum(axis=1) == 40)
    assert np.all(weights[:, labels == 0].sum(axis=1) == 90)


def test_intervals_and_paired_deltas_resample_within_each_class_when_positives_are_rare():
    # 3 positives in 60: a plain resample draws none about 5% of the time (0.95^60), and an AUROC
    # or AUPRC without positives is undefined, so only stratified resampling gives finite intervals.
    labels, scores = _scores(n_pos=3, n_neg=57, shift=1.0)
    intervals = metric_intervals(labels, scores)
    assert all(np.isfinite(value) for value in intervals.values()), intervals
    _, other = _scores(n_pos=3, n_neg=57, shift=1.0, seed=1)
    deltas = paired_deltas(labels, scores, other)
    assert all(np.isfinite(value) for value in deltas.values()), deltas


def test_every_resample_keeps_the_class_counts_of_the_split():
    # A model that calls every image negative is right on exactly n0 / n of a resample that
    # keeps the class counts; a plain resample moves that share from row to row.
    labels = np.r_[np.ones(10, int), np.zeros(30, int)]
    resampled = resampled_metrics(labels, [np.zeros(40)], resamples=200)
    assert np.all(resampled["accuracy"] == 30 / 40)


@pytest.mark.parametrize("shift", [0.8, 2.0])
def test_bootstrap_interval_agrees_with_delong_standard_error(shift):
    labels, scores = _scores(n_pos=150, n_neg=150, shift=shift)
    interval = metric_intervals(labels, scores, resamples=2000)
    bootstrap_se = (interval["auroc_hi"] - interval["auroc_lo"]) / (2 * 1.959964)
    assert bootstrap_se == pytest.approx(_delong_se(labels, scores), rel=0.15)


def test_interval_contains_the_point_estimate_and_is_reproducible():
    labels, scores = _scores()
    first, second = metric_intervals(labels, scores), metric_intervals(labels, scores)
    assert first == second
    assert first["auroc_lo"] < roc_auc_score(labels, scores) < first["auroc_hi"]


def test_identical_predictions_give_zero_delta_and_tie():
    labels, scores = _scores()
    deltas = paired_deltas(labels, scores, scores.copy())
    assert deltas["delta_auroc"] == deltas["delta_auroc_lo"] == deltas["delta_auroc_hi"] == 0.0
    assert verdict(deltas["delta_auroc_lo"], deltas["delta_auroc_hi"], "max") == "tie"


def test_clearly_better_classifier_gets_better_and_the_reference_worse():
    labels, weak = _scores(shift=0.5, seed=1)
    _, strong = _scores(shift=2.5, seed=1)
    deltas = paired_deltas(labels, strong, weak)
    assert deltas["delta_auroc"] > 0
    assert verdict(deltas["delta_auroc_lo"], deltas["delta_auroc_hi"], "max") == "better"
    back = paired_deltas(labels, weak, strong)
    assert verdict(back["delta_auroc_lo"], back["delta_auroc_hi"], "max") == "worse"


def test_one_pair_swapped_is_a_tie():
    # The situation of the issue: a "gain" of one positive/negative pair out of n1 * n0.
    labels, scores = _scores(shift=2.5)
    other = scores.copy()
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    worst_pos = pos[np.argmin(scores[pos])]
    best_neg_below = neg[scores[neg] < scores[worst_pos]]
    other[worst_pos] = scores[best_neg_below].min() - 1e-6 if best_neg_below.size else scores[worst_pos]
    deltas = paired_deltas(labels, scores, other)
    assert deltas["delta_auroc"] != 0.0
    assert verdict(deltas["delta_auroc_lo"], deltas["delta_auroc_hi"], "max") == "tie"


def test_verdict_follows_the_direction():
    assert verdict(-3.0, -1.0, "min") == "better"
    assert verdict(1.0, 3.0, "min") == "worse"
    assert verdict(float("nan"), 1.0, "max") == "n/a"


def _three_class(n=240, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    logits = np.round(rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[labels], 1)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probs


def test_stratified_resamples_keep_every_class_count_of_three():
    labels, _ = _three_class()
    weights = stratified_weights(labels, 20, np.random.default_rng(0))
    for c in range(3):
        assert np.all(weights[:, labels == c].sum(axis=1) == np.sum(labels == c))


def test_three_class_intervals_default_to_auroc_and_accuracy_around_the_point_estimates():
    from trainables.evaluate.metrics import multiclass_metrics

    labels, probs = _three_class()
    intervals = metric_intervals(labels, probs, resamples=300)
    assert set(intervals) == {"auroc_lo", "auroc_hi", "accuracy_lo", "accuracy_hi"}
    point = multiclass_metrics(labels, probs)
    for name in ("auroc", "accuracy"):
        assert intervals[f"{name}_lo"] < point[name] < intervals[f"{name}_hi"]


def test_a_metric_the_scores_cannot_give_is_rejected_naming_the_choices():
    labels, probs = _three_class()
    with pytest.raises(ValueError,
                       match=r"\['auprc'\] are not available .* choose from \('accuracy', 'auroc', 'ece'\)"):
        metric_intervals(labels, probs, metrics=["auprc"])


def test_one_class_labels_are_rejected():
    with pytest.raises(ValueError, match="both classes"):
        metric_intervals(np.ones(10, int), np.linspace(0, 1, 10))
