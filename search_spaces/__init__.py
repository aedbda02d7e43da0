"""Optuna search spaces, one module per space, selected by name.

A space module declares ``TABLE`` (search_spaces._table.Table): each searched key with its
distribution, reference value and condition. Everything else is derived from it:
``space(trial)`` (what Ray Tune's OptunaSearch calls: it suggests parameters and returns the
constants of switches that are off), the seed point and the searched keys.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from search_spaces._seed import SEED_CONFIG

if TYPE_CHECKING:  # optuna is imported by the space modules, not here: the CLI's --help lists spaces fast
    import optuna

    from search_spaces._table import Table

__all__ = ["LADDER_KEYS", "SEED_CONFIG", "available_spaces", "config_values", "ladder_points", "load_space",
           "load_table", "searched_keys", "seed_points", "training_rows"]

# The thresholds a ladder lowers together (ladder_points): the ones that set the parameter count.
LADDER_KEYS = ("compress.tau_heads", "compress.tau_mlp", "compress.tau_svd")

SpaceFn = Callable[["optuna.Trial"], "dict[str, Any] | None"]


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


def load_table(name: str) -> Table:
    """Return the table of the space called `name`."""
    return _space_module(name).TABLE


def training_rows(name: str) -> dict[str, tuple[str, ...]]:
    """Return {training stage: the rows of space `name` that key it} ({} for a space that searches none)."""
    return dict(getattr(_space_module(name), "TRAINING_ROWS", {}))


def load_space(name: str) -> SpaceFn:
    """Return the define-by-run function of the space called `name`."""
    return _space_module(name).space


def searched_keys(name: str) -> set[str]:
    """Return the flat keys space `name` sets: its parameters and its switches' constants."""
    return load_table(name).searched_keys()


def seed_points(name: str, preset_values: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Return [the seed configuration in space `name`'s parameter names] for points_to_evaluate.

    `preset_values` (flat dotted keys, e.g. ``{"finetune.method": "full"}``) fill in
    what the seed leaves open; where the space searches such a key, the seed point
    uses the preset's value. The seed's own keys always win; a key neither sets takes
    the row's reference value.
    """
    seed = {**dict(preset_values or {}), **SEED_CONFIG}
    return [load_table(name).seed_point(seed)]


def ladder_points(name: str, preset_values: Mapping[str, Any] | None = None, count: int = 4) -> list[dict[str, Any]]:
    """Return `count` points of space `name` that spread the seed point over the front's size range.

    Each is the seed point (seed_points) with every threshold in LADDER_KEYS that the space
    searches set to one rung t, clipped to its row's range; the rungs split the widest of those
    ranges into count + 1 equal steps below its top (count 4 on [0.2, 1]: 0.84, 0.68, 0.52, 0.36).
    Everything else stays the seed's (its fine-tune, importance, no token pruning), so the rungs
    share the seed's training stages. A space that searches none of LADDER_KEYS has no ladder.
    """
    if count < 0:
        raise ValueError(f"ladder count must be >= 0, got {count}")
    table = load_table(name)
    ranges = {row.name: (row.distribution.low, row.distribution.high)
              for row in table.rows if row.name in LADDER_KEYS and hasattr(row.distribution, "low")}
    if not ranges or count == 0:
        return []
    low, high = min(lo for lo, _ in ranges.values()), max(hi for _, hi in ranges.values())
    seed = seed_points(name, preset_values)[0]
    rungs = [high - (i + 1) * (high - low) / (count + 1) for i in range(count)]
    return [{**seed, **{key: round(min(max(t, lo), hi), 6) for key, (lo, hi) in ranges.items()}} for t in rungs]


def config_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Return a trial's values (Optuna params and constants, or a stored config) as trial-config keys.

    The spaces' switches (``tokens.enabled``, ``prehab.enabled``) are not config keys: an off
    switch becomes its constants (where `values` lacks them), an on switch is dropped, and a
    switch that contradicts a value present (off, but r_max = 0.5) raises ValueError.
    """
    flat = dict(values)
    for name, off in _switches().items():
        if name not in flat:
            continue
        on = flat.pop(name)
        if isinstance(on, str):
            on = on.lower() == "true"
        first_key, first_off = next(iter(off.items()))
        if first_key in flat and (flat[first_key] != first_off) != bool(on):
            raise ValueError(f"{name}={on} contradicts {first_key}={flat[first_key]} "
                             f"(on exactly when {first_key} != {first_off})")
        if not on:
            for key, value in off.items():
                flat.setdefault(key, value)
    return flat


def _switches() -> dict[str, Mapping[str, Any]]:
    switches: dict[str, Mapping[str, Any]] = {}
    for name in available_spaces():
        switches.update(load_table(name).switches())
    return switches
