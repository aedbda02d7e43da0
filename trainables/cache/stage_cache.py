"""The stage cache itself: get an entry, or compute it once across every caller that needs it."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from trainables.cache.keys import check_key, check_stage
from trainables.cache.leases import Lease, StaleWatch, owner_text
from trainables.cache.stores import MANIFEST_NAME, ArrowStore, LocalStore, build_manifest, parse_manifest
from trainables.storage import is_uri, results_location

logger = logging.getLogger("trainables.cache")


@dataclass(frozen=True)
class CacheResult:
    """Where a stage's entry lies locally, whether it was a hit, and what it cost."""

    path: Path
    hit: bool
    seconds: float
    waited_s: float



def _node_tag() -> str:
    """Return "node-<id>" inside a Ray node's processes, else "local": where remote entries are copied.

    On a cluster every node has its own disk anyway; on one machine (several raylets, as the
    tests run them) a per-node scratch folder keeps one node from reading another's copy, so a
    hit on another node really comes from the object store.
    """
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return "local"
    return f"node-{ray.get_runtime_context().get_node_id()[:12]}"


class StageCache:
    """Content-addressed store of stage results under `<root>/cache/<stage>/<key>/`.

    root: a local folder or a pyarrow.fs URI (``s3://bucket/prefix``), or a path on
    `filesystem` when one is given. scratch_dir: where entries of non-local filesystems
    are downloaded (default: a folder under the system temp dir). poll_s: how often a
    waiter looks for the entry. lease_s: how long a lease's heartbeat may stand still
    before a waiter takes over (heartbeats every lease_s / 4). settle_s: read-back delay
    when taking a lease on a filesystem without exclusive create. wait_timeout_s: the
    longest a waiter waits for a live owner (None: as long as the owner keeps beating).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        filesystem: pafs.FileSystem | None = None,
        scratch_dir: str | os.PathLike | None = None,
        poll_s: float = 2.0,
        lease_s: float = 120.0,
        settle_s: float = 1.0,
        wait_timeout_s: float | None = None,
    ):
        for name, value in (("poll_s", poll_s), ("lease_s", lease_s)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
        if not settle_s >= 0:
            raise ValueError(f"settle_s must be >= 0 seconds, got {settle_s!r}")
        if wait_timeout_s is not None and not wait_timeout_s > 0:
            raise ValueError(f"wait_timeout_s must be > 0 seconds or None, got {wait_timeout_s!r}")
        self.poll_s = poll_s
        self.lease_s = lease_s
        self.settle_s = settle_s
        self.wait_timeout_s = wait_timeout_s
        root = os.fspath(root)
        if filesystem is None:
            if is_uri(root):
                location = results_location(root)
                filesystem, root = location.fs, location.base
            else:
                filesystem = pafs.LocalFileSystem()
        if isinstance(filesystem, pafs.LocalFileSystem):
            root = str(Path(root).resolve())
            self._store: LocalStore | ArrowStore = LocalStore(root)
        else:
            if scratch_dir is None:
                tag = hashlib.sha256(f"{filesystem.type_name}:{root}".encode()).hexdigest()[:12]
                scratch_dir = Path(tempfile.gettempdir()) / "vitsweep-cache" / tag / _node_tag()
            self._store = ArrowStore(filesystem, root, Path(scratch_dir))
        self.root = root

    def get(self, stage: str, key: str) -> Path | None:
        """Return the local directory of a verified entry, or None if absent or damaged."""
        check_stage(stage)
        check_key(key)
        return self._load(stage, key, logger)[0]

    def _load(self, stage: str, key: str, log: logging.Logger) -> tuple[Path | None, bytes | None]:
        """Return (verified local path or None, the manifest bytes read or None)."""
        entry = self._store.entry(stage, key)
        raw = self._store.read(f"{entry}/{MANIFEST_NAME}")
        if raw is None:
            return None, None
        try:
            path, reason = self._store.load(entry, raw, parse_manifest(raw))
        except ValueError as err:
            path, reason = None, str(err)
        if path is None:
            log.warning("cache entry %s is damaged: %s", self._store.describe(entry), reason)
        return path, raw

    def get_or_compute(
        self,
        stage: str,
        key: str,
        compute: Callable[[Path], None],
        *,
        log: logging.Logger | None = None,
    ) -> CacheResult:
        """Return the entry for (stage, key), computing it once across all callers if missing.

        `compute(tmp_dir)` writes the entry's files into `tmp_dir`; if it raises, nothing is
        published, the lease is released and the error propagates.
        """
        check_stage(stage)
        check_key(key)
        log = log or logger
        start_s = time.monotonic()
        path, bad_manifest = self._load(stage, key, log)
        if path is not None:
            return CacheResult(path, True, time.monotonic() - start_s, 0.0)
        entry = self._store.entry(stage, key)
        lease_path = f"{entry}.lease"
        watch = StaleWatch(self.lease_s)
        wait_start_s: float | None = None
        while True:
            lease = self._try_lease(stage, key, lease_path)
            if lease is not None:
                waited_s = 0.0 if wait_start_s is None else time.monotonic() - wait_start_s
                try:
                    path, hit = self._compute_owned(stage, key, compute, log, bad_manifest)
                finally:
                    lease.release()
                return CacheResult(path, hit, time.monotonic() - start_s, waited_s)
            if wait_start_s is None:
                wait_start_s = time.monotonic()
                log.info("waiting for %s/%s, computed by %s", stage, key,
                         owner_text(self._store.read(lease_path)))
            while True:
                time.sleep(self.poll_s)
                raw_manifest = self._store.read(f"{entry}/{MANIFEST_NAME}")
                if raw_manifest is not None and raw_manifest != bad_manifest:
                    path, bad_manifest = self._load(stage, key, log)
                    if path is not None:
                        waited_s = time.monotonic() - wait_start_s
                        log.info("%s/%s ready after waiting %.1f s", stage, key, waited_s)
                        return CacheResult(path, True, time.monotonic() - start_s, waited_s)
                raw_lease = self._store.read(lease_path)
                if raw_lease is None:
                    break
                if watch.is_stale(raw_lease):
                    log.warning("breaking stale lease %s held by %s",
                                self._store.describe(lease_path), owner_text(raw_lease))
                    self._store.break_lease(lease_path, raw_lease)
                    break
                waited_s = time.monotonic() - wait_start_s
                if self.wait_timeout_s is not None and waited_s > self.wait_timeout_s:
                    raise TimeoutError(
                        f"waited {waited_s:.0f} s for cache entry {stage}/{key}, still computed by "
                        f"{owner_text(raw_lease)} (lease {self._store.describe(lease_path)}); "
                        "raise wait_timeout_s, or delete the lease if that owner is gone"
                    )

    def _try_lease(self, stage: str, key: str, lease_path: str) -> Lease | None:
        payload = {
            "token": uuid.uuid4().hex,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "stage": stage,
            "key": key,
            "heartbeat_unix": time.time(),
            "beat": 0,
        }
        lease = Lease(self._store, lease_path, payload, self.lease_s / 4)
        if not self._store.claim(lease_path, lease.raw, self.settle_s):
            return None
        lease.start()
        return lease

    def _compute_owned(
        self,
        stage: str,
        key: str,
        compute: Callable[[Path], None],
        log: logging.Logger,
        bad_manifest: bytes | None,
    ) -> tuple[Path, bool]:
        """With the lease held: return (path, hit) after loading or computing and publishing."""
        entry = self._store.entry(stage, key)
        raw = self._store.read(f"{entry}/{MANIFEST_NAME}")
        if raw is not None and raw != bad_manifest:
            path, _ = self._load(stage, key, log)
            if path is not None:
                return path, True
        if self._store.exists(entry):
            log.warning("removing partial or damaged cache entry %s", self._store.describe(entry))
            self._store.delete_tree(entry)
        self._store.clear_leftovers(entry)
        staging = self._store.staging_dir(entry)
        log.info("computing %s/%s", stage, key)
        try:
            compute(staging)
            path = self._store.publish(staging, entry, build_manifest(staging, stage, key))
        finally:
            self._store.discard(staging)
        log.info("published %s/%s at %s", stage, key, self._store.describe(entry))
        return path, False
