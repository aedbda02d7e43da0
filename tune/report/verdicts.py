"""Differences to the reference with 95% intervals, and a verdict per objective: better, worse or tie.

Where each interval comes from:
- val_auroc, val_auprc, val_accuracy: paired stratified bootstrap over the validation
  images (both trials' stored probabilities on each resample; trainables.evaluate.bootstrap);
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

A budget (tune.budget, --budget) adds one more condition to the recommendation: the point meets
every bound, judged on the values of the front table (re-timed latency where the pass ran).

Non-inferiority (quality objectives only): a point is non-inferior on a metric it maximises
when the lower end of the paired 95% interval of its difference to the reference exceeds
-margin (on a metric it minimises: the upper end is below +margin). Margins default to
QUALITY_MARGINS and are a report-time choice (--margin NAME=VALUE).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from trainables.evaluate.bootstrap import paired_deltas, verdict
from tune.budget import Bound, budget_text, violations

INTERVAL_METRICS = {"val_auroc": "auroc", "val_auprc": "auprc", "val_accuracy": "accuracy"}
EXACT_OBJECTIVES = frozenset({"params", "gflops", "params_ratio", "model_bytes"})
LATENCY_OBJECTIVES = frozenset({"latency_ms", "latency_rel"})
LATENCY_TIE_FRACTION = 0.05
REFERENCE = "reference"
# The largest drop of a quality objective still called "non-inferior". Conventions, not measured
# here: 0.005 AUROC as issue #29 proposes, 0.01 (one point) for AUPRC and accuracy; --margin overrides.
QUALITY_MARGINS = {"val_auroc": 0.005, "val_auprc": 0.01, "val_accuracy": 0.01}
COST_OBJECTIVES = frozenset({"params", "gflops", "params_ratio", "latency_ms", "latency_rel", "throughput_img_s",
                             "model_bytes"})


def _exact_verdict(delta: float, mode: str) -> str:
    if not math.isfinite(delta):
        return "n/a"
    if delta == 0:
        return "tie"
    return "better" if (delta > 0) == (mode == "max") else "worse"


def add_deltas(table: pd.DataFrame, objectives: Sequence[tuple[str, str]],
               predictions: Callable[[pd.Series], object | None] | None = None) -> pd.DataFrame:
    """Return `table` (reference row first, as front_table makes it) with delta_<objective>_lo/_hi columns.

    `predictions(row)` returns the row's trainables.evaluate.evaluation.Predictions or None; rows
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


def quality_objectives(objectives: Sequence[tuple[str, str]]) -> list[str]:
    """Return the objectives judged by non-inferiority (those with a paired interval), in order."""
    return [name for name, _ in objectives if name in QUALITY_MARGINS]


def cost_objectives(objectives: Sequence[tuple[str, str]]) -> list[str]:
    """Return the objectives that measure what a model costs (size, compute, time), in order."""
    return [name for name, _ in objectives if name in COST_OBJECTIVES]


def parse_margins(items: Sequence[str], objectives: Sequence[tuple[str, str]]) -> dict[str, float]:
    """Return {quality objective: margin}: QUALITY_MARGINS, replaced by each "NAME=VALUE" of `items` (--margin)."""
    quality = quality_objectives(objectives)
    margins = {name: QUALITY_MARGINS[name] for name in quality}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--margin expects METRIC=VALUE (e.g. val_auroc=0.005), got {item!r}")
        if name not in quality:
            raise ValueError(f"--margin {item}: {name!r} is not a quality objective of this sweep "
                             f"(its quality objectives: {', '.join(quality) or 'none'})")
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not 0.0 <= value < 1.0:
            raise ValueError(f"--margin {item}: the margin must be a number in [0, 1), got {text!r}")
        margins[name] = value
    return margins


def parse_prefer(name: str | None, objectives: Sequence[tuple[str, str]]) -> str | None:
    """Return the cost objective the recommendation minimises (--prefer): `name`, else the sweep's first one."""
    costs = cost_objectives(objectives)
    if name is None:
        return costs[0] if costs else None
    if name not in costs:
        raise ValueError(f"--prefer {name}: not a cost objective of this sweep "
                         f"(its cost objectives: {', '.join(costs) or 'none'})")
    return name


def noninferior(lo: float, hi: float, mode: str, margin: float) -> bool | None:
    """Return whether [lo, hi] (value - reference) stays within `margin` of the reference in the bad
    direction: lo > -margin for "max", hi < margin for "min"; None without an interval."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    return lo > -margin if mode == "max" else hi < margin


def add_noninferiority(table: pd.DataFrame, objectives: Sequence[tuple[str, str]],
                       margins: dict[str, float] | None = None) -> pd.DataFrame:
    """Return `table` with noninferior_<metric> (True | False | None) for each quality objective."""
    table = table.copy()
    margins = {**QUALITY_MARGINS, **(margins or {})}
    for name, mode in objectives:
        if name not in QUALITY_MARGINS:
            continue
        lo = table.get(f"delta_{name}_lo", pd.Series(math.nan, index=table.index))
        hi = table.get(f"delta_{name}_hi", pd.Series(math.nan, index=table.index))
        table[f"noninferior_{name}"] = pd.Series(
            [noninferior(float(a), float(b), mode, margins[name]) for a, b in zip(lo, hi)],
            index=table.index, dtype=object)
    return table


def _signed(value: float, mode: str) -> float:
    return value if mode == "min" else -value


def _quality_part(row: pd.Series, name: str, margin: float) -> str:
    lo, hi = float(row.get(f"delta_{name}_lo", math.nan)), float(row.get(f"delta_{name}_hi", math.nan))
    return f"{name} {float(row[f'delta_{name}']):+.3f} [{lo:+.3f}, {hi:+.3f}] (margin {margin:g})"


def _cost_part(row: pd.Series, ref: pd.Series, name: str) -> str:
    word, delta = row[f"verdict_{name}"], float(row[f"delta_{name}"])
    lo, hi = float(row.get(f"delta_{name}_lo", delta)), float(row.get(f"delta_{name}_hi", delta))
    base = abs(float(ref[name]))
    if base == 0:
        return f"{delta:+.3g} {name} ({word})"
    interval = f" [{100 * lo / base:+.0f}%, {100 * hi / base:+.0f}%]" if math.isfinite(lo) and lo != hi else ""
    return f"{100 * delta / base:+.0f}% {name}{interval} ({word})"


def _shortfalls(row: pd.Series, objectives: Sequence[tuple[str, str]], margins: dict[str, float],
                budget: Sequence[Bound] = ()) -> list[str]:
    """Return why `row` cannot be recommended (empty when it qualifies)."""
    modes = dict(objectives)
    broken = violations(budget, row)
    reasons = [f"outside the budget ({', '.join(broken)})"] if broken else []
    for name in quality_objectives(objectives):
        ok = row.get(f"noninferior_{name}")
        if ok is None or (isinstance(ok, float) and math.isnan(ok)):
            reasons.append(f"no paired interval on {name} (no stored predictions)")
        elif not ok:
            side = "below" if modes[name] == "max" else "above"
            reasons.append(f"{_quality_part(row, name, margins[name])} reaches {side} the margin")
    if not any(row[f"verdict_{name}"] == "better" for name in cost_objectives(objectives)):
        reasons.append("better on no cost objective")
    reasons += [f"worse on {name}" for name, _ in objectives
                if name not in QUALITY_MARGINS and row[f"verdict_{name}"] == "worse"]
    return reasons


def recommend(table: pd.DataFrame, objectives: Sequence[tuple[str, str]], margins: dict[str, float] | None = None,
              prefer: str | None = None, budget: Sequence[Bound] = ()) -> tuple[int | None, str]:
    """Return (the recommended front point's trial number, or None; one line saying which and why, or why none).

    A front point qualifies when it is non-inferior on every quality objective (noninferior_<metric>,
    see add_noninferiority), better than the reference on at least one cost objective and worse on
    no other objective, and within `budget` (tune.budget; every bound met by the row's values). Among
    those the lowest `prefer` wins (a cost objective; default the sweep's first), then the lowest other
    cost objectives in the sweep's order, then the lower trial number.
    """
    if table.empty or table["role"].iloc[0] != REFERENCE:
        return None, "No reference row: no recommendation."
    margins = {**QUALITY_MARGINS, **(margins or {})}
    prefer = parse_prefer(prefer, objectives)
    if prefer is None:
        return None, "No recommendation: the sweep has no cost objective (params, latency_ms, ...) to save on."
    if any(f"noninferior_{name}" not in table.columns for name in quality_objectives(objectives)):
        table = add_noninferiority(table, objectives, margins)
    ref = table.iloc[0]
    front = table[(table["role"] != REFERENCE) & (table["number"] != ref["number"])]
    if front.empty:
        return None, f"No recommendation: the reference (trial {int(ref['number'])}) is the whole front."
    modes = dict(objectives)
    order = [prefer] + [name for name in cost_objectives(objectives) if name != prefer]
    reasons = {index: _shortfalls(row, objectives, margins, budget) for index, row in front.iterrows()}
    within = f", within the budget {budget_text(budget)}" if budget else ""
    qualifying = front[[not reasons[index] for index in front.index]]
    quality = quality_objectives(objectives)
    margin_text = ", ".join(f"{name} {margins[name]:g}" for name in quality) or "no quality objective"
    if not qualifying.empty:
        best = min(qualifying.iterrows(), key=lambda item: (
            *(_signed(float(item[1][name]), modes[name]) for name in order), int(item[1]["number"])))[1]
        parts = [f"non-inferior on {_quality_part(best, name, margins[name])}" for name in quality]
        parts += [_cost_part(best, ref, name) for name, _ in objectives if name not in QUALITY_MARGINS]
        return int(best["number"]), (
            f"Recommended: trial {int(best['number'])}: {', '.join(parts)}; the lowest {prefer} of "
            f"{len(qualifying)} qualifying front point{'s' if len(qualifying) != 1 else ''} (non-inferior on every "
            f"quality objective, better on a cost objective, worse on none{within}; --prefer {prefer}).")

    def shortfall(item) -> tuple:
        index, row = item
        gap = 0.0
        for name in quality:
            lo, hi = float(row.get(f"delta_{name}_lo", math.nan)), float(row.get(f"delta_{name}_hi", math.nan))
            bound = -lo - margins[name] if modes[name] == "max" else hi - margins[name]
            gap += max(0.0, bound) if math.isfinite(bound) else math.inf
        return (len(reasons[index]), gap, int(row["number"]))

    index, closest = min(front.iterrows(), key=shortfall)
    return None, (f"No recommendation: none of {len(front)} front points is non-inferior on every quality "
                  f"objective (margins: {margin_text}), better on a cost objective and worse on none{within}; closest: "
                  f"trial {int(closest['number'])}: {'; '.join(reasons[index])}.")
