"""Tests for tune.verdicts: the latency tie rule, on its own and in the Pareto table's verdict column."""

import pandas as pd
import pytest

from tune.verdicts import add_verdicts, latency_verdict

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
