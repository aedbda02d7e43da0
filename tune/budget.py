"""Budgets: bounds on recorded metrics that a deployment must meet (--budget "latency_ms<=0.8,params<=1e5").

A budget is a tuple of Bounds. Each bound gives one constraint value per trial, in Optuna's
convention (feasible when <= 0):

    METRIC<=LIMIT  ->  value - LIMIT
    METRIC>=LIMIT  ->  LIMIT - value

The searcher records these values on every completed trial (tune.study.SweepSearch), so the
TPE, NSGA-II and GP samplers steer towards feasible points (the random sampler ignores them);
the reports recommend only feasible front points (tune.report.verdicts.recommend).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from tune.sweep import OBJECTIVE_CHOICES

OPERATORS = ("<=", ">=")
BUDGET_METRICS = OBJECTIVE_CHOICES   # the metrics every trial records (latency_rel: when it is measured)
NO_BUDGET = "none"


class Bound(NamedTuple):
    """One term of a budget: `metric` `op` `limit`."""

    metric: str
    op: str
    limit: float

    def constraint(self, value: float) -> float:
        """Return Optuna's constraint value of `value` under this bound: <= 0 when it holds."""
        return float(value) - self.limit if self.op == "<=" else self.limit - float(value)

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.limit:g}"


Budget = tuple[Bound, ...]


def parse_budget(text: str) -> Budget:
    """Return the bounds of "METRIC<=LIMIT,METRIC>=LIMIT,..." ("none" or "" is no budget).

    Raises ValueError naming the term when its metric is not one the trials record, its
    operator is not <= or >=, or its limit is not a finite number.
    """
    if text.strip().lower() in ("", NO_BUDGET):
        return ()
    bounds: list[Bound] = []
    for term in (part.strip() for part in text.split(",")):
        op = next((candidate for candidate in OPERATORS if candidate in term), None)
        metric, _, limit_text = term.partition(op) if op else (term, "", "")
        metric, limit_text = metric.strip(), limit_text.strip()
        if op is None or not metric:
            raise ValueError(f"--budget expects METRIC<=LIMIT or METRIC>=LIMIT terms separated by commas "
                             f"(e.g. latency_ms<=0.8,params<=1e5), got {term!r}")
        if metric not in BUDGET_METRICS:
            raise ValueError(f"--budget {term}: unknown metric {metric!r}; allowed: {', '.join(BUDGET_METRICS)}")
        try:
            limit = float(limit_text)
        except ValueError:
            limit = math.nan
        if not math.isfinite(limit):
            raise ValueError(f"--budget {term}: the bound must be a finite number (e.g. 0.8 or 1e5), "
                             f"got {limit_text!r}")
        if any((b.metric, b.op) == (metric, op) for b in bounds):
            raise ValueError(f"--budget names {metric}{op} twice: {text!r}")
        bounds.append(Bound(metric, op, limit))
    return tuple(bounds)


def budget_text(budget: Sequence[Bound]) -> str:
    """Return the budget as --budget takes it ("none" for no budget)."""
    return ",".join(map(str, budget)) or NO_BUDGET


def check_measured(budget: Sequence[Bound], objectives: Sequence[tuple[str, str]], base: Mapping[str, Any]) -> None:
    """Raise ValueError (one line) when the budget names latency_rel but the sweep's trials do not time it."""
    measured = "latency_rel" in dict(objectives) or str(base.get("eval.latency_rel", False)).lower() == "true"
    if any(b.metric == "latency_rel" for b in budget) and not measured:
        raise ValueError("--budget latency_rel: the trials of this sweep do not measure it; name it in "
                         "--objectives or --set eval.latency_rel=true")


def unrecorded(budget: Sequence[Bound], study) -> list[str]:
    """Return the budget's metrics that some complete trial of the Optuna `study` did not record (as a number)."""
    from optuna.trial import TrialState

    names = list(study.metric_names or [])
    missing: set[str] = set()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        recorded = {**trial.user_attrs, **dict(zip(names, trial.values))}
        missing |= {b.metric for b in budget if isinstance(recorded.get(b.metric), bool)
                    or not isinstance(recorded.get(b.metric), (int, float))}
    return sorted(missing)


def constraint_values(budget: Sequence[Bound], metrics: Mapping[str, Any]) -> list[float]:
    """Return one constraint value per bound from a trial's `metrics` (feasible when all are <= 0).

    Raises ValueError naming the metric when `metrics` lacks one or it is not a finite number.
    """
    values = []
    for bound in budget:
        value = metrics.get(bound.metric)
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if isinstance(value, bool) or not math.isfinite(number):
            raise ValueError(f"budget metric {bound.metric} is {'missing' if value is None else repr(value)}")
        values.append(bound.constraint(number))
    return values


def violations(budget: Sequence[Bound], metrics: Mapping[str, Any]) -> list[str]:
    """Return the bounds `metrics` breaks, as "latency_ms 0.93 > 0.8" (empty when within the budget)."""
    broken = []
    for bound, value in zip(budget, constraint_values(budget, metrics)):
        if value > 0:
            sign = ">" if bound.op == "<=" else "<"
            broken.append(f"{bound.metric} {float(metrics[bound.metric]):.4g} {sign} {bound.limit:g}")
    return broken


def is_feasible(budget: Sequence[Bound], metrics: Mapping[str, Any]) -> bool:
    """Return True when `metrics` meets every bound of `budget` (always, for no budget)."""
    return not violations(budget, metrics)
