"""A single fixed point: the seed configuration, e.g. to measure run-to-run noise.

Each value is a one-choice categorical, so Optuna records it as a parameter and
optuna-dashboard shows it; the fine-tune method comes from the preset.
"""

from collections.abc import Mapping
from typing import Any

import optuna

from search_spaces._seed import SEED_CONFIG


def space(trial: optuna.Trial) -> dict[str, Any] | None:
    """Suggest the seed configuration (every choice has one option); returns no constants."""
    for name, value in SEED_CONFIG.items():
        trial.suggest_categorical(name, (value,))
    return None


def seed_point(seed: Mapping[str, Any]) -> dict[str, Any]:
    """Return the seed configuration as this space's parameters, for enqueueing."""
    return {name: seed[name] for name in SEED_CONFIG}
