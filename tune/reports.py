"""Sweep reports: the Pareto front, hypervolume history, all trials, and their plots.

Computing (pareto_front, hypervolume, hypervolume_history, trials_frame) is kept apart
from rendering (write_reports) so tests check the numbers without drawing anything.
Objectives are given as ``[(name, "max" | "min"), ...]``; internally every objective is
turned into a loss (max objectives negated) so "smaller is better" everywhere.
"""

import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

logger = logging.getLogger(__name__)

Objectives = Sequence[tuple[str, str]]


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


def _losses(df: pd.DataFrame, objectives: Objectives) -> np.ndarray:
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
    """Return a mask of rows no other row dominates (no worse everywhere, better somewhere)."""
    n = len(losses)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        no_worse = np.all(losses <= losses[i], axis=1)
        better = np.any(losses < losses[i], axis=1)
        mask[i] = not np.any(no_worse & better)
    return mask


def pareto_front(df: pd.DataFrame, objectives: Objectives) -> pd.DataFrame:
    """Return the rows of `df` no other row dominates; rows with a missing objective are skipped.

    Row a dominates row b when a is no worse on every objective and strictly better on
    one; rows with identical objective values do not dominate each other, so ties stay.
    """
    objectives = parse_objectives(objectives)
    losses = _losses(df, objectives)
    finite = np.all(np.isfinite(losses), axis=1)
    candidates = df[finite]
    return candidates[_non_dominated_mask(losses[finite])]


def _hypervolume_2d(losses: np.ndarray, reference: np.ndarray) -> float:
    """Area dominated by 2-D losses below `reference`: sum of (y_next - y_i) * (r_x - min x so far)."""
    order = np.argsort(losses[:, 1], kind="stable")
    ys = losses[order, 1]
    best_x = np.minimum.accumulate(losses[order, 0])
    next_ys = np.append(ys[1:], reference[1])
    return float(np.sum((next_ys - ys) * (reference[0] - best_x)))


def hypervolume(losses: np.ndarray, reference: np.ndarray) -> float:
    """Return the exact volume dominated by `losses` (minimised) and bounded by `reference`.

    Points not strictly better than the reference on every axis add nothing. In 3 or
    more dimensions the volume is cut into slabs along the last axis:
    HV = sum_i (z_{i+1} - z_i) * HV_{d-1}(points with z <= z_i), z_{n+1} = reference.
    """
    losses = np.asarray(losses, dtype=float).reshape(-1, len(reference))
    reference = np.asarray(reference, dtype=float)
    losses = losses[np.all(losses < reference, axis=1)]
    if len(losses) == 0:
        return 0.0
    dims = losses.shape[1]
    if dims == 1:
        return float(reference[0] - losses[:, 0].min())
    if dims == 2:
        return _hypervolume_2d(losses, reference)
    losses = losses[_non_dominated_mask(losses)]
    order = np.argsort(losses[:, -1], kind="stable")
    losses = losses[order]
    next_z = np.append(losses[1:, -1], reference[-1])
    total = 0.0
    for i in range(len(losses)):
        depth = next_z[i] - losses[i, -1]
        if depth > 0:
            total += depth * hypervolume(losses[: i + 1, :-1], reference[:-1])
    return total


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
    losses = _losses(df, objectives)
    reference = _reference_losses(objectives, reference_point)
    history: list[float] = []
    front = np.empty((0, len(objectives)))
    current = 0.0
    for point in losses:
        # Only a point no front member dominates can change the volume.
        dominated = np.any(np.all(front <= point, axis=1)) if len(front) else False
        if np.all(np.isfinite(point)) and not dominated:
            front = np.vstack([front[~np.all(point <= front, axis=1)], point])
            current = hypervolume(front, reference)
        history.append(current)
    return history


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
    """Return the reference configuration's row: trial `trial_number`, else the first enqueued COMPLETE trial."""
    complete = df[np.all(np.isfinite(_losses(df, objectives)), axis=1)]
    if trial_number is not None:
        match = complete[complete["number"] == trial_number]
        if match.empty:
            raise ValueError(f"reference trial {trial_number} is not a complete trial of the study")
        return match.iloc[0]
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
) -> pd.DataFrame:
    """Return the front, best first by the first objective, with the reference row and deltas.

    Columns: role ("reference" or "front"), number, the objectives,
    delta_<objective> = value - reference value (only with a reference), `extra_columns`.
    """
    objectives = parse_objectives(objectives)
    first, first_mode = objectives[0]
    front = pareto_front(df, objectives).sort_values(
        [first, "number"], ascending=[first_mode == "min", True], kind="stable"
    )
    front.insert(0, "role", "front")
    if reference is not None:
        ref = reference.to_frame().T
        ref.insert(0, "role", "reference")
        front = pd.concat([ref, front], ignore_index=True).infer_objects()
        for name, _ in objectives:
            front[name] = front[name].astype(float)
            front[f"delta_{name}"] = front[name] - float(reference[name])
    extra = [c for c in extra_columns if c in front.columns]
    leading = ["role", "number"] + [n for n, _ in objectives]
    deltas = [f"delta_{n}" for n, _ in objectives if f"delta_{n}" in front.columns]
    return front[leading + deltas + extra].reset_index(drop=True)


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


def _atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Write `path` via `write(temp_path)` then rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    temp = Path(temp_name)
    try:
        write(temp)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path


def _plot_projection(
    df: pd.DataFrame, front: pd.DataFrame, x: tuple[str, str], y: tuple[str, str],
    reference: pd.Series | None, path: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=120)
    ax.scatter(df[x[0]], df[y[0]], s=14, c="0.75", label="trials")
    ordered = front.sort_values(x[0])
    ax.plot(ordered[x[0]], ordered[y[0]], "o", c="tab:blue", label="Pareto front (all objectives)")
    if reference is not None:
        ax.plot(reference[x[0]], reference[y[0]], "*", ms=14, c="tab:red", label="reference config")
    ax.set_xlabel(f"{x[0]} ({x[1]})")
    ax.set_ylabel(f"{y[0]} ({y[1]})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _atomic_write(path, lambda temp: fig.savefig(temp, format="png"))
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
    _atomic_write(path, lambda temp: fig.savefig(temp, format="png"))
    plt.close(fig)


def write_reports(
    study: optuna.Study,
    out_dir: str | Path,
    objectives: Objectives,
    reference_point: Mapping[str, float] | None = None,
    reference_trial: int | None = None,
) -> dict[str, Path]:
    """Write the sweep's reports into local folder `out_dir`; return {report name: path}.

    Writes pareto.md, pareto.csv, trials.parquet, hypervolume.csv/.png and one
    pareto_<a>__<b>.png per pair of objectives. `reference_trial` picks the reference
    configuration (default: the first enqueued COMPLETE trial, i.e. the seed point).
    `reference_point` bounds the hypervolume (default: the worst value of each objective
    over complete trials, logged as such).
    """
    objectives = parse_objectives(objectives)
    out_dir = Path(out_dir)
    df = trials_frame(study)
    complete = df[df["state"] == TrialState.COMPLETE.name] if len(df) else df
    written: dict[str, Path] = {}
    written["trials.parquet"] = _atomic_write(
        out_dir / "trials.parquet", lambda temp: df.to_parquet(temp, engine="pyarrow", index=False)
    )
    if complete.empty:
        logger.warning("study %r has no complete trial; wrote trials.parquet only", study.study_name)
        return written
    reference = reference_row(complete, objectives, reference_trial)
    param_names = sorted({name for trial in study.get_trials(deepcopy=False) for name in trial.params})
    table = front_table(complete, objectives, reference, extra_columns=param_names)
    written["pareto.csv"] = _atomic_write(
        out_dir / "pareto.csv", lambda temp: table.to_csv(temp, index=False)
    )
    title = f"# Pareto front of study {study.study_name!r}\n\n"
    summary = (
        f"{len(complete)} complete of {len(df)} trials; {int((table['role'] == 'front').sum())} "
        f"on the front ({', '.join(f'{n} {m}' for n, m in objectives)}).\n\n"
    )
    written["pareto.md"] = _atomic_write(
        out_dir / "pareto.md", lambda temp: temp.write_text(title + summary + markdown_table(table))
    )
    if reference_point is None:
        reference_point = {
            name: float(complete[name].min() if mode == "max" else complete[name].max())
            for name, mode in objectives
        }
        logger.info("hypervolume reference point defaults to the worst values: %s", reference_point)
    history = pd.DataFrame(
        {
            "number": complete.sort_values("number")["number"].to_numpy(),
            "hypervolume": hypervolume_history(complete, objectives, reference_point),
        }
    )
    written["hypervolume.csv"] = _atomic_write(
        out_dir / "hypervolume.csv", lambda temp: history.to_csv(temp, index=False)
    )
    _plot_history(history, out_dir / "hypervolume.png")
    written["hypervolume.png"] = out_dir / "hypervolume.png"
    front = table[table["role"] == "front"]
    for x, y in combinations(objectives, 2):
        name = f"pareto_{x[0]}__{y[0]}.png"
        _plot_projection(complete, front, x, y, reference, out_dir / name)
        written[name] = out_dir / name
    return written
