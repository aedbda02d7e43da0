"""What a finished study says about its trials: each trial's flat config, the front, stored predictions.

The after-sweep passes (tune.report.replicates, retime, export, spectra and summary) rebuild or judge
trials from these; none of them imports another to get them.

Imports: tune.report.reports (the front table) and search_spaces at module level; tune.study (which
imports Ray) and trainables' cache and metrics only inside the functions that need them. Nothing
here imports tune.report.summary or the passes above.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from search_spaces import config_values
from tune.report.reports import front_table, reference_row, trials_frame

if TYPE_CHECKING:
    from trainables.evaluate.evaluation import Predictions
    from tune.sweep import SweepSettings


def trial_config(trial: optuna.trial.FrozenTrial, base: Mapping[str, Any]) -> dict[str, Any]:
    """Return the flat dotted config trial `trial` ran: `base` (the sweep's preset) overlaid with the
    config the searcher recorded (tune.study.CONFIG_ATTR, a dict or its JSON text), else with the
    trial's params; the space's switch keys (tokens.enabled, ...) are resolved by search_spaces.config_values."""
    from tune.study import CONFIG_ATTR

    recorded = trial.user_attrs.get(CONFIG_ATTR)
    if isinstance(recorded, str):
        recorded = json.loads(recorded)
    return {**base, **config_values(recorded or trial.params)}


def front_frame(settings: SweepSettings, study: optuna.Study) -> pd.DataFrame:
    """Return the front table (reference row first) with the searched parameters; with the sweep's budget, the
    front of the feasible trials too (what the re-timing pass times and --final-eval scores)."""
    df = trials_frame(study)
    if df.empty:   # no trial at all: no columns either
        return df
    complete = df[df["state"] == TrialState.COMPLETE.name]
    if complete.empty:
        return complete
    params = sorted({name for t in study.get_trials(deepcopy=False) for name in t.params})
    return front_table(complete, settings.objectives, reference_row(complete, settings.objectives),
                       extra_columns=params, budget=settings.budget)


def reference_front(settings: SweepSettings, study: optuna.Study,
                    purpose: str) -> tuple[pd.DataFrame, dict[int, optuna.trial.FrozenTrial]]:
    """Return (front_frame, the study's trials by number) for work that starts from the reference
    trial; ValueError "sweep NAME has no reference trial to <purpose>" when it has none."""
    table = front_frame(settings, study)
    if table.empty or table["role"].iloc[0] != "reference":
        raise ValueError(f"sweep {settings.name!r} has no reference trial to {purpose}")
    return table, {t.number: t for t in study.get_trials(deepcopy=False)}


def predictions_loader(settings: SweepSettings) -> Callable[[Mapping[str, Any]], Predictions | None]:
    """Return row -> the trial's stored validation Predictions (None for trials stored without them)."""
    from trainables.cache import StageCache
    from trainables.evaluate.evaluation import Predictions

    cache = StageCache(settings.results_dir)
    loaded: dict[str, Any] = {}

    def load(row: Mapping[str, Any]) -> Predictions | None:
        key = row.get("outcome_key")
        if not isinstance(key, str):
            return None
        if key not in loaded:
            entry = cache.get("outcome", key)
            loaded[key] = Predictions.load(entry) if entry is not None else None
        return loaded[key]

    return load


def trial_temperature(settings: SweepSettings, trial: optuna.trial.FrozenTrial) -> float | None:
    """Return the trial's temperature fitted on the validation split: its recorded val_temperature, else
    (a sweep from before calibration) fitted now on its stored validation predictions; None without either."""
    from trainables.evaluate.metrics import fit_temperature

    recorded = trial.user_attrs.get("val_temperature")
    if isinstance(recorded, (int, float)) and math.isfinite(recorded) and recorded > 0:
        return float(recorded)
    stored = predictions_loader(settings)(trial.user_attrs)
    return fit_temperature(stored.labels, stored.probs) if stored is not None else None
