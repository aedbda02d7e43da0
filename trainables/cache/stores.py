"""Where entries live: the manifest that makes an entry trustworthy, and two stores.

`LocalStore` keeps entries on a local (or mounted) filesystem and publishes by renaming a
staged folder into place; `ArrowStore` keeps them on any other pyarrow filesystem
(s3://, gs://, ...) and copies verified entries to a local scratch folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from trainables.cache.keys import FORMAT_VERSION
from trainables.storage import atomic_write

logger = logging.getLogger("trainables.cache")

MANIFEST_NAME = "_MANIFEST.json"
CHUNK_BYTES = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def build_manifest(staging: Path, stage: str, key: str) -> bytes:
    """Return the manifest JSON for every file under `staging` (sizes and sha256)."""
    files = {}
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        rel = path.relative_to(staging).as_posix()
        files[rel] = {"size_bytes": path.stat().st_size, "sha256": sha256_file(path)}
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


def parse_manifest(raw: bytes) -> dict[str, dict[str, Any]]:
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


def check_local_files(entry: Path, files: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Return why the files under `entry` do not match the manifest, or None if they all do."""
    for rel, meta in files.items():
        path = entry / rel
        try:
            size_bytes = path.stat().st_size
            if size_bytes != meta["size_bytes"]:
                return f"{rel} has {size_bytes} bytes, manifest says {meta['size_bytes']}"
            if sha256_file(path) != meta["sha256"]:
                return f"{rel} does not match its sha256"
        except (FileNotFoundError, IsADirectoryError):
            return f"{rel} is missing"
    return None


class LocalStore:
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
        atomic_write(Path(path), lambda temp: temp.write_bytes(data))

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
        reason = check_local_files(Path(entry), files)
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


class ArrowStore:
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
            if check_local_files(local, files) is None:
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
                while chunk := f.read(CHUNK_BYTES):
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
        """Move a verified local copy into place, replacing whatever copy is there unless it is whole.

        Another process may have installed the same entry meanwhile: its copy is kept only when
        it carries this manifest and its files match it; a damaged copy (the reason this one was
        downloaded) is swapped out, never returned.
        """
        try:
            os.rename(staging, local)
        except OSError:
            current = local / MANIFEST_NAME
            if current.is_file() and current.read_bytes() == raw_manifest \
                    and check_local_files(local, parse_manifest(raw_manifest)) is None:
                return local
            old = local.with_name(f"{local.name}.old-{uuid.uuid4().hex}")
            os.rename(local, old)
            os.rename(staging, local)
            shutil.rmtree(old, ignore_errors=True)
        return local

    def publish(self, staging: Path, entry: str, manifest: bytes) -> Path:
        files = parse_manifest(manifest)
        for rel in files:
            dest = f"{entry}/{rel}"
            self.fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
            with open(staging / rel, "rb") as src, self.fs.open_output_stream(dest) as dst:
                while chunk := src.read(CHUNK_BYTES):
                    dst.write(chunk)
        # the manifest goes last: until it exists no reader trusts the entry
        self.write(f"{entry}/{MANIFEST_NAME}", manifest)
        (staging / MANIFEST_NAME).write_bytes(manifest)
        return self._install(staging, self._local_copy(entry), manifest)

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)
