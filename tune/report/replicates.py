"""Training noise beside measurement noise: the reference (and the best front points) fine-tuned again with other seeds.

Each replicate is the same config with another `run.seed`, so every training stage keyed by
the seed runs again (on the digits preset that is the pretraining too); compression and
evaluation follow as in a trial. The spread of val_auroc over seeds says how much
retraining alone moves a point, next to the bootstrap interval, which says how much the
choice of validation images does.

Imports tune.trials (the front and each trial's config) and tune.report.reports; trainables' trial
runner inside run_replicates. tune.report.summary imports replicate_notes from here, never the reverse.
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path

import optuna
import pandas as pd

from tune.report.reports import markdown_table
from tune.trials import reference_front, trial_config

log = logging.getLogger(__name__)

REPLICATES_FILENAME = "replicates.csv"
SUMMARY_FILENAME = "replicates.md"


def replicate_plan(table: pd.DataFrame, front_k: int) -> list[tuple[str, int]]:
    """Return [(role, trial number)]: the reference, then the `front_k` best front points by the first objective."""
    plan = [("reference", int(table["number"].iloc[0]))]
    front = [int(n) for n in dict.fromkeys(table.loc[table["role"] == "front", "number"]) if int(n) != plan[0][1]]
    return plan + [("front", n) for n in front[:front_k]]


def run_replicates(settings, study: optuna.Study, replicates: int, front_k: int = 0) -> pd.DataFrame:
    """Fine-tune the reference (and `front_k` front points) again with `replicates` new seeds; write and return
    replicates.csv (one row per run, the sweep's own run included as seed offset 0)."""
    from trainables.storage import atomic_write
    from trainables.trial import TrialContext, run_trial

    if replicates < 1 or front_k < 0:
        raise ValueError(f"replicates must be >= 1 and front points >= 0, got {replicates} and {front_k}")
    table, by_number = reference_front(settings, study, "replicate")
    context = TrialContext(results_dir=settings.results_dir, backend="local", show_progress=False,
                           max_failures=settings.max_failures)
    objective = settings.metric_names[0]
    rows = []
    for role, number in replicate_plan(table, front_k):
        trial = by_number[number]
        flat = trial_config(trial, settings.base)
        base_seed = int(flat.get("run.seed", 0))
        rows.append({"role": role, "number": number, "seed": base_seed, "replicate": 0,
                     objective: trial.values[0]})
        for offset in range(1, replicates + 1):
            metrics = run_trial({**flat, "run.seed": base_seed + offset}, context)
            rows.append({"role": role, "number": number, "seed": base_seed + offset, "replicate": offset,
                         **{k: metrics[k] for k in (objective, f"{objective}_lo", f"{objective}_hi", "params",
                                                   "latency_ms") if k in metrics}})
            log.info("replicate %d of trial %d (seed %d): %s %.4f", offset, number, base_seed + offset,
                     objective, metrics[objective])
    frame = pd.DataFrame(rows)
    out = Path(settings.local_dir)
    atomic_write(out / REPLICATES_FILENAME, lambda temp: frame.to_csv(temp, index=False))
    summary = spread(frame, objective)
    atomic_write(out / SUMMARY_FILENAME, lambda temp: temp.write_text(
        f"# Seed-to-seed spread of sweep {settings.name!r}\n\n{replicates} new fine-tunes per config "
        f"(run.seed + 1 ... + {replicates}) beside the sweep's own run.\n\n" + markdown_table(summary)))
    return frame


def spread(frame: pd.DataFrame, objective: str) -> pd.DataFrame:
    """Return per config: runs, mean, standard deviation, min and max of `objective` over its seeds."""
    rows = []
    for (role, number), group in frame.groupby(["role", "number"], sort=False):
        values = group[objective].astype(float).tolist()
        rows.append({"role": role, "number": number, "runs": len(values), f"{objective}_mean": statistics.mean(values),
                     f"{objective}_sd": statistics.stdev(values) if len(values) > 1 else float("nan"),
                     f"{objective}_min": min(values), f"{objective}_max": max(values)})
    return pd.DataFrame(rows)


def replicate_notes(frame: pd.DataFrame | None, objective: str) -> list[str]:
    """Return pareto.md's line on the seed-to-seed spread (none without replicates)."""
    if frame is None or frame.empty:
        return []
    parts = [f"trial {int(r['number'])} ({r['role']}) sd {r[f'{objective}_sd']:.4f} over {int(r['runs'])} seeds "
             f"[{r[f'{objective}_min']:.4f}, {r[f'{objective}_max']:.4f}]"
             for _, r in spread(frame, objective).iterrows()]
    return [f"Seed-to-seed spread of {objective} (new fine-tunes, replicates.csv): " + "; ".join(parts) + "."]
