"""Sweep reports: the Pareto front, hypervolume history, all trials, and their plots.

Computing is kept apart from rendering, so tests check the numbers without drawing anything:
pareto_front, hypervolume, hypervolume_history, trials_frame, front_table and compute_report
(a trials table in, a Report out) compute; write_report, write_trials and their composition
write_reports write the files. hypervolume_reference_point is the one rule that bounds every
hypervolume (the sweep's reports, tune.report.summary.reference_point, --compare).
Objectives are given as ``[(name, "max" | "min"), ...]``; internally every objective is
turned into a loss (max objectives negated) so "smaller is better" everywhere.

Imports: tune.budget, tune.report.verdicts, and tune.sweep / tune.warm_start for their attribute
names only; never tune.report.summary, tune.trials or the after-sweep passes (they import this).
"""

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import moocore
import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from trainables.storage import atomic_write
from tune.budget import Bound, budget_text, is_feasible, unrecorded
from tune.sweep import LADDER_ATTR
from tune.warm_start import WARM_FRONT_ATTR, WARM_START_ATTR
from tune.report.verdicts import (
    LATENCY_TIE_FRACTION, QUALITY_MARGINS, add_deltas, add_noninferiority, add_verdicts, headline, parse_prefer,
    quality_objectives, recommend,
)

logger = logging.getLogger(__name__)

Objectives = Sequence[tuple[str, str]]

CHANCE_AUROC = 0.5
UNCOMPRESSED_LATENCY_REL = 1.0   # latency_rel of the uncompressed model it divides by


def parse_objectives(objectives: Objectives) -> list[tuple[str, str]]:
    """Return `objectives` as a validated list of (name, "max" | "min")."""
    parsed = [tuple(o) for o in objectives]
    if not parsed:
        raise ValueError("objectives must name at least one (metric, 'max'|'min') pair")
    for objective in parsed:
        if len(objective) != 2 or objective[1] not in ("max", "min"):
            raise ValueError(f"each objective must be (name, 'max'|'min'), got {objective!r}")
    names = [name for name, _ in parsed]
    if len(set(names)) != len(names):
        raise ValueError(f"objective names must be distinct, got {names}")
    return parsed


def objective_losses(df: pd.DataFrame, objectives: Objectives) -> np.ndarray:
    """Return the objective columns as an (n, d) float array, max objectives negated."""
    missing = [name for name, _ in objectives if name not in df.columns]
    if missing:
        raise ValueError(f"objective column(s) {missing} not in the table; columns: {list(df.columns)}")
    columns = [
        -df[name].to_numpy(dtype=float) if mode == "max" else df[name].to_numpy(dtype=float)
        for name, mode in objectives
    ]
    return np.stack(columns, axis=1) if columns else np.empty((len(df), 0))


def _non_dominated_mask(losses: np.ndarray) -> np.ndarray:
    """Return a mask of rows no other row dominates (no worse everywhere, better somewhere); equal rows stay."""
    if len(losses) == 0:
        return np.zeros(0, dtype=bool)
    return moocore.is_nondominated(losses, keep_weakly=True)


def pareto_front(df: pd.DataFrame, objectives: Objectives) -> pd.DataFrame:
    """Return the rows of `df` no other row dominates; rows with a missing objective are skipped.

    Row a dominates row b when a is no worse on every objective and strictly better on
    one; rows with identical objective values do not dominate each other, so ties stay.
    """
    objectives = parse_objectives(objectives)
    losses = objective_losses(df, objectives)
    finite = np.all(np.isfinite(losses), axis=1)
    candidates = df[finite]
    return candidates[_non_dominated_mask(losses[finite])]


def hypervolume(losses: np.ndarray, reference: np.ndarray) -> float:
    """Return the exact volume dominated by `losses` (minimised) and bounded by `reference` (moocore).

    Points not strictly better than the reference on every axis add nothing.
    """
    reference = np.asarray(reference, dtype=float)
    losses = np.asarray(losses, dtype=float).reshape(-1, len(reference))
    losses = losses[np.all(losses < reference, axis=1)]
    if len(losses) == 0:
        return 0.0
    return float(moocore.hypervolume(losses, ref=reference))


def _reference_losses(objectives: Objectives, reference_point: Mapping[str, float]) -> np.ndarray:
    missing = [name for name, _ in objectives if name not in reference_point]
    if missing:
        raise ValueError(f"reference_point lacks objective(s) {missing}; got {dict(reference_point)}")
    return np.array(
        [-reference_point[n] if mode == "max" else reference_point[n] for n, mode in objectives],
        dtype=float,
    )


def hypervolume_history(
    df: pd.DataFrame, objectives: Objectives, reference_point: Mapping[str, float]
) -> list[float]:
    """Return, for each row in order (by "number" if present), the hypervolume of the rows so far.

    Rows with a missing objective keep the previous value. The reference point is in
    objective units, e.g. {"val_auroc": 0.5, "params": uncompressed, "latency_ms": uncompressed}.
    """
    objectives = parse_objectives(objectives)
    if "number" in df.columns:
        df = df.sort_values("number", kind="stable")
    losses = objective_losses(df, objectives)
    reference = _reference_losses(objectives, reference_point)
    finite = np.all(np.isfinite(losses), axis=1)
    return [hypervolume(losses[: i + 1][finite[: i + 1]], reference) for i in range(len(losses))]


def front_hypervolume(df: pd.DataFrame, objectives: Objectives, reference_point: Mapping[str, float]) -> float:
    """Return the hypervolume of the rows of `df` (missing objectives skipped) against `reference_point`."""
    objectives = parse_objectives(objectives)
    losses = objective_losses(df, objectives)
    return hypervolume(losses[np.all(np.isfinite(losses), axis=1)], _reference_losses(objectives, reference_point))


def _cell(value: Any) -> Any:
    """Return a trial value fit for a Parquet column: containers become JSON text."""
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def _unify_object_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Turn columns holding several Python types (e.g. 0.3 and "nan") into text, for Parquet."""
    for column in df.columns:
        if df[column].dtype != object:
            continue
        kinds = {type(v) for v in df[column] if v is not None and not (isinstance(v, float) and math.isnan(v))}
        if len(kinds) > 1:
            df[column] = df[column].map(lambda v: None if v is None else str(v))
    return df


def objective_names(study: optuna.Study) -> list[str]:
    """Return the study's metric names, or values_0, values_1, ... when none are set."""
    return list(study.metric_names or [f"values_{i}" for i in range(len(study.directions))])


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """Return one row per trial: number, state, objectives, params, user attributes, timing.

    Objective columns carry the study's metric names; parameters and user attributes
    keep their own names (a user attribute that clashes with a parameter gets a
    "user_attrs." prefix); containers (the trial config) are stored as JSON text.
    """
    names = objective_names(study)
    rows = []
    for trial in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {"number": trial.number, "state": trial.state.name}
        values = trial.values if trial.values is not None else [math.nan] * len(names)
        row.update(zip(names, values))
        row.update(trial.params)
        for key, value in trial.user_attrs.items():
            column = key if key not in row else f"user_attrs.{key}"
            row[column] = _cell(value)
        row["enqueued"] = "fixed_params" in trial.system_attrs
        row["datetime_start"] = trial.datetime_start
        row["datetime_complete"] = trial.datetime_complete
        row["duration_s"] = trial.duration.total_seconds() if trial.duration else math.nan
        rows.append(row)
    return _unify_object_columns(pd.DataFrame(rows))


def reference_row(df: pd.DataFrame, objectives: Objectives, trial_number: int | None = None) -> pd.Series | None:
    """Return the reference configuration's row: trial `trial_number`, else the first enqueued COMPLETE trial
    of the sweep's own that is no ladder rung (tune.sweep.LADDER_ATTR), warm start's trial nor re-run of
    its front (tune.warm_start): the seed configuration."""
    complete = df[np.all(np.isfinite(objective_losses(df, objectives)), axis=1)]
    if trial_number is not None:
        match = complete[complete["number"] == trial_number]
        if match.empty:
            raise ValueError(f"reference trial {trial_number} is not a complete trial of the study")
        return match.iloc[0]
    for column in (WARM_START_ATTR, WARM_FRONT_ATTR, LADDER_ATTR):
        if column in complete.columns:
            complete = complete[complete[column].isna()]
    if "enqueued" in complete.columns:
        enqueued = complete[complete["enqueued"].astype(bool)].sort_values("number")
        if not enqueued.empty:
            return enqueued.iloc[0]
    return None


def front_table(
    df: pd.DataFrame,
    objectives: Objectives,
    reference: pd.Series | None,
    extra_columns: Sequence[str] = (),
    predictions: Callable[[pd.Series], Any] | None = None,
    margins: Mapping[str, float] | None = None,
    budget: Sequence[Bound] = (),
) -> pd.DataFrame:
    """Return the front, best first by the first objective, with the reference row, deltas and verdicts.

    Columns: role ("reference" or "front"), number, each objective with its 95% interval
    (<objective>_lo/_hi, where the trials carry one), then with a reference
    delta_<objective> = value - reference value, its interval and verdict_<objective>
    (tune.report.verdicts; `predictions(row)` gives the stored validation probabilities for the
    paired bootstrap), noninferior_<metric> per quality objective (against `margins`, default
    tune.report.verdicts.QUALITY_MARGINS), then `extra_columns`. With a `budget` (tune.budget) the table
    has a `feasible` column, and the front of the feasible rows joins the front of all rows: a
    feasible point that only infeasible ones dominate is what a user with that budget looks for.
    """
    objectives = parse_objectives(objectives)
    first, first_mode = objectives[0]
    front = pareto_front(df, objectives)
    if budget:
        within = pareto_front(df[[is_feasible(budget, row) for _, row in df.iterrows()]], objectives)
        front = pd.concat([front, within[~within.index.isin(front.index)]])
    front = front.sort_values([first, "number"], ascending=[first_mode == "min", True], kind="stable")
    front.insert(0, "role", "front")
    if reference is not None:
        ref = reference.to_frame().T
        ref.insert(0, "role", "reference")
        front = pd.concat([ref, front], ignore_index=True).infer_objects()
        for name, _ in objectives:
            front[name] = front[name].astype(float)
            if f"delta_{name}" not in front.columns or front[f"delta_{name}"].isna().all():
                front[f"delta_{name}"] = front[name] - float(reference[name])
        front = add_verdicts(add_deltas(front, objectives, predictions), objectives)
        front = add_noninferiority(front, objectives, dict(margins or {}))
    leading = ["role", "number"]
    if budget:
        front["feasible"] = [is_feasible(budget, row) for _, row in front.iterrows()]
        leading.append("feasible")
    for name, _ in objectives:
        leading += [c for c in (name, f"{name}_lo", f"{name}_hi") if c in front.columns]
    deltas = [c for name, _ in objectives
              for c in (f"delta_{name}", f"delta_{name}_lo", f"delta_{name}_hi", f"verdict_{name}",
                        f"noninferior_{name}")
              if c in front.columns]
    extra = [c for c in extra_columns if c in front.columns and c not in leading + deltas]
    return front[leading + deltas + extra].reset_index(drop=True)


def apply_retimed(df: pd.DataFrame, retimed: pd.DataFrame) -> pd.DataFrame:
    """Return the rows of `df` the re-timing pass timed, latency_ms replaced by the re-timed values.

    The in-sweep value stays as latency_ms_sweep; latency_ms_lo/_hi become the pass's
    interval and delta_latency_ms (+_lo/_hi) its paired difference to the reference.
    """
    timed = retimed.drop_duplicates("number").set_index("number")
    rows = df[df["number"].isin(timed.index)].copy()
    numbers = rows["number"].to_numpy()
    rows["latency_ms_sweep"] = rows["latency_ms"]
    for target, source in (("latency_ms", "latency_ms_retimed"), ("latency_ms_lo", "latency_ms_retimed_lo"),
                           ("latency_ms_hi", "latency_ms_retimed_hi"), ("delta_latency_ms", "delta_latency_ms"),
                           ("delta_latency_ms_lo", "delta_latency_ms_lo"),
                           ("delta_latency_ms_hi", "delta_latency_ms_hi")):
        rows[target] = timed.loc[numbers, source].to_numpy(dtype=float)
    for name in ("latency_ms_retimed", "latency_ms_retimed_lo", "latency_ms_retimed_hi"):
        rows[name] = timed.loc[numbers, name].to_numpy(dtype=float)
    return rows


def markdown_table(table: pd.DataFrame) -> str:
    """Return `table` as a GitHub-flavoured Markdown table (numbers to 4 significant digits)."""

    def fmt(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def _error_bars(frame: pd.DataFrame, name: str) -> np.ndarray | None:
    """Return matplotlib's (2, n) distances to the interval ends of column `name`, or None without an interval."""
    lo, hi = f"{name}_lo", f"{name}_hi"
    if lo not in frame.columns or hi not in frame.columns:
        return None
    values = frame[name].to_numpy(dtype=float)
    low = np.clip(values - frame[lo].to_numpy(dtype=float), 0, None)
    high = np.clip(frame[hi].to_numpy(dtype=float) - values, 0, None)
    return np.nan_to_num(np.stack([low, high]))


def _plot_projection(
    df: pd.DataFrame, front: pd.DataFrame, x: tuple[str, str], y: tuple[str, str],
    reference: pd.DataFrame | None, path: Path, note: str = "",
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=120)
    ax.scatter(df[x[0]], df[y[0]], s=14, c="0.75", label="trials (in-sweep values)")
    ordered = front.sort_values(x[0])
    ax.errorbar(ordered[x[0]].astype(float), ordered[y[0]].astype(float), xerr=_error_bars(ordered, x[0]),
                yerr=_error_bars(ordered, y[0]), fmt="o", c="tab:blue", ms=4, elinewidth=0.8, capsize=2,
                label="Pareto front, 95% intervals")
    if reference is not None and not reference.empty:
        ax.errorbar(reference[x[0]].astype(float), reference[y[0]].astype(float),
                    xerr=_error_bars(reference, x[0]), yerr=_error_bars(reference, y[0]), fmt="*", ms=14,
                    c="tab:red", elinewidth=0.8, capsize=2, label="reference config")
    for axis, (name, _) in (("x", x), ("y", y)):
        if name.startswith("params") and name != "params_ratio":
            getattr(ax, f"set_{axis}scale")("log")
    ax.set_xlabel(f"{x[0]} ({x[1]})")
    ax.set_ylabel(f"{y[0]} ({y[1]})")
    if note:
        ax.set_title(note, fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda temp: fig.savefig(temp, format="png"))
    plt.close(fig)


def _plot_history(history: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5), dpi=120)
    ax.step(history["number"], history["hypervolume"], where="post")
    ax.set_xlabel("trial number")
    ax.set_ylabel("hypervolume")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda temp: fig.savefig(temp, format="png"))
    plt.close(fig)


def hypervolume_reference_point(complete: pd.DataFrame, objectives: Objectives,
                                retimed_rows: pd.DataFrame | None = None) -> dict[str, float]:
    """Return the point that bounds the hypervolume, in objective units, from the complete trials' table.

    The one rule of every report and of --compare: val_auroc: chance (0.5); params: the
    uncompressed model's count (the trials' `params_uncompressed`, the most params observed
    where none is recorded); latency_rel: the uncompressed model's 1.0, or the worst value
    observed when a trial is slower (test-time augmentation can be); every other objective
    (latency_ms, gflops, ...): the worst value observed over `complete`, since no trial measures
    the uncompressed model. `retimed_rows` (apply_retimed's rows, whose latencies the front uses)
    widens latency_ms to the worst re-timed value, so no front point falls outside the box.
    """
    point: dict[str, float] = {}
    for name, mode in parse_objectives(objectives):
        values = complete[name].astype(float)
        if name == "val_auroc":
            point[name] = CHANCE_AUROC
        elif name == "params":
            recorded = (pd.to_numeric(complete["params_uncompressed"], errors="coerce").dropna()
                        if "params_uncompressed" in complete.columns else pd.Series(dtype=float))
            point[name] = float(recorded.max() if len(recorded) else values.max())
        elif name == "latency_rel":
            point[name] = max(UNCOMPRESSED_LATENCY_REL, float(values.max()))
        else:
            point[name] = float(values.max() if mode == "min" else values.min())
    if retimed_rows is not None and "latency_ms" in point:
        point["latency_ms"] = max(point["latency_ms"], float(retimed_rows["latency_ms"].max()))
    return point


def mark_feasible(trials: pd.DataFrame, budget: Sequence[Bound]) -> pd.DataFrame:
    """Return `trials` (trials_frame) with a `feasible` column under a `budget`: True/False for the complete
    trials (in-sweep values), None for the others; unchanged without a budget or a trial."""
    if not budget or trials.empty:
        return trials
    trials = trials.copy()
    trials["feasible"] = pd.Series([is_feasible(budget, row) if row["state"] == TrialState.COMPLETE.name else None
                                    for _, row in trials.iterrows()], index=trials.index, dtype=object)
    return trials


@dataclass(frozen=True)
class Report:
    """What a sweep's reports say (compute_report); write_report renders it into files."""

    study_name: str
    objectives: list[tuple[str, str]]
    trials: pd.DataFrame             # every trial (trials.parquet), in-sweep values
    complete: pd.DataFrame           # its COMPLETE rows
    candidates: pd.DataFrame         # the rows the front is drawn from: `complete`, or the re-timed rows
    reference: pd.Series | None      # the reference configuration's row of `candidates`
    table: pd.DataFrame              # pareto.csv: reference row, front, deltas, verdicts, `recommended`
    recommended: int | None          # the recommended front point's trial number
    recommendation: str              # answer.md's first line: the recommendation, or why there is none
    headline: str                    # the dominance line (tune.report.verdicts.headline)
    rule: str                        # the decision rule, with the budget's sentence under a budget
    reference_point: dict[str, float]
    front_hypervolume: float         # of the table's rows (front and reference) against reference_point
    history: pd.DataFrame            # number, hypervolume: the in-sweep complete trials so far
    lines: list[str]                 # pareto.md's text above its table
    uses_retimed: bool               # the front's latency_ms comes from the re-timing pass

    @property
    def front(self) -> pd.DataFrame:
        """Return the table's front rows."""
        return self.table[self.table["role"] == "front"]


def compute_report(
    trials: pd.DataFrame,
    objectives: Objectives,
    *,
    study_name: str = "",
    param_names: Sequence[str] = (),
    reference_point: Mapping[str, float] | None = None,
    reference_trial: int | None = None,
    predictions: Callable[[pd.Series], Any] | None = None,
    retimed: pd.DataFrame | None = None,
    notes: Sequence[str] = (),
    margins: Mapping[str, float] | None = None,
    prefer: str | None = None,
    budget: Sequence[Bound] = (),
) -> Report:
    """Return the reports' content for the trials table `trials` (trials_frame, mark_feasible under a budget).

    `reference_trial` picks the reference configuration (default: reference_row's seed point).
    `reference_point` bounds the hypervolume (default: hypervolume_reference_point).
    `predictions(row)` returns a trial's stored validation predictions (paired AUROC intervals).
    With `retimed` (tune.report.retime's table) the front, its deltas and front hypervolume use the
    re-timed latencies; the hypervolume history keeps the in-sweep ones. `notes` are lines added
    under the headline; `param_names` become columns of the table. `margins` (non-inferiority,
    per quality objective) and `prefer` (the cost objective to minimise) choose the recommendation
    (tune.report.verdicts.recommend); with a `budget` (tune.budget) only feasible points are recommended.
    Raises ValueError when `trials` has no complete trial.
    """
    objectives = parse_objectives(objectives)
    budget = tuple(budget)
    complete = trials[trials["state"] == TrialState.COMPLETE.name] if len(trials) else trials
    if complete.empty:
        raise ValueError(f"study {study_name!r} has no complete trial: no front to report")
    reference = reference_row(complete, objectives, reference_trial)
    candidates = complete
    use_retimed = retimed is not None and not retimed.empty and "latency_ms" in dict(objectives)
    if use_retimed and (reference is None or int(reference["number"]) not in set(retimed["number"])):
        logger.warning("retime.csv does not hold the reference trial; the front uses in-sweep latencies "
                       "(rerun the pass: --report NAME --retime)")
        use_retimed = False
    if use_retimed:
        candidates = apply_retimed(complete, retimed)
        if reference is not None:
            reference = candidates[candidates["number"] == reference["number"]].iloc[0]
    extra = ([b.metric for b in budget if b.metric not in dict(objectives)]
             + (["latency_ms_sweep"] if use_retimed else []) + list(param_names))
    margins = {**{n: QUALITY_MARGINS[n] for n in quality_objectives(objectives)}, **(margins or {})}
    table = front_table(candidates, objectives, reference, extra_columns=extra, predictions=predictions,
                        margins=margins, budget=budget)
    recommended, recommendation = recommend(table, objectives, margins, prefer, budget)
    table.insert(2, "recommended", (table["role"] == "front") & (table["number"] == recommended))
    if reference_point is None:
        reference_point = hypervolume_reference_point(complete, objectives, candidates if use_retimed else None)
    reference_point = dict(reference_point)
    front = table[table["role"] == "front"]
    front_volume = front_hypervolume(table, objectives, reference_point)
    if reference is None:
        recommendation = "No reference trial: no recommendation."
    dominance = headline(table, objectives) if reference is not None else "No reference trial: no verdicts."
    rule = _decision_rule(objectives, margins, prefer)
    if budget:
        rule += " " + _budget_line(budget, complete, table, candidates, objectives, use_retimed)
    lines = [
        recommendation,
        "",
        dominance,
        "",
        f"{len(complete)} complete of {len(trials)} trials; {len(front)} on the front "
        f"({', '.join(f'{n} {m}' for n, m in objectives)}); hypervolume of the front and the "
        f"reference {front_volume:.6g} (reference point {reference_point}).",
        "Intervals are 95%: validation metrics by stratified bootstrap over the validation images "
        "(deltas paired on the same images), latency over timing rounds; verdicts compare each point "
        "with the reference (better / worse / tie; params and gflops are exact counts; latency "
        f"differences under {LATENCY_TIE_FRACTION:.0%} of the reference count as ties).",
        rule,
        *notes,
    ]
    if use_retimed:
        lines.append("latency_ms of the reference and the front comes from the re-timing pass (interleaved rounds "
                     "in one process, retime.csv); the in-sweep value is latency_ms_sweep.")
    if "latency_rel" in dict(objectives):
        lines.append("latency_rel is each trial's latency over the uncompressed model's (1.0; below 1 is faster), "
                     "timed in interleaved rounds on the trial's own device, with the 95% interval of the median "
                     "ratio; the re-timing pass leaves it as measured.")
    history = pd.DataFrame({
        "number": complete.sort_values("number")["number"].to_numpy(),
        "hypervolume": hypervolume_history(complete, objectives, reference_point),
    })
    return Report(study_name=study_name, objectives=objectives, trials=trials, complete=complete,
                  candidates=candidates, reference=reference, table=table, recommended=recommended,
                  recommendation=recommendation, headline=dominance, rule=rule, reference_point=reference_point,
                  front_hypervolume=front_volume, history=history, lines=lines, uses_retimed=use_retimed)


def write_trials(trials: pd.DataFrame, out_dir: str | Path) -> Path:
    """Write the trials table as trials.parquet into local folder `out_dir`; return its path."""
    return atomic_write(Path(out_dir) / "trials.parquet",
                        lambda temp: trials.to_parquet(temp, engine="pyarrow", index=False))


def write_report(report: Report, out_dir: str | Path) -> dict[str, Path]:
    """Write `report` into local folder `out_dir`; return {report name: path}.

    Writes pareto.csv (the table; `recommended` marks the recommendation), answer.md (the
    recommendation, the dominance headline, the rule and the verdict table, for the dashboard
    note and W&B), pareto.md (the report's lines over the table), hypervolume.csv/.png and one
    pareto_<a>__<b>.png per pair of objectives (every complete trial with its in-sweep values,
    the front and the reference as the table has them). trials.parquet is write_trials'.
    """
    out_dir = Path(out_dir)
    objectives, table = report.objectives, report.table
    written: dict[str, Path] = {}
    written["pareto.csv"] = atomic_write(out_dir / "pareto.csv", lambda temp: table.to_csv(temp, index=False))
    answer = [report.recommendation, "", report.headline, "", report.rule, "",
              markdown_table(verdict_table(table, objectives))]
    written["answer.md"] = atomic_write(out_dir / "answer.md", lambda temp: temp.write_text("\n".join(answer)))
    title = f"# Pareto front of study {report.study_name!r}\n\n"
    written["pareto.md"] = atomic_write(
        out_dir / "pareto.md",
        lambda temp: temp.write_text(title + "\n".join(report.lines) + "\n\n"
                                     + markdown_table(_display(table, objectives))),
    )
    written["hypervolume.csv"] = atomic_write(
        out_dir / "hypervolume.csv", lambda temp: report.history.to_csv(temp, index=False)
    )
    _plot_history(report.history, out_dir / "hypervolume.png")
    written["hypervolume.png"] = out_dir / "hypervolume.png"
    ref_frame = table[table["role"] == "reference"]
    note = "front and reference latency: re-timing pass" if report.uses_retimed else ""
    for x, y in combinations(objectives, 2):
        name = f"pareto_{x[0]}__{y[0]}.png"
        _plot_projection(report.complete, report.front, x, y, ref_frame, out_dir / name, note)
        written[name] = out_dir / name
    return written


def write_reports(study: optuna.Study, out_dir: str | Path, objectives: Objectives, *,
                  budget: Sequence[Bound] = (), **options: Any) -> dict[str, Path]:
    """Write the sweep's reports into local folder `out_dir`; return {report name: path}.

    trials.parquet (every trial; under a `budget`, complete trials gain a `feasible` column),
    then, when a trial completed, compute_report's content as write_report writes it; `options`
    are compute_report's other keyword arguments (reference_point, reference_trial, predictions,
    retimed, notes, margins, prefer). Raises ValueError when the budget names a metric the
    complete trials did not record.
    """
    objectives = parse_objectives(objectives)
    missing = unrecorded(tuple(budget), study)
    if missing:
        raise ValueError(f"--budget names {', '.join(missing)}, which complete trials of study "
                         f"{study.study_name!r} did not record")
    trials = mark_feasible(trials_frame(study), budget)
    written = {"trials.parquet": write_trials(trials, out_dir)}
    if not len(trials) or not (trials["state"] == TrialState.COMPLETE.name).any():
        logger.warning("study %r has no complete trial; wrote trials.parquet only", study.study_name)
        return written
    param_names = sorted({name for trial in study.get_trials(deepcopy=False) for name in trial.params})
    report = compute_report(trials, objectives, study_name=study.study_name, param_names=param_names,
                            budget=budget, **options)
    return {**written, **write_report(report, out_dir)}


def _decision_rule(objectives: Objectives, margins: Mapping[str, float], prefer: str | None) -> str:
    """Return pareto.md's line stating the non-inferiority margins and the recommendation's rule."""
    stated = ", ".join(f"{name} {margins[name]:g}" for name in quality_objectives(objectives))
    quality = (f"non-inferior (the paired 95% interval of the difference stays above -margin; margins {stated}, "
               "--margin METRIC=VALUE) on every quality objective, " if stated else "")
    prefer = parse_prefer(prefer, objectives)
    rule = f"the lowest {prefer} first (--prefer)" if prefer else "none: no cost objective"
    return (f"The recommended point is {quality}better than the reference on at least one cost objective and "
            f"worse on none; among those, {rule}.")


def _budget_line(budget: Sequence[Bound], complete: pd.DataFrame, table: pd.DataFrame, candidates: pd.DataFrame,
                 objectives: Objectives, use_retimed: bool) -> str:
    """Return the reports' sentence on the budget: the bounds, how many trials and front points meet them."""
    front = table[table["role"] == "front"]
    extra = len(set(front["number"]) - set(pareto_front(candidates, objectives)["number"]))
    return (f"Budget {budget_text(budget)} (--budget): {int(complete['feasible'].sum())} of {len(complete)} complete "
            f"trials within it (in-sweep values), {int(front['feasible'].sum())} of {len(front)} front points"
            + (" (re-timed latency)" if use_retimed and any(b.metric == "latency_ms" for b in budget) else "")
            + (f", {extra} of them on the front only among the feasible trials" if extra else "")
            + "; only a point within it is recommended.")


def verdict_table(table: pd.DataFrame, objectives: Objectives) -> pd.DataFrame:
    """Return the front table's decision columns for Markdown: role, number, recommended, and per objective
    the value, the difference to the reference with its interval, the verdict and non-inferiority."""
    shown = _display(table, objectives)
    keep = ["role", "number"] + [c for c in shown.columns
                                 if c.split(" ", 1)[-1] in dict(objectives) and c not in ("role", "number")]
    out = shown[keep].copy()
    if "feasible" in table.columns:
        out.insert(2, "feasible", shown["feasible"])
    if "recommended" in table.columns:
        out.insert(2, "recommended", table["recommended"].map(lambda v: "yes" if str(v) == "True" else ""))
    return out


def _display(table: pd.DataFrame, objectives: Objectives) -> pd.DataFrame:
    """Return the table for Markdown: each value and difference with its interval in one cell."""

    def with_interval(value, lo, hi) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        text = f"{float(value):.4g}"
        if lo is not None and hi is not None and math.isfinite(float(lo)) and math.isfinite(float(hi)) \
                and float(lo) != float(hi):
            text += f" [{float(lo):.4g}, {float(hi):.4g}]"
        return text

    out = pd.DataFrame({"role": table["role"], "number": table["number"]})
    for name, _ in objectives:
        out[name] = [with_interval(r.get(name), r.get(f"{name}_lo"), r.get(f"{name}_hi")) for _, r in table.iterrows()]
    for name, _ in objectives:
        if f"delta_{name}" in table.columns:
            out[f"Δ {name}"] = [with_interval(r.get(f"delta_{name}"), r.get(f"delta_{name}_lo"),
                                              r.get(f"delta_{name}_hi")) for _, r in table.iterrows()]
            out[f"verdict {name}"] = table[f"verdict_{name}"]
        if f"noninferior_{name}" in table.columns:
            out[f"non-inferior {name}"] = table[f"noninferior_{name}"].map(
                lambda v: "" if v is None or v != v else "yes" if v else "no")
    if "feasible" in table.columns:
        out["feasible"] = table["feasible"].map(lambda v: "yes" if str(v) == "True" else "no")
    for column in table.columns:
        if column not in out.columns and not column.startswith(("delta_", "verdict_", "noninferior_")) \
                and not any(column in (n, f"{n}_lo", f"{n}_hi") for n, _ in objectives):
            out[column] = table[column]
    return out
