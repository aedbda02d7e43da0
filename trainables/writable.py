"""Whether a local output location can be written, checked before any work starts.

A command that computes for minutes and then cannot write its result (a folder on a
read-only mount, a path under a file, a typo into /proc) should stop first, with one
line naming the location. The check creates nothing that outlives it: it makes and
removes one empty folder in the nearest folder that exists.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class NotWritableError(OSError):
    """A local output location cannot be written; str() is one line naming it and why."""

    def __str__(self) -> str:
        return str(self.args[0])


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # e.g. a folder on the way that this user may not search
        return False


def _why_not_writable(folder: Path, named: Path) -> str | None:
    """Return why no entry can be created in `folder` (or in the nearest existing folder above it), or None;
    `named` is the path the message starts with."""
    existing = folder
    while not _exists(existing):
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".vitsweep-write-check-", dir=existing))
    except OSError as err:
        where = "" if existing == named else f" in {existing}"
        return f"cannot create anything{where}: {err.strerror or type(err).__name__}"
    return None


def check_writable_folder(folder: str | os.PathLike) -> None:
    """Return when files can be created in `folder`, which exists or can be created (its nearest existing
    ancestor is a folder that takes new entries); else raise NotWritableError naming it."""
    folder = Path(folder).expanduser().absolute()
    if _exists(folder) and not folder.is_dir():
        raise NotWritableError(f"{folder} is a file, not a folder")
    reason = _why_not_writable(folder, folder)
    if reason:
        raise NotWritableError(f"{folder}: {reason}")


def check_writable_file(path: str | os.PathLike) -> None:
    """Return when the file `path` can be written or replaced (its folder created if missing); else raise
    NotWritableError naming it."""
    path = Path(path).expanduser().absolute()
    if path.is_dir():
        raise NotWritableError(f"{path} is a folder, not a file")
    reason = _why_not_writable(path.parent, path)
    if reason:
        raise NotWritableError(f"{path}: {reason}")
