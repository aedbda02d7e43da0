"""How each config field enters the cache keys, and when it applies: one declaration per field.

A field declared with `setting(default, ...)` says
- whether it keys its section's stage record (`stage`: True, False, or a test on the section),
- whether it is left out at its default because it came after keys were stored (`new_since`:
  "stage" — after the stage keys, so only its stage record leaves it out; "outcome" — after the
  stored outcomes too, so every key leaves it out), which keeps every earlier key valid,
- when it means anything at all (`applies`: a test on the section and the words that say it).
The stage records (`stage_record`), the whole-config record of stored outcomes (`outcome_record`)
and the refusal of a key that does not apply (`inapplicable`, `not_applicable_message`) are derived
from it. A field declared without `setting` keys its stage, always applies and was always there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

KEY_RULE = "key_rule"                   # dataclass field metadata: a KeyRule
NEW_SINCE = ("", "stage", "outcome")


@dataclass(frozen=True)
class Applies:
    """When a field means anything: `test` decides it for a section from its field `on`; `text` says
    for which values, to a user."""

    on: str
    text: str
    test: Callable[[Any], bool]


@dataclass(frozen=True)
class KeyRule:
    """How one field enters the cache keys (see the module docstring)."""

    stage: bool | Callable[[Any], bool] = True
    new_since: str = ""
    applies: Applies | None = None

    def __post_init__(self):
        if self.new_since not in NEW_SINCE:
            raise ValueError(f"new_since must be one of {NEW_SINCE}, got {self.new_since!r}")


def setting(default: Any, *, stage: bool | Callable[[Any], bool] = True, new_since: str = "",
            applies: Applies | None = None) -> Any:
    """Return a dataclass field with `default` and its KeyRule."""
    return dataclasses.field(default=default, metadata={KEY_RULE: KeyRule(stage, new_since, applies)})


def rule_of(item: dataclasses.Field) -> KeyRule:
    """Return the KeyRule a field declares (the plain rule when it declares none)."""
    return item.metadata.get(KEY_RULE, KeyRule())


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def stage_record(section: Any) -> dict[str, Any]:
    """Return the fields of `section` that key its stage, by Python name (tuples as lists): those that
    apply, key the stage with these values and are not a field added later left at its default."""
    record = {}
    for item in dataclasses.fields(section):
        rule, value = rule_of(item), getattr(section, item.name)
        keyed = rule.stage(section) if callable(rule.stage) else rule.stage
        applies = rule.applies is None or rule.applies.test(section)
        if not keyed or not applies or (rule.new_since and value == item.default):
            continue
        record[item.name] = _plain(value)
    return record


def outcome_record(section: Any) -> dict[str, Any]:
    """Return every field of `section` as stored outcomes are keyed (tuples as lists), leaving out the
    fields added after outcomes were stored (new_since="outcome") at their default."""
    return {item.name: _plain(getattr(section, item.name)) for item in dataclasses.fields(section)
            if not (rule_of(item).new_since == "outcome" and getattr(section, item.name) == item.default)}


class Inapplicable(NamedTuple):
    """A key someone set that does not apply: why (`on`: the flat key and value it depends on) and when it would."""

    key: str
    on: str
    text: str


def inapplicable(section: Any, prefix: str, names: Iterable[str]) -> list[Inapplicable]:
    """Return the keys among `names` (flat keys someone set) that belong to `section` (flat prefix
    `prefix`, e.g. "finetune.") and do not apply to its values."""
    rules = {item.name: rule_of(item) for item in dataclasses.fields(section)}
    found = []
    for name in sorted(names):
        rule = rules.get(name[len(prefix):]) if name.startswith(prefix) else None
        if rule is not None and rule.applies is not None and not rule.applies.test(section):
            on = f"{prefix}{rule.applies.on}={getattr(section, rule.applies.on)!r}"
            found.append(Inapplicable(name, on, rule.applies.text))
    return found
