"""Define-by-run Optuna search spaces, one module per space, selected by name.

A space module defines ``space(trial) -> dict | None`` (what Ray Tune's OptunaSearch
calls: it suggests parameters and may return constants) and ``seed_point(seed) -> dict``
(the seed configuration expressed in that space's parameter names).
"""

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from typing import Any

import optuna

from search_spaces._seed import SEED_CONFIG

__all__ = ["SEED_CONFIG", "available_spaces", "load_space", "seed_points"]

SpaceFn = Callable[[optuna.Trial], dict[str, Any] | None]


def available_spaces() -> list[str]:
    """Return the names of the spaces in this package, sorted."""
    return sorted(
        info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_")
    )


def _space_module(name: str):
    if not isinstance(name, str):
        raise TypeError(f"space name must be a str, got {type(name).__name__}")
    names = available_spaces()
    if name not in names:
        raise ValueError(f"unknown search space {name!r}; available: {', '.join(names)}")
    return importlib.import_module(f"search_spaces.{name}")


def load_space(name: str) -> SpaceFn:
    """Return the define-by-run function of the space called `name`."""
    return _space_module(name).space


def seed_points(name: str, preset_values: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Return [the seed configuration in space `name`'s parameter names] for points_to_evaluate.

    `preset_values` (flat dotted keys, e.g. ``{"finetune.method": "full"}``) fill in
    what the seed leaves open; where the space searches such a key, the seed point
    uses the preset's value. The seed's own keys always win.
    """
    seed = {**dict(preset_values or {}), **SEED_CONFIG}
    return [_space_module(name).seed_point(seed)]
