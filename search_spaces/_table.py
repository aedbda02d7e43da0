"""A search space as a table of parameters, from which the define-by-run function, the seed
point and the list of searched keys are all derived.

A row names a flat config key (which is also the Optuna parameter name), its Optuna
distribution, the reference value the seed point takes when neither the seed
configuration nor the preset sets the key, and optionally a condition: the row is
suggested only when an earlier row took a given value. A switch is a row whose
boolean decides whether its dependents are searched; when it is off, the space returns
the switch's constants (e.g. r_max = 0) and the trial config gets those values.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

_MISSING = object()


def categorical(*choices: Any) -> CategoricalDistribution:
    """Return a categorical distribution over `choices`, in order."""
    return CategoricalDistribution(choices)


def uniform(low: float, high: float) -> FloatDistribution:
    """Return a uniform float distribution on [low, high]."""
    return FloatDistribution(low, high)


@dataclass(frozen=True)
class Param:
    """One searched key: its distribution, reference value and condition."""

    name: str
    distribution: BaseDistribution
    reference: Any = None             # None: the seed point leaves it out unless seed or preset sets it
    when: tuple[str, Any] | None = None   # (earlier row, value): searched only when that row took the value
    off: Mapping[str, Any] | None = None  # a switch: the constants returned when it is False
    # The choices searched on each device type (cpu, cuda, mps), where they differ: see Table.for_device.
    devices: Mapping[str, tuple[Any, ...]] | None = None

    def __post_init__(self):
        if self.off is not None and self.distribution != categorical(False, True):
            raise ValueError(f"switch {self.name} must be categorical(False, True)")
        if self.reference is not None and not _contains(self.distribution, self.reference):
            raise ValueError(f"{self.name}: reference {self.reference!r} is outside its distribution {self.distribution}")
        for kind, choices in (self.devices or {}).items():
            if not all(_contains(self.distribution, choice) for choice in choices):
                raise ValueError(f"{self.name}: choices {choices} on {kind} are not all in {self.distribution}")

    def applies(self, values: Mapping[str, Any]) -> bool:
        """Whether this row is searched, given the values of the earlier rows."""
        return self.when is None or values.get(self.when[0], _MISSING) == self.when[1]

    def seed_on(self, seed: Mapping[str, Any]) -> bool:
        """For a switch: on when the seed's value of its first constant differs from that constant."""
        key, value = next(iter(self.off.items()))
        return seed.get(key, value) != value


def switch(name: str, off: Mapping[str, Any], when: tuple[str, Any] | None = None) -> Param:
    """Return a switch row: categorical (False, True), returning `off` when False."""
    return Param(name, categorical(False, True), when=when, off=dict(off))


@dataclass(frozen=True)
class Table:
    """The rows of one space, in the order they are suggested."""

    rows: tuple[Param, ...] = field(default_factory=tuple)

    def __post_init__(self):
        names = [row.name for row in self.rows]
        if len(set(names)) != len(names):
            raise ValueError(f"a space names a key twice: {names}")
        for index, row in enumerate(self.rows):
            if row.when is not None and row.when[0] not in names[:index]:
                raise ValueError(f"{row.name}: condition on {row.when[0]!r}, which is not an earlier row")

    def __iter__(self) -> Iterator[Param]:
        return iter(self.rows)

    def only(self, names: Iterable[str]) -> "Table":
        """Return the rows named in `names`, in this table's order."""
        wanted = set(names)
        unknown = wanted - {row.name for row in self.rows}
        if unknown:
            raise ValueError(f"no rows {sorted(unknown)} in this table")
        return Table(tuple(row for row in self.rows if row.name in wanted))

    def for_device(self, kind: str) -> "Table":
        """Return this table with each row that has per-device choices cut to those of device type `kind`
        (its reference alone on a device it names none for)."""
        rows = []
        for row in self.rows:
            if row.devices is not None:
                choices = row.devices.get(kind, (row.reference,))
                row = replace(row, distribution=categorical(*choices), devices=None)
            rows.append(row)
        return Table(tuple(rows))

    def suggest(self, trial: optuna.Trial) -> dict[str, Any] | None:
        """Suggest every applicable row on `trial`; return the constants of the switches that are off."""
        values: dict[str, Any] = {}
        constants: dict[str, Any] = {}
        for row in self.rows:
            if not row.applies(values):
                continue
            values[row.name] = _suggest(trial, row.name, row.distribution)
            if row.off is not None and not values[row.name]:
                constants.update(row.off)
        return constants or None

    def seed_point(self, seed: Mapping[str, Any]) -> dict[str, Any]:
        """Return the flat config `seed` as this table's parameters (for enqueueing): each row's value
        from `seed`, else its reference; switches on where `seed` differs from their constants."""
        point: dict[str, Any] = {}
        for row in self.rows:
            if not row.applies(point):
                continue
            value = row.seed_on(seed) if row.off is not None else seed.get(row.name, row.reference)
            if value is not None:
                point[row.name] = value
        return point

    def searched_keys(self) -> set[str]:
        """Return every flat key a trial of this space may set: rows and switch constants."""
        keys = {row.name for row in self.rows}
        for row in self.rows:
            keys |= set(row.off or ())
        return keys

    def switches(self) -> dict[str, Mapping[str, Any]]:
        """Return {switch name: its constants}."""
        return {row.name: row.off for row in self.rows if row.off is not None}

    def distributions(self) -> dict[str, BaseDistribution]:
        """Return {row name: distribution}."""
        return {row.name: row.distribution for row in self.rows}

    def holds(self, point: Mapping[str, Any]) -> bool:
        """Return whether every value of `point` (a searched row's name -> value) lies in its row's distribution."""
        distributions = self.distributions()
        return all(name in distributions and _contains(distributions[name], value) for name, value in point.items())


def _contains(distribution: BaseDistribution, value: Any) -> bool:
    if isinstance(distribution, CategoricalDistribution):
        return value in distribution.choices
    return distribution.low <= value <= distribution.high


def _suggest(trial: optuna.Trial, name: str, distribution: BaseDistribution) -> Any:
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    if isinstance(distribution, FloatDistribution):
        return trial.suggest_float(name, distribution.low, distribution.high, log=distribution.log,
                                   step=distribution.step)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(name, distribution.low, distribution.high, log=distribution.log,
                                 step=distribution.step)
    raise TypeError(f"{name}: unsupported distribution {type(distribution).__name__}")
