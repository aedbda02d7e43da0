"""Cache keys: a stage's content address, sha256 of the canonical JSON of what determines it."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any

FORMAT_VERSION = 1
KEY_HEX_CHARS = 20

_STAGE_RE = re.compile(r"^[a-z][a-z0-9_-]*$")
_KEY_RE = re.compile(r"^[0-9a-f]{8,64}$")


def stage_key(
    stage: str, config: Mapping[str, Any], parent_key: str | None, data_fingerprint: str
) -> str:
    """Return sha256(canonical JSON of {stage, config, parent, data, format})[:20] as hex.

    Canonical JSON: sorted keys, no whitespace, floats by their shortest round-trip repr,
    tuples as lists. 1 and 1.0 give different keys; typed configs keep types stable.
    """
    check_stage(stage)
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a Mapping, got {type(config).__name__}")
    if parent_key is not None and not isinstance(parent_key, str):
        raise TypeError(f"parent_key must be a str or None, got {type(parent_key).__name__}")
    if not isinstance(data_fingerprint, str) or not data_fingerprint:
        raise ValueError(f"data_fingerprint must be a non-empty str, got {data_fingerprint!r}")
    payload = {
        "stage": stage,
        "config": _canonical(config, "config"),
        "parent": parent_key,
        "data": data_fingerprint,
        "format": FORMAT_VERSION,
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:KEY_HEX_CHARS]


def _canonical(value: Any, where: str) -> Any:
    """Return `value` as plain JSON types, or raise naming the dotted key that is not."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} must be a finite float to be hashed, got {value!r}")
        return value
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where} has a non-str key {k!r}; config keys must be str")
            out[k] = _canonical(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(
        f"{where} is a {type(value).__name__} ({value!r}); cache keys accept only "
        "None, bool, int, float, str, lists and str-keyed mappings of those"
    )


def check_stage(stage: str) -> None:
    if not isinstance(stage, str) or not _STAGE_RE.match(stage):
        raise ValueError(f"stage must match {_STAGE_RE.pattern}, got {stage!r}")


def check_key(key: str) -> None:
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise ValueError(f"key must be 8-64 lowercase hex chars (see stage_key), got {key!r}")

