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

__all__ = ["SEED_CONFIG", "available_spaces", "config_values", "load_space", "load_table", "searched_keys",
           "seed_points", "training_rows"]

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
