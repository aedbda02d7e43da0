"""Content-addressed cache for expensive trial stages, shared by every node of a sweep.

An entry lives at ``<root>/cache/<stage>/<key>/``: the files a stage's ``compute`` wrote
plus ``_MANIFEST.json`` (size and sha256 of every file). Readers trust an entry only
through its manifest, which is published last, and check every file against it before
use, so a half-written or damaged entry is never loaded.

Single flight: the first caller that needs a missing key takes a lease
(``<root>/cache/<stage>/<key>.lease``) and computes; the others poll for the manifest.
The owner refreshes the lease's heartbeat from a background thread. A waiter breaks a
lease whose heartbeat it has watched stand still for ``lease_s`` seconds of its own
clock (so clock skew between nodes does not matter), or at once when the owner ran on
the same host and its process is gone, then computes the entry itself.

Guarantees differ by filesystem:

* Local paths (including NFS-style shared mounts) take the lease with an exclusive
  create (``O_CREAT | O_EXCL``) and publish by renaming a fully written staging
  directory into place, so both steps are atomic.
* Other ``pyarrow.fs`` filesystems (``s3://``, ``gs://``, …) have no exclusive create.
  A caller writes its lease, waits ``settle_s`` and reads it back; it owns the lease
  only if its own token is still there. Two callers whose check-then-write steps are
  further apart than ``settle_s`` could both believe they own it; the cost is a
  duplicate computation, never a corrupt read, because each file is uploaded before
  the manifest and a single object write is atomic. Entries are downloaded, and
  verified while downloading, into a local scratch folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_NAME = "_MANIFEST.json"
KEY_HEX_CHARS = 20

_STAGE_RE = re.compile(r"^[a-z][a-z0-9_-]*$")
_KEY_RE = re.compile(r"^[0-9a-f]{8,64}$")
_CHUNK_BYTES = 1 << 20


def stage_key(
    stage: str, config: Mapping[str, Any], parent_key: str | None, data_fingerprint: str
) -> str:
    """Return sha256(canonical JSON of {stage, config, parent, data, format})[:20] as hex.

    Canonical JSON: sorted keys, no whitespace, floats by their shortest round-trip repr,
    tuples as lists. 1 and 1.0 give different keys; typed configs keep types stable.
    """
    _check_stage(stage)
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


def _check_stage(stage: str) -> None:
    if not isinstance(stage, str) or not _STAGE_RE.match(stage):
        raise ValueError(f"stage must match {_STAGE_RE.pattern}, got {stage!r}")


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise ValueError(f"key must be 8-64 lowercase hex chars (see stage_key), got {key!r}")


@dataclass(frozen=True)
class CacheResult:
    """Where a stage's entry lies locally, whether it was a hit, and what it cost."""

    path: Path
    hit: bool
    seconds: float
    waited_s: float


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _build_manifest(staging: Path, stage: str, key: str) -> bytes:
    """Return the manifest JSON for every file under `staging` (sizes and sha256)."""
    files = {}
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        rel = path.relative_to(staging).as_posix()
        files[rel] = {"size_bytes": path.stat().st_size, "sha256": _sha256_file(path)}
    if not files:
        raise RuntimeError(f"compute for {stage}/{key} wrote no files into {staging}")
    if MANIFEST_NAME in files:
        raise RuntimeError(f"compute for {stage}/{key} wrote {MANIFEST_NAME}, a reserved name")
    manifest = {
        "format": FORMAT_VERSION,
        "stage": stage,
        "key": key,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        # unique per publish, so a recomputed entry never repeats a damaged manifest's bytes
        "publish_id": uuid.uuid4().hex,
        "files": files,
    }
    return json.dumps(manifest, sort_keys=True, indent=1).encode("utf-8")


def _parse_manifest(raw: bytes) -> dict[str, dict[str, Any]]:
    """Return the manifest's {relative path: {size_bytes, sha256}}; ValueError if malformed."""
    try:
        files = json.loads(raw)["files"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"manifest does not parse ({err})") from err
    if not isinstance(files, dict) or not files:
        raise ValueError("manifest lists no files")
    for rel, meta in files.items():
        parts = rel.split("/")
        if rel.startswith("/") or ".." in parts or "" in parts or rel == MANIFEST_NAME:
            raise ValueError(f"manifest lists an unsafe path {rel!r}")
        if not (
            isinstance(meta, dict)
            and isinstance(meta.get("size_bytes"), int)
            and isinstance(meta.get("sha256"), str)
        ):
            raise ValueError(f"manifest entry for {rel!r} lacks size_bytes/sha256")
    return files


def _check_local_files(entry: Path, files: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Return why the files under `entry` do not match the manifest, or None if they all do."""
    for rel, meta in files.items():
        path = entry / rel
        try:
            size_bytes = path.stat().st_size
            if size_bytes != meta["size_bytes"]:
                return f"{rel} has {size_bytes} bytes, manifest says {meta['size_bytes']}"
            if _sha256_file(path) != meta["sha256"]:
                return f"{rel} does not match its sha256"
        except (FileNotFoundError, IsADirectoryError):
            return f"{rel} is missing"
    return None


class _LocalStore:
    """Entries on a local (or locally mounted) filesystem, used in place."""

    def __init__(self, base: str):
        self.base = base.rstrip("/")

    def entry(self, stage: str, key: str) -> str:
        return f"{self.base}/cache/{stage}/{key}"

    def describe(self, path: str) -> str:
        return path

    def read(self, path: str) -> bytes | None:
        try:
            return Path(path).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, path: str, data: bytes) -> None:
        # temp file + rename: a reader sees the old or the new bytes, never a mix
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        Path(tmp).write_bytes(data)
        os.replace(tmp, path)

    def claim(self, path: str, data: bytes, settle_s: float) -> bool:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True

    def break_lease(self, path: str, seen: bytes) -> None:
        # Move the lease aside atomically, then check it is the stale one we saw; if a
        # fresh owner slipped in meanwhile, put theirs back without clobbering anything.
        aside = f"{path}.broken-{uuid.uuid4().hex}"
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return
        if Path(aside).read_bytes() != seen:
            try:
                os.link(aside, path)
            except FileExistsError:
                logger.warning("lease %s changed hands while being broken", path)
        os.unlink(aside)

    def delete(self, path: str) -> None:
        Path(path).unlink(missing_ok=True)

    def delete_tree(self, path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def staging_dir(self, entry: str) -> Path:
        # beside the entry, so publishing is a rename on the same filesystem
        staging = Path(f"{entry}.staging-{uuid.uuid4().hex}")
        staging.mkdir(parents=True)
        return staging

    def clear_leftovers(self, entry: str) -> None:
        for old in Path(entry).parent.glob(f"{Path(entry).name}.staging-*"):
            logger.warning("removing staging folder %s left by a dead writer", old)
            shutil.rmtree(old, ignore_errors=True)

    def load(self, entry: str, raw_manifest: bytes, files: Mapping) -> tuple[Path | None, str]:
        reason = _check_local_files(Path(entry), files)
        return (None, reason) if reason else (Path(entry), "")

    def publish(self, staging: Path, entry: str, manifest: bytes) -> Path:
        (staging / MANIFEST_NAME).write_bytes(manifest)
        try:
            os.rename(staging, entry)
        except OSError:
            # only a lease broken by mistake leaves an entry here; the newer one wins
            self.delete_tree(entry)
            os.rename(staging, entry)
        return Path(entry)

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)


class _ArrowStore:
    """Entries on a pyarrow filesystem without exclusive create, copied to local scratch."""

    def __init__(self, fs: pafs.FileSystem, base: str, scratch: Path):
        self.fs = fs
        self.base = base.rstrip("/")
        self.scratch = scratch

    def entry(self, stage: str, key: str) -> str:
        return "/".join(part for part in (self.base, "cache", stage, key) if part)

    def describe(self, path: str) -> str:
        return f"{self.fs.type_name}:{path}"

    def read(self, path: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(path) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write(self, path: str, data: bytes) -> None:
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(path) as f:
            f.write(data)

    def claim(self, path: str, data: bytes, settle_s: float) -> bool:
        if self.exists(path):
            return False
        self.write(path, data)
        # last writer wins on object stores: whoever still reads its own token owns it
        time.sleep(settle_s)
        return self.read(path) == data

    def break_lease(self, path: str, seen: bytes) -> None:
        if self.read(path) == seen:
            self.delete(path)

    def delete(self, path: str) -> None:
        try:
            self.fs.delete_file(path)
        except FileNotFoundError:
            pass

    def delete_tree(self, path: str) -> None:
        try:
            self.fs.delete_dir(path)
        except FileNotFoundError:
            pass

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def _local_copy(self, entry: str) -> Path:
        return self.scratch / entry.lstrip("/")

    def staging_dir(self, entry: str, purpose: str = "staging") -> Path:
        local = self._local_copy(entry)
        local.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{local.name}.{purpose}-", dir=local.parent))

    def clear_leftovers(self, entry: str) -> None:
        # only lease holders stage, so other processes' downloads are left alone
        local = self._local_copy(entry)
        for old in local.parent.glob(f"{local.name}.staging-*"):
            shutil.rmtree(old, ignore_errors=True)

    def load(self, entry: str, raw_manifest: bytes, files: Mapping) -> tuple[Path | None, str]:
        local = self._local_copy(entry)
        cached = local / MANIFEST_NAME
        if cached.is_file() and cached.read_bytes() == raw_manifest:
            if _check_local_files(local, files) is None:
                return local, ""
        staging = self.staging_dir(entry, "download")
        try:
            for rel, meta in files.items():
                reason = self._download(f"{entry}/{rel}", staging / rel, meta)
                if reason:
                    return None, reason
            (staging / MANIFEST_NAME).write_bytes(raw_manifest)
            return self._install(staging, local, raw_manifest), ""
        finally:
            self.discard(staging)

    def _download(self, src: str, dest: Path, meta: Mapping[str, Any]) -> str | None:
        """Copy `src` to `dest` hashing on the way; return why it mismatches, or None."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        try:
            with self.fs.open_input_stream(src) as f, open(dest, "wb") as out:
                while chunk := f.read(_CHUNK_BYTES):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
        except FileNotFoundError:
            return f"{src} is missing"
        if size != meta["size_bytes"]:
            return f"{src} has {size} bytes, manifest says {meta['size_bytes']}"
        if digest.hexdigest() != meta["sha256"]:
            return f"{src} does not match its sha256"
        return None

    def _install(self, staging: Path, local: Path, raw_manifest: bytes) -> Path:
        """Move a verified local copy into place; another process may have beaten us to it."""
        try:
            os.rename(staging, local)
        except OSError:
            current = local / MANIFEST_NAME
            if current.is_file() and current.read_bytes() == raw_manifest:
                return local
            old = local.with_name(f"{local.name}.old-{uuid.uuid4().hex}")
            os.rename(local, old)
            os.rename(staging, local)
            shutil.rmtree(old, ignore_errors=True)
        return local

    def publish(self, staging: Path, entry: str, manifest: bytes) -> Path:
        files = _parse_manifest(manifest)
        for rel in files:
            dest = f"{entry}/{rel}"
            self.fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
            with open(staging / rel, "rb") as src, self.fs.open_output_stream(dest) as dst:
                while chunk := src.read(_CHUNK_BYTES):
                    dst.write(chunk)
        # the manifest goes last: until it exists no reader trusts the entry
        self.write(f"{entry}/{MANIFEST_NAME}", manifest)
        (staging / MANIFEST_NAME).write_bytes(manifest)
        return self._install(staging, self._local_copy(entry), manifest)

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)


def _pid_is_dead(pid: int) -> bool:
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


class _Lease:
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


class _StaleWatch:
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
        owner = _lease_owner(raw)
        if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
            if _pid_is_dead(owner["pid"]):
                return True
        return now_s - self.since_s >= self.lease_s


def _lease_owner(raw: bytes | None) -> dict[str, Any]:
    try:
        owner = json.loads(raw or b"")
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _owner_text(raw: bytes | None) -> str:
    owner = _lease_owner(raw)
    return f"{owner.get('host', '?')}:{owner.get('pid', '?')}"


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
            if "://" in root:
                filesystem, root = pafs.FileSystem.from_uri(root)
            else:
                filesystem = pafs.LocalFileSystem()
        if isinstance(filesystem, pafs.LocalFileSystem):
            root = str(Path(root).resolve())
            self._store: _LocalStore | _ArrowStore = _LocalStore(root)
        else:
            if scratch_dir is None:
                tag = hashlib.sha256(f"{filesystem.type_name}:{root}".encode()).hexdigest()[:12]
                scratch_dir = Path(tempfile.gettempdir()) / "vitsweep-cache" / tag
            self._store = _ArrowStore(filesystem, root, Path(scratch_dir))
        self.root = root

    def get(self, stage: str, key: str) -> Path | None:
        """Return the local directory of a verified entry, or None if absent or damaged."""
        _check_stage(stage)
        _check_key(key)
        return self._load(stage, key, logger)[0]

    def _load(self, stage: str, key: str, log: logging.Logger) -> tuple[Path | None, bytes | None]:
        """Return (verified local path or None, the manifest bytes read or None)."""
        entry = self._store.entry(stage, key)
        raw = self._store.read(f"{entry}/{MANIFEST_NAME}")
        if raw is None:
            return None, None
        try:
            path, reason = self._store.load(entry, raw, _parse_manifest(raw))
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
        _check_stage(stage)
        _check_key(key)
        log = log or logger
        start_s = time.monotonic()
        path, bad_manifest = self._load(stage, key, log)
        if path is not None:
            return CacheResult(path, True, time.monotonic() - start_s, 0.0)
        entry = self._store.entry(stage, key)
        lease_path = f"{entry}.lease"
        watch = _StaleWatch(self.lease_s)
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
                         _owner_text(self._store.read(lease_path)))
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
                                self._store.describe(lease_path), _owner_text(raw_lease))
                    self._store.break_lease(lease_path, raw_lease)
                    break
                waited_s = time.monotonic() - wait_start_s
                if self.wait_timeout_s is not None and waited_s > self.wait_timeout_s:
                    raise TimeoutError(
                        f"waited {waited_s:.0f} s for cache entry {stage}/{key}, still computed by "
                        f"{_owner_text(raw_lease)} (lease {self._store.describe(lease_path)}); "
                        "raise wait_timeout_s, or delete the lease if that owner is gone"
                    )

    def _try_lease(self, stage: str, key: str, lease_path: str) -> _Lease | None:
        payload = {
            "token": uuid.uuid4().hex,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "stage": stage,
            "key": key,
            "heartbeat_unix": time.time(),
            "beat": 0,
        }
        lease = _Lease(self._store, lease_path, payload, self.lease_s / 4)
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
            path = self._store.publish(staging, entry, _build_manifest(staging, stage, key))
        finally:
            self._store.discard(staging)
        log.info("published %s/%s at %s", stage, key, self._store.describe(entry))
        return path, False
