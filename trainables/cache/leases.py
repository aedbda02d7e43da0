"""Leases: who computes a missing entry, kept alive by a heartbeat, broken when its owner is gone."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("trainables.cache")


def pid_is_dead(pid: int) -> bool:
    """Return True if no live process has this pid on this host (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    # A killed owner whose parent never reaps it lingers as a zombie; signal 0 still succeeds.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]


class Lease:
    """An owned lease whose heartbeat a daemon thread refreshes until released."""

    def __init__(self, store, path: str, payload: dict[str, Any], interval_s: float):
        self.store = store
        self.path = path
        self.payload = payload
        self.raw = json.dumps(payload, sort_keys=True).encode("utf-8")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(interval_s,), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _beat(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            if self.store.read(self.path) != self.raw:
                logger.warning("lost lease %s to another owner; still computing", self.path)
                return
            self.payload = {**self.payload, "heartbeat_unix": time.time(),
                            "beat": self.payload["beat"] + 1}
            raw = json.dumps(self.payload, sort_keys=True).encode("utf-8")
            try:
                self.store.write(self.path, raw)
            except OSError as err:
                logger.warning("could not refresh lease %s: %s", self.path, err)
                continue
            self.raw = raw

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        if self.store.read(self.path) == self.raw:
            self.store.delete(self.path)


class StaleWatch:
    """Decides when another owner's lease is dead, by the watcher's own monotonic clock."""

    def __init__(self, lease_s: float):
        self.lease_s = lease_s
        self.seen: bytes | None = None
        self.since_s = 0.0

    def is_stale(self, raw: bytes) -> bool:
        now_s = time.monotonic()
        if raw != self.seen:
            self.seen, self.since_s = raw, now_s
        # Checked on every poll: an owner seen alive may die while its lease stands still.
        owner = lease_owner(raw)
        if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
            if pid_is_dead(owner["pid"]):
                return True
        return now_s - self.since_s >= self.lease_s


def lease_owner(raw: bytes | None) -> dict[str, Any]:
    try:
        owner = json.loads(raw or b"")
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def owner_text(raw: bytes | None) -> str:
    owner = lease_owner(raw)
    return f"{owner.get('host', '?')}:{owner.get('pid', '?')}"
