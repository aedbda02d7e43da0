"""bench/bench_retime_fronts.py: latencies relative to the reference timed in the same rounds."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: `bench` is not installed
from bench.bench_retime_fronts import chunked, relative_latencies  # noqa: E402


def test_a_round_slowed_for_every_model_cancels_in_the_ratio():
    times = {"reference": [2.0, 6.0, 2.0], "a": [1.0, 3.0, 1.0]}  # round 2: three times slower for both
    assert relative_latencies(times, "reference")["a"]["latency_rel"] == pytest.approx(0.5)


def test_relative_latency_is_the_median_of_per_round_ratios():
    times = {"reference": [1.0, 1.0, 1.0, 1.0, 1.0], "a": [0.7, 0.8, 5.0, 0.9, 0.75]}
    entry = relative_latencies(times, "reference")["a"]
    assert entry["latency_rel"] == pytest.approx(0.8)
    assert entry["latency_rel_lo"] <= 0.8 <= entry["latency_rel_hi"]


def test_the_reference_gets_no_entry_of_its_own():
    times = {"reference": [1.0, 2.0], "a": [1.0, 2.0], "b": [2.0, 4.0]}
    assert sorted(relative_latencies(times, "reference")) == ["a", "b"]


def test_rounds_of_unequal_length_are_refused():
    with pytest.raises(ValueError):
        relative_latencies({"reference": [1.0, 2.0], "a": [1.0]}, "reference")


def test_chunks_keep_order_and_cover_every_item_once():
    assert [list(c) for c in chunked(list(range(7)), 3)] == [[0, 1, 2], [3, 4, 5], [6]]
