"""References to files inside stage-cache entries, resolvable on any node of the cluster.

A training stage may run on a Ray Train worker on another node than the trial that
started it, so stages pass each other `cache:<stage>/<key>/<path>` strings instead of
local paths; each process resolves them through its own view of the shared cache.
"""

from __future__ import annotations

from pathlib import Path

_SCHEME = "cache:"


def cache_ref(stage: str, key: str, relative: str) -> str:
    """Return a reference to `relative` inside the cache entry (stage, key)."""
    return f"{_SCHEME}{stage}/{key}/{relative}"


def resolve_ref(ref: str, cache_root: str) -> Path:
    """Return a local path for a cache reference (or a plain path / hub id unchanged as a Path)."""
    if not ref.startswith(_SCHEME):
        return Path(ref)
    from trainables.cache import StageCache

    stage, key, relative = ref[len(_SCHEME):].split("/", 2)
    entry = StageCache(cache_root).get(stage, key)
    if entry is None:
        raise FileNotFoundError(f"cache entry {stage}/{key} under {cache_root} is missing or damaged "
                                f"(needed for {ref}); rerun the trial to recompute it")
    return entry / relative
