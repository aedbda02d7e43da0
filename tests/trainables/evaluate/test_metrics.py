"""Tests for trainables.evaluate.metrics against values computed by hand on tiny arrays."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from trainables.evaluate import metrics as metrics_module
from trainables.evaluate.metrics import (
    binary_metrics,
    calibration_metrics,
    classification_metrics,
    cross_fitted_probs,
    expected_calibration_error,
    fit_temperature,
    multiclass_metrics,
    temperature_scale,
    tta_probs,
    weighted_metrics,
)

Y = np.array([0, 0, 1, 1])
P = np.array([0.1, 0.4, 0.35, 0.8])


def pairwise_auroc(y, score):
    """Fraction of (positive, negative) pairs ranked correctly, ties counting half."""
    pos, neg = score[y == 1], score[y == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auroc_of_four_points():
    # Pairs (positive, negative): (.35,.1) right, (.35,.4) wrong, (.8,.1) right, (.8,.4) right.
    assert binary_metrics(Y, P)["auroc"] == pytest.approx(3 / 4)


def test_auprc_is_average_precision_at_each_positive():
    # Ranked: .8 (pos, precision 1/1), .4 (neg), .35 (pos, precision 2/3), .1 (neg).
    assert binary_metrics(Y, P)["auprc"] == pytest.approx((1 + 2 / 3) / 2)


def test_accuracy_thresholds_at_one_half():
    assert binary_metrics(Y, P)["accuracy"] == pytest.approx(3 / 4)


def test_sensitivity_at_95_specificity_allows_no_false_positive_with_two_negatives():
    # 95% specificity on 2 negatives means none above the threshold: only .8 is caught.
    assert binary_metrics(Y, P)["sens_at_95spec"] == pytest.approx(1 / 2)


def test_sensitivity_at_95_specificity_tolerates_one_in_twenty_negatives():
    y = np.array([0] * 20 + [1, 1])
    p = np.array([0.1] * 19 + [0.9] + [0.8, 0.95])
    # Threshold 0.8 passes one negative of twenty (specificity exactly 0.95) and both positives.
    assert binary_metrics(y, p)["sens_at_95spec"] == pytest.approx(1.0)


def test_nll_and_brier_match_their_formulas():
    metrics = binary_metrics(Y, P)
    likelihood = np.where(Y == 1, P, 1 - P)
    assert metrics["nll"] == pytest.approx(-np.mean(np.log(likelihood)))
    assert metrics["brier"] == pytest.approx(np.mean((P - Y) ** 2))


def test_binary_ece_with_one_point_per_bin_is_mean_absolute_gap():
    # .1, .35, .4 and .8 fall in four different fifteenths of [0, 1].
    assert binary_metrics(Y, P)["ece"] == pytest.approx(np.mean(np.abs(Y - P)))


def test_ece_of_perfectly_calibrated_predictions_is_zero():
    confidence = np.array([0.3] * 10 + [0.8] * 10)
    outcome = np.array([1] * 3 + [0] * 7 + [1] * 8 + [0] * 2, dtype=float)
    assert expected_calibration_error(confidence, outcome) == pytest.approx(0.0, abs=1e-12)


def test_ece_of_overconfident_predictions_is_the_gap():
    confidence = np.full(10, 0.9)
    outcome = np.array([1, 0] * 5, dtype=float)
    assert expected_calibration_error(confidence, outcome) == pytest.approx(0.4)


def test_ece_puts_probability_one_in_the_last_bin():
    assert expected_calibration_error(np.array([1.0, 0.95]), np.array([1.0, 1.0])) == pytest.approx(0.025)


def test_metric_values_are_python_floats():
    assert all(type(v) is float for v in binary_metrics(Y, P).values())


def test_single_class_labels_are_rejected():
    with pytest.raises(ValueError, match="only class 1"):
        binary_metrics([1, 1, 1], [0.2, 0.5, 0.9])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_probabilities_are_rejected(bad):
    with pytest.raises(ValueError, match="finite"):
        binary_metrics(Y, [0.1, bad, 0.3, 0.9])


def test_probabilities_outside_unit_interval_are_rejected():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        binary_metrics(Y, [0.1, 1.2, 0.3, 0.9])


def test_length_mismatch_is_rejected():
    with pytest.raises(ValueError, match="3 labels but the probabilities have 4"):
        binary_metrics([0, 1, 1], P)


def _tied_binary(n=300, seed=0):
    """Labels and probabilities rounded to two decimals, so many scores tie across the classes."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    return labels, np.round(1.0 / (1.0 + np.exp(-(rng.normal(size=n) + 1.2 * labels))), 2)


def _sklearn_sensitivity_at_95spec(labels, probs, sample_weight=None):
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, probs, sample_weight=sample_weight, drop_intermediate=False)
    return tpr[fpr <= 0.05 + 1e-12].max()


@pytest.mark.parametrize("seed", range(5))
def test_binary_point_estimates_equal_sklearn_with_ties(seed):
    from sklearn.metrics import average_precision_score, roc_auc_score

    labels, probs = _tied_binary(seed=seed)
    metrics = binary_metrics(labels, probs)
    assert metrics["auroc"] == pytest.approx(roc_auc_score(labels, probs), abs=1e-12)
    assert metrics["auroc"] == pytest.approx(pairwise_auroc(labels, probs), abs=1e-12)
    assert metrics["auprc"] == pytest.approx(average_precision_score(labels, probs), abs=1e-12)
    assert metrics["sens_at_95spec"] == _sklearn_sensitivity_at_95spec(labels, probs)


def test_weighted_metrics_equal_sklearn_with_sample_weights():
    from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score

    labels, probs = _tied_binary()
    weights = np.random.default_rng(3).integers(0, 4, size=(4, labels.size)).astype(float)
    got = weighted_metrics(labels, probs, weights)
    for row, w in enumerate(weights):
        assert got["auroc"][row] == pytest.approx(roc_auc_score(labels, probs, sample_weight=w), abs=1e-12)
        assert got["auprc"][row] == pytest.approx(average_precision_score(labels, probs, sample_weight=w), abs=1e-12)
        assert got["accuracy"][row] == pytest.approx(accuracy_score(labels, probs >= 0.5, sample_weight=w), abs=1e-12)
        assert got["sens_at_95spec"][row] == pytest.approx(_sklearn_sensitivity_at_95spec(labels, probs, w), abs=1e-12)


@pytest.mark.parametrize("classes", [2, 3])
def test_integer_weights_score_as_repeated_images(classes):
    rng = np.random.default_rng(classes)
    labels = np.r_[np.arange(classes), rng.integers(0, classes, 200)]
    if classes == 2:
        probs = np.round(rng.uniform(size=labels.size), 2)
    else:
        logits = np.round(rng.normal(size=(labels.size, classes)) + np.eye(classes)[labels], 1)
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    counts = rng.integers(1, 4, labels.size)
    repeated = classification_metrics(np.repeat(labels, counts), np.repeat(probs, counts, axis=0))
    for name, values in weighted_metrics(labels, probs, counts[None, :].astype(float)).items():
        assert values[0] == pytest.approx(repeated[name], abs=1e-12), name


def test_three_class_macro_auroc_equals_sklearn_ovr_with_and_without_weights():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    logits = np.round(rng.normal(size=(300, 3)) + np.eye(3)[labels], 1)  # rounded: tied scores per class
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert multiclass_metrics(labels, probs)["auroc"] == pytest.approx(
        roc_auc_score(labels, probs, multi_class="ovr", average="macro"), abs=1e-12)
    weights = rng.integers(0, 4, size=(3, labels.size)).astype(float)
    got = weighted_metrics(labels, probs, weights)["auroc"]
    for row, w in enumerate(weights):
        assert got[row] == pytest.approx(
            roc_auc_score(labels, probs, multi_class="ovr", average="macro", sample_weight=w), abs=1e-12)


PROBS3 = np.array(
    [[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.4, 0.4, 0.2], [0.3, 0.3, 0.4], [0.2, 0.6, 0.2]]
)
Y3 = np.array([0, 1, 2, 1, 0, 2])


def test_multiclass_accuracy_nll_and_macro_auroc():
    metrics = multiclass_metrics(Y3, PROBS3)
    predicted = [0, 1, 2, 0, 2, 1]  # row 3 ties: argmax takes the first
    assert metrics["accuracy"] == pytest.approx(np.mean(np.array(predicted) == Y3))
    assert metrics["nll"] == pytest.approx(-np.mean(np.log(PROBS3[np.arange(6), Y3])))
    per_class = [pairwise_auroc((Y3 == k).astype(int), PROBS3[:, k]) for k in range(3)]
    assert metrics["auroc"] == pytest.approx(np.mean(per_class))


def test_multiclass_ece_uses_the_max_probability():
    metrics = multiclass_metrics(Y3, PROBS3)
    confidence = PROBS3.max(axis=1)  # .7 .5 .6 .4 .4 .6
    correct = np.array([1, 1, 1, 0, 0, 0])
    # Bins (fifteenths): .4 -> 6, .5 -> 7, .6 -> 9, .7 -> 10.
    gaps = {6: (0 - 0.4, 2), 7: (1 - 0.5, 1), 9: (abs((1 + 0) / 2 - 0.6), 2), 10: (1 - 0.7, 1)}
    expected = sum(abs(gap) * n / 6 for gap, n in gaps.values())
    assert metrics["ece"] == pytest.approx(expected)
    assert expected_calibration_error(confidence, correct.astype(float)) == pytest.approx(expected)


def test_multiclass_missing_class_is_rejected():
    with pytest.raises(ValueError, match=r"lacks classes \[2\]"):
        multiclass_metrics([0, 1, 1, 0, 0, 1], PROBS3)


def test_multiclass_rows_must_sum_to_one():
    with pytest.raises(ValueError, match="sum to 1"):
        multiclass_metrics(Y3, PROBS3 * 0.5)


def test_classification_metrics_treats_two_columns_as_binary():
    two_columns = np.stack([1 - P, P], axis=1)
    assert classification_metrics(torch.tensor(Y), torch.tensor(two_columns)) == binary_metrics(Y, P)


def test_classification_metrics_dispatches_on_shape():
    assert "sens_at_95spec" in classification_metrics(Y, P)
    assert "sens_at_95spec" not in classification_metrics(Y3, PROBS3)


def test_tta_equals_plain_probabilities_for_an_invariant_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4))
    x = torch.randn(5, 3, 6, 6)
    torch.testing.assert_close(tta_probs(model, x), torch.softmax(model(x), dim=1))


def test_tta_averages_the_eight_dihedral_views():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    x = torch.randn(3, 3, 4, 4)
    views = []
    for image in (x, torch.flip(x, dims=(-1,))):
        views += [torch.rot90(image, k, dims=(-2, -1)) for k in range(4)]
    expected = torch.stack([torch.softmax(model(v), dim=1) for v in views]).mean(0)
    with torch.no_grad():
        plain = torch.softmax(model(x), dim=1)
    out = tta_probs(model, x)
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, plain)
    torch.testing.assert_close(out.sum(1), torch.ones(3))


def test_tta_reads_logits_from_a_model_output_object():
    class HFStyle(nn.Module):
        def forward(self, x):
            return SimpleNamespace(logits=x.mean(dim=(2, 3)))

    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(tta_probs(HFStyle(), x, "flips"), torch.softmax(x.mean(dim=(2, 3)), 1))


def test_tta_rejects_unknown_transforms():
    with pytest.raises(ValueError, match="transforms"):
        tta_probs(nn.Identity(), torch.zeros(1, 3, 2, 2), "rot45")


def test_nll_is_finite_for_hard_zero_probabilities():
    assert math.isfinite(binary_metrics([0, 1], [1.0, 0.0])["nll"])


def _overconfident(classes: int, sharpen: float, n: int = 2000, seed: int = 0):
    """Return (labels drawn from softmax(z), softmax(sharpen * z)): a model `sharpen` times too confident."""
    from scipy.special import softmax

    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, classes)) * 1.5
    labels = np.array([rng.choice(classes, p=p) for p in softmax(logits, axis=1)])
    probs = softmax(sharpen * logits, axis=1)
    return labels, probs if classes > 2 else probs[:, 1]


@pytest.mark.parametrize("classes", [2, 4])
def test_fitted_temperature_undoes_overconfidence_and_lowers_nll(classes):
    labels, probs = _overconfident(classes, sharpen=3.0)
    temperature = fit_temperature(labels, probs)
    assert temperature == pytest.approx(3.0, rel=0.15)
    before, after = classification_metrics(labels, probs), classification_metrics(
        labels, temperature_scale(probs, temperature))
    assert after["nll"] < before["nll"] - 0.05 and after["ece"] < before["ece"] / 2


def test_temperature_scaled_probabilities_equal_the_softmax_of_scaled_logits():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]], dtype=torch.float64)
    scaled = temperature_scale(torch.softmax(logits, dim=1).numpy(), 2.5)
    assert np.allclose(scaled, torch.softmax(logits / 2.5, dim=1).numpy(), atol=1e-12)
    binary = temperature_scale(np.array([0.9, 0.2]), 2.0)
    assert np.allclose(binary, 1 / (1 + np.exp(-np.log(np.array([9.0, 0.25])) / 2.0)))


def test_cross_fitted_rows_are_scored_with_a_temperature_fitted_without_them(monkeypatch):
    labels, probs = _overconfident(2, sharpen=2.0, n=400, seed=1)
    fitted_on: list[set[float]] = []

    def spy(y, p):
        fitted_on.append(set(np.asarray(p).tolist()))
        return [2.0, 0.5][len(fitted_on) - 1]  # one temperature per fold, told apart below

    monkeypatch.setattr(metrics_module, "fit_temperature", spy)
    scaled = cross_fitted_probs(labels, probs, folds=2)
    assert len(fitted_on) == 2 and not fitted_on[0] & fitted_on[1]
    for row, (p, out) in enumerate(zip(probs.tolist(), scaled)):
        fold = 0 if np.isclose(out, temperature_scale(np.array([p]), 2.0)[0]) else 1
        assert np.isclose(out, temperature_scale(np.array([p]), [2.0, 0.5][fold])[0]), row
        assert p not in fitted_on[fold], f"row {row} was scored with a temperature fitted on it"


def test_cross_fitted_calibration_lowers_nll_and_ece_of_an_overconfident_set():
    labels, probs = _overconfident(2, sharpen=3.0, n=600, seed=2)
    before = classification_metrics(labels, probs)
    after = calibration_metrics(labels, probs)
    assert after["temperature"] > 1.5
    assert after["nll_cal"] < before["nll"] and after["ece_cal"] < before["ece"]


def test_a_calibrated_model_keeps_a_temperature_near_one():
    labels, probs = _overconfident(2, sharpen=1.0)
    assert fit_temperature(labels, probs) == pytest.approx(1.0, abs=0.1)
