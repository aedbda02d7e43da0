"""Differences to the reference with 95% intervals, and a verdict per objective: better, worse or tie.

Where each interval comes from:
- val_auroc, val_auprc, val_accuracy: paired stratified bootstrap over the validation
  images (both trials' stored probabilities on each resample; trainables.bootstrap);
- latency_ms: the re-timing pass's paired rounds (median of the per-round differences to
  the reference, order-statistic interval), else the two trials' own intervals
  combined conservatively (lo_a - hi_ref, hi_a - lo_ref);
- latency_rel (each trial's latency over the uncompressed model's, paired within the
  trial on its own device; the uncompressed model is 1.0, < 1 is faster): the two
  trials' own intervals combined conservatively, as latency_ms without the pass. The
  re-timing pass does not replace it: it is paired already, and on a cluster the driver's
  device is not the trials';
- params, gflops, params_ratio: exact counts, so the difference is its own interval.
A latency difference (either kind) smaller than LATENCY_TIE_FRACTION of the reference's
value is a tie even when its interval excludes zero: timing one configuration twice moves
it that much.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from trainables.bootstrap import paired_deltas, verdict

INTERVAL_METRICS = {"val_auroc": "auroc", "val_auprc": "auprc", "val_accuracy": "accuracy"}
EXACT_OBJECTIVES = frozenset({"params", "gflops", "params_ratio"})
LATENCY_OBJECTIVES = frozenset({"latency_ms", "latency_rel"})
LATENCY_TIE_FRACTION = 0.05
REFERENCE = "reference"


def _exact_verdict(delta: float, mode: str) -> str:
    if not math.isfinite(delta):
        return "n/a"
    if delta == 0:
        return "tie"
    return "better" if (delta > 0) == (mode == "max") else "worse"


def add_deltas(table: pd.DataFrame, objectives: Sequence[tuple[str, str]],
               predictions: Callable[[pd.Series], object | None] | None = None) -> pd.DataFrame:
    """Return `table` (reference row first, as front_table makes it) with delta_<objective>_lo/_hi columns.

    `predictions(row)` returns the row's trainables.evaluate.Predictions or None; rows
    without them get no bootstrap interval (NaN). Existing delta_<objective>_lo/_hi
    values (the re-timing pass's) are kept.
    """
    table = table.copy()
    if table.empty or table["role"].iloc[0] != REFERENCE:
        return table
    ref = table.iloc[0]
    ref_pred = predictions(ref) if predictions else None
    paired: dict[int, dict[str, float]] = {}
    if ref_pred is not None and any(name in INTERVAL_METRICS for name, _ in objectives):
        for index, row in table.iterrows():
            pred = predictions(row)
            if pred is not None and pred.labels.shape == ref_pred.labels.shape \
                    and np.array_equal(pred.labels, ref_pred.labels):
                paired[index] = paired_deltas(ref_pred.labels, pred.probs, ref_pred.probs)
    for name, _ in objectives:
        lo, hi = f"delta_{name}_lo", f"delta_{name}_hi"
        if lo in table.columns and table[lo].notna().any():
            continue
        table[lo], table[hi] = math.nan, math.nan
        for index, row in table.iterrows():
            if name in EXACT_OBJECTIVES:
                table.loc[index, [lo, hi]] = [row[f"delta_{name}"]] * 2
            elif name in INTERVAL_METRICS and index in paired:
                metric = INTERVAL_METRICS[name]
                table.loc[index, [lo, hi]] = [paired[index][f"delta_{metric}_lo"],
                                              paired[index][f"delta_{metric}_hi"]]
            elif {f"{name}_lo", f"{name}_hi"} <= set(table.columns):
                table.loc[index, [lo, hi]] = [float(row[f"{name}_lo"]) - float(ref[f"{name}_hi"]),
                                              float(row[f"{name}_hi"]) - float(ref[f"{name}_lo"])]
    return table


def add_verdicts(table: pd.DataFrame, objectives: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """Return `table` with verdict_<objective> = better | worse | tie (| n/a) against the reference row."""
    table = table.copy()
    for name, mode in objectives:
        column = []
        ref_value = float(table.iloc[0][name]) if len(table) else math.nan
        for _, row in table.iterrows():
            if row["role"] == REFERENCE:
                column.append(REFERENCE)
                continue
            delta = float(row[f"delta_{name}"])
            if name in EXACT_OBJECTIVES:
                column.append(_exact_verdict(delta, mode))
                continue
            lo, hi = float(row.get(f"delta_{name}_lo", math.nan)), float(row.get(f"delta_{name}_hi", math.nan))
            if name in LATENCY_OBJECTIVES:
                column.append(latency_verdict(delta, lo, hi, ref_value))
            else:
                column.append(verdict(lo, hi, mode))
        table[f"verdict_{name}"] = column
    return table


def latency_verdict(delta: float, lo: float, hi: float, reference: float) -> str:
    """Return the verdict on a latency difference (lower is better; ms or a ratio): its interval's, but a
    tie under LATENCY_TIE_FRACTION of the reference's value."""
    word = verdict(lo, hi, "min")
    if word != "n/a" and abs(delta) < LATENCY_TIE_FRACTION * abs(reference):
        return "tie"
    return word


def dominates_reference(row: pd.Series, objectives: Sequence[tuple[str, str]]) -> bool:
    """Return True when the row is better than the reference on every objective with 95% confidence
    (an exact objective may also be equal), and better on at least one."""
    words = [row[f"verdict_{name}"] for name, _ in objectives]
    allowed = all(w == "better" or (w == "tie" and name in EXACT_OBJECTIVES)
                  for w, (name, _) in zip(words, objectives))
    return allowed and "better" in words


def _describe(row: pd.Series, ref: pd.Series, name: str) -> str:
    word, delta = row[f"verdict_{name}"], float(row[f"delta_{name}"])
    if name in INTERVAL_METRICS:
        change = f"{delta:+.3f}"
    elif float(ref[name]) != 0:
        change = f"{100.0 * delta / abs(float(ref[name])):+.0f}%"
    else:
        change = f"{delta:+.3g}"
    return f"ties on {name} ({change})" if word == "tie" else f"{change} {name} ({word})"


def headline(table: pd.DataFrame, objectives: Sequence[tuple[str, str]]) -> str:
    """Return one line: how many front points dominate the reference with 95% confidence, or which comes closest."""
    if table.empty or table["role"].iloc[0] != REFERENCE:
        return "No reference row: no verdicts."
    ref = table.iloc[0]
    # The reference itself may be on the front; it cannot beat itself.
    front = table[(table["role"] != REFERENCE) & (table["number"] != ref["number"])]
    if front.empty:
        return f"The reference (trial {int(ref['number'])}) is the whole front: nothing dominates it."
    winners = [int(row["number"]) for _, row in front.iterrows() if dominates_reference(row, objectives)]
    if winners:
        return (f"{len(winners)} of {len(front)} front points dominate the reference (trial "
                f"{int(ref['number'])}) with 95% confidence on every objective: trials "
                f"{', '.join(map(str, winners))}.")

    def distance(item) -> tuple:
        _, row = item
        words = [row[f"verdict_{name}"] for name, _ in objectives]
        first, mode = objectives[0]
        gain = float(row[f"delta_{first}"]) * (1 if mode == "max" else -1)
        # Closest to dominating: worse nowhere first, then ties on the fewest objectives.
        return (words.count("worse"), sum(w != "better" for w in words), -gain)

    _, closest = min(front.iterrows(), key=distance)
    parts = ", ".join(_describe(closest, ref, name) for name, _ in objectives)
    return (f"None of {len(front)} front points dominates the reference (trial {int(ref['number'])}) "
            f"with 95% confidence on every objective; closest: trial {int(closest['number'])}: {parts}.")
