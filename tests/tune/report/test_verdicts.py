"""Tests for tune.report.verdicts: the latency tie rule, non-inferiority against a margin, and the recommendation."""

import numpy as np
import pandas as pd
import pytest

from tune.report.verdicts import (
    add_deltas, add_noninferiority, add_verdicts, latency_verdict, noninferior, parse_margins, parse_prefer, recommend,
)

REFERENCE_MS = 10.0


@pytest.mark.parametrize("delta_ms, word", [(-0.4, "tie"), (0.4, "tie"), (-0.6, "better"), (0.6, "worse")])
def test_a_latency_difference_under_five_percent_is_a_tie_even_with_an_interval_off_zero(delta_ms, word):
    # Each interval excludes zero; only the size of the difference against 5% of 10 ms decides.
    lo, hi = delta_ms - 0.05, delta_ms + 0.05
    assert latency_verdict(delta_ms, lo, hi, REFERENCE_MS) == word


def test_a_large_latency_difference_whose_interval_holds_zero_stays_a_tie():
    assert latency_verdict(-3.0, -6.0, 0.5, REFERENCE_MS) == "tie"


def test_the_pareto_tables_latency_verdicts_follow_the_tie_rule():
    table = pd.DataFrame({
        "role": ["reference", "front", "front"], "number": [0, 1, 2],
        "latency_ms": [REFERENCE_MS, 9.7, 9.0],
        "delta_latency_ms": [0.0, -0.3, -1.0],
        "delta_latency_ms_lo": [0.0, -0.35, -1.1], "delta_latency_ms_hi": [0.0, -0.25, -0.9],
    })
    verdicts = add_verdicts(table, [("latency_ms", "min")])["verdict_latency_ms"].tolist()
    assert verdicts == ["reference", "tie", "better"]


def _labels_and_reference(n=135, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(n, int), np.zeros(n, int)]
    return labels, 1 / (1 + np.exp(-np.r_[rng.normal(2, 1, n), rng.normal(0, 1, n)]))


def _strongest_positive_below(labels, scores, negatives_above):
    """Return `scores` with the strongest positive moved just under `negatives_above` negatives:
    AUROC drops by negatives_above / (positives x negatives)."""
    moved = scores.copy()
    positives = np.flatnonzero(labels == 1)
    moved[positives[np.argmax(scores[positives])]] = np.sort(scores[labels == 0])[-negatives_above] - 1e-9
    return moved


def _paired_table(candidates, margins=None):
    """Reference (trial 0) then one row per candidate score vector, with paired AUROC intervals and non-inferiority."""
    from trainables.evaluate.evaluation import Predictions

    labels, ref = _labels_and_reference()
    scores = {0: ref, **{i + 1: c(labels, ref) for i, c in enumerate(candidates)}}
    table = pd.DataFrame({"role": ["reference"] + ["front"] * len(candidates), "number": list(scores),
                          "val_auroc": np.nan})
    table["delta_val_auroc"] = np.nan
    objectives = [("val_auroc", "max")]
    table = add_deltas(table, objectives, lambda row: Predictions(labels, scores[int(row["number"])]))
    return add_noninferiority(add_verdicts(table, objectives), objectives, margins)


def test_a_drop_inside_the_margin_is_noninferior_and_one_reaching_past_it_is_not():
    # AUROC -0.001 (interval about [-0.0035, 0]) and -0.002 (about [-0.0068, 0]): both ties, one within 0.005.
    table = _paired_table([lambda y, s: _strongest_positive_below(y, s, 18),
                           lambda y, s: _strongest_positive_below(y, s, 36)])
    assert table["verdict_val_auroc"].tolist()[1:] == ["tie", "tie"]
    assert table["noninferior_val_auroc"].tolist()[1:] == [True, False]


def test_a_wider_margin_admits_the_larger_drop():
    table = _paired_table([lambda y, s: _strongest_positive_below(y, s, 36)], margins={"val_auroc": 0.01})
    assert table["noninferior_val_auroc"].tolist()[1:] == [True]


def test_identical_predictions_are_noninferior():
    table = _paired_table([lambda y, s: s.copy()])
    assert table.loc[1, ["delta_val_auroc_lo", "delta_val_auroc_hi"]].tolist() == [0.0, 0.0]
    assert table["noninferior_val_auroc"].tolist() == [True, True]


def test_a_minimised_quality_metric_is_noninferior_by_the_upper_end():
    assert noninferior(-0.02, 0.004, "min", 0.005) is True
    assert noninferior(-0.02, 0.006, "min", 0.005) is False
    assert noninferior(float("nan"), 0.0, "max", 0.005) is None


OBJECTIVES = [("val_auroc", "max"), ("params", "min"), ("latency_ms", "min")]


def _front(rows):
    """A hand-built Pareto table: (number, Δ auroc lo, params, latency_ms, verdict params, verdict latency)."""
    records = [{"role": "reference", "number": 0, "val_auroc": 0.95, "params": 1000.0, "latency_ms": 10.0,
                "delta_val_auroc": 0.0, "delta_val_auroc_lo": 0.0, "delta_val_auroc_hi": 0.0,
                "verdict_val_auroc": "reference", "delta_params": 0.0, "verdict_params": "reference",
                "delta_latency_ms": 0.0, "verdict_latency_ms": "reference"}]
    for number, lo, params, latency, v_params, v_latency in rows:
        records.append({"role": "front", "number": number, "val_auroc": 0.95 + lo / 2, "params": params,
                        "latency_ms": latency, "delta_val_auroc": lo / 2, "delta_val_auroc_lo": lo,
                        "delta_val_auroc_hi": 0.003, "verdict_val_auroc": "worse" if lo / 2 < -0.01 else "tie",
                        "delta_params": params - 1000.0, "verdict_params": v_params,
                        "delta_latency_ms": latency - 10.0, "verdict_latency_ms": v_latency})
    return pd.DataFrame(records)


HAND_BUILT = _front([
    (1, -0.002, 500.0, 6.0, "better", "better"),
    (2, -0.004, 300.0, 8.0, "better", "better"),
    (3, -0.001, 200.0, 12.0, "better", "worse"),     # smallest, but slower than the reference
    (4, -0.030, 100.0, 3.0, "better", "better"),     # cheapest everywhere, AUROC beyond the margin
])


@pytest.mark.parametrize("prefer, number", [("params", 2), ("latency_ms", 1)])
def test_the_recommendation_is_the_lowest_prefer_among_qualifying_points(prefer, number):
    recommended, line = recommend(HAND_BUILT, OBJECTIVES, {"val_auroc": 0.005}, prefer)
    assert recommended == number
    assert line.startswith(f"Recommended: trial {number}: non-inferior on val_auroc") and f"--prefer {prefer}" in line


def test_the_default_preference_is_the_sweeps_first_cost_objective():
    assert recommend(HAND_BUILT, OBJECTIVES)[0] == 2


def test_without_a_qualifying_point_the_line_says_why_and_names_the_closest():
    recommended, line = recommend(HAND_BUILT, OBJECTIVES, {"val_auroc": 0.0005}, "params")
    assert recommended is None
    assert line.startswith("No recommendation: none of 4 front points")
    assert "closest: trial 1: val_auroc" in line and "reaches below the margin" in line


def test_a_margin_for_a_metric_the_sweep_does_not_optimise_is_refused():
    with pytest.raises(ValueError, match="'val_auprc' is not a quality objective of this sweep"):
        parse_margins(["val_auprc=0.01"], OBJECTIVES)


@pytest.mark.parametrize("item", ["val_auroc", "val_auroc=-0.1", "val_auroc=1.5", "val_auroc=abc"])
def test_a_bad_margin_is_refused_naming_the_flag(item):
    with pytest.raises(ValueError, match="^--margin"):
        parse_margins([item], OBJECTIVES)


def test_prefer_must_be_a_cost_objective_of_the_sweep():
    assert parse_margins(["val_auroc=0.01"], OBJECTIVES) == {"val_auroc": 0.01}
    with pytest.raises(ValueError, match="--prefer val_auroc: not a cost objective"):
        parse_prefer("val_auroc", OBJECTIVES)


def test_a_point_that_saves_nothing_is_not_recommended():
    recommended, line = recommend(_front([(1, -0.001, 1000.0, 10.0, "tie", "tie")]), OBJECTIVES)
    assert recommended is None and line.endswith("closest: trial 1: better on no cost objective.")
