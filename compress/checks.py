"""Argument checks on plain numbers and names (no torch), shared by the plan and the compression functions;
messages name the argument and the range."""

import math
import numbers
from collections.abc import Sequence


def check_fraction(name: str, value: float) -> float:
    """Return `value` if it is a real number in (0, 1]; raise TypeError/ValueError naming `name` otherwise."""
    number = _real(name, value)
    if not (0.0 < number <= 1.0):
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return number


def check_half_open_unit(name: str, value: float) -> float:
    """Return `value` if it is a real number in [0, 1); raise naming `name` otherwise."""
    number = _real(name, value)
    if not (0.0 <= number < 1.0):
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return number


def check_positive(name: str, value: float) -> float:
    """Return `value` if it is a finite real number > 0; raise naming `name` otherwise."""
    number = _real(name, value)
    if not (number > 0.0 and math.isfinite(number)):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return number


def _real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    number = float(value)
    if math.isnan(number):
        raise ValueError(f"{name} must be a number, got NaN")
    return number


def check_choice(name: str, value: str, allowed: Sequence[str]) -> str:
    """Return `value` if it is one of `allowed`; ValueError naming `name` and the choices otherwise."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value
