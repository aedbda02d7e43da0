"""Compare two sweeps: hypervolume of each against one reference point, and where each front attains what the other does not.

The attainment difference is moocore's empirical attainment function difference
(`moocore.eafdiff`), which is defined for two objectives, so it is drawn for every pair
of objectives (each front projected to that pair). Both sweeps are scored on their
in-sweep values: re-timed latencies come from separate passes, not comparable across sweeps.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path

import moocore
import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from trainables.storage import atomic_write
from tune.report.reports import front_hypervolume, markdown_table, objective_losses, pareto_front, trials_frame

log = logging.getLogger(__name__)


def common_reference_point(points: Sequence[dict[str, float]], objectives) -> dict[str, float]:
    """Return the worst of several reference points, objective by objective (min of a max objective, else max)."""
    return {name: (min if mode == "max" else max)(p[name] for p in points) for name, mode in objectives}


def _complete(study: optuna.Study) -> pd.DataFrame:
    df = trials_frame(study)
    return df[df["state"] == TrialState.COMPLETE.name]


def compare_studies(studies: dict[str, optuna.Study], objectives,
                    reference_point: dict[str, float]) -> pd.DataFrame:
    """Return one row per sweep: complete trials, front size and hypervolume against the shared `reference_point`."""
    rows = []
    for name, study in studies.items():
        complete = _complete(study)
        rows.append({"sweep": name, "complete_trials": len(complete),
                     "front_points": len(pareto_front(complete, objectives)) if len(complete) else 0,
                     "hypervolume": front_hypervolume(complete, objectives, reference_point) if len(complete) else 0.0})
    return pd.DataFrame(rows)


def attainment_difference(front_a: np.ndarray, front_b: np.ndarray) -> np.ndarray:
    """Return moocore.eafdiff rectangles (x0, y0, x1, y1, diff) of two 2-D loss sets: diff > 0 where only A attains."""
    with_set = [np.column_stack([f, np.ones(len(f))]) for f in (front_a, front_b)]
    return moocore.eafdiff(with_set[0], with_set[1], rectangles=True)


def _plot_difference(rectangles: np.ndarray, losses: dict[str, np.ndarray], x, y, names, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    signs = [(-1.0 if mode == "max" else 1.0) for _, mode in (x, y)]
    everything = np.vstack(list(losses.values()))
    upper = everything.max(axis=0) + 0.1 * (np.ptp(everything, axis=0) + 1e-12)
    fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=120)
    colours = {1: "tab:blue", -1: "tab:orange"}
    for x0, y0, x1, y1, diff in rectangles:
        if diff == 0:
            continue
        x1, y1 = min(x1, upper[0]), min(y1, upper[1])
        corners = np.array([[x0, y0], [x1, y1]]) * signs
        ax.add_patch(Rectangle(corners.min(axis=0), *np.abs(corners[1] - corners[0]), alpha=0.35, lw=0,
                               color=colours[int(np.sign(diff))]))
    for (name, pts), colour in zip(losses.items(), ("tab:blue", "tab:orange")):
        ax.plot(pts[:, 0] * signs[0], pts[:, 1] * signs[1], "o", ms=4, c=colour, label=f"{name} front")
    ax.set_xlabel(f"{x[0]} ({x[1]})")
    ax.set_ylabel(f"{y[0]} ({y[1]})")
    if x[0] == "params" or y[0] == "params":
        getattr(ax, "set_xscale" if x[0] == "params" else "set_yscale")("log")
    ax.set_title(f"shaded: attained only by {names[0]} (blue) / only by {names[1]} (orange)", fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax.autoscale_view()
    fig.tight_layout()
    atomic_write(path, lambda temp: fig.savefig(temp, format="png"))
    plt.close(fig)


def write_comparison(studies: dict[str, optuna.Study], objectives, reference_point: dict[str, float],
                     out_dir: Path) -> dict[str, Path]:
    """Write compare.md, compare.csv and one eafdiff_<a>__<b>.png per pair of objectives; return them by name."""
    names = list(studies)
    table = compare_studies(studies, objectives, reference_point)
    written = {"compare.csv": atomic_write(out_dir / "compare.csv", lambda t: table.to_csv(t, index=False))}
    fronts = {name: pareto_front(_complete(study), objectives) for name, study in studies.items()}
    for x, y in combinations(objectives, 2):
        pair = [x, y]
        losses = {name: objective_losses(front, pair) for name, front in fronts.items()}
        if any(len(v) == 0 for v in losses.values()):
            continue
        rectangles = attainment_difference(*(np.unique(v, axis=0) for v in losses.values()))
        file = f"eafdiff_{x[0]}__{y[0]}.png"
        _plot_difference(rectangles, losses, x, y, names, out_dir / file)
        written[file] = out_dir / file
    text = (f"# Sweeps {names[0]!r} and {names[1]!r}\n\n"
            f"Hypervolume of each sweep's complete trials (in-sweep values) against one reference point "
            f"{reference_point} ({', '.join(f'{n} {m}' for n, m in objectives)}); the larger covers more. "
            "eafdiff_*.png: where, on each pair of objectives, one front attains what the other does not "
            "(moocore's empirical attainment function differences).\n\n" + markdown_table(table))
    written["compare.md"] = atomic_write(out_dir / "compare.md", lambda t: t.write_text(text))
    return written
