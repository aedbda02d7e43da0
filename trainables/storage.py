"""Where a trial keeps things, and how files are written there: names the driver (tune/) shares.

    <results>/cache/<stage>/<key>/           stage cache entries (trainables.cache)
    <results>/train/<stage>-<key>/           Ray Train runs of the training stages
    <results>/train/<stage>-<key>/epochs.jsonl   their epochs, as Train reported them

`results` is a local folder or any pyarrow.fs URI (s3://...). Imports nothing heavy.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

TRAIN_DIR = "train"
EPOCHS_FILE = "epochs.jsonl"


def is_uri(path: str | os.PathLike) -> bool:
    """Return whether `path` names a pyarrow.fs URI (scheme://...) rather than a local path."""
    return "://" in str(path)


def local_scratch(results_dir: str, remote_default: Path) -> Path:
    """Return `results_dir` as a local folder, or `remote_default` when the results live behind a URI."""
    return remote_default if is_uri(results_dir) else Path(results_dir)


def train_storage(results_dir: str):
    """Return (storage_path, filesystem) for Ray Train runs under <results>/train (filesystem None: local)."""
    if is_uri(results_dir):
        import pyarrow.fs

        filesystem, path = pyarrow.fs.FileSystem.from_uri(results_dir)
        return f"{path.rstrip('/')}/{TRAIN_DIR}", filesystem
    return str((Path(results_dir) / TRAIN_DIR).resolve()), None


def epoch_files(results_dir: str | os.PathLike) -> list[Path]:
    """Return the epochs.jsonl of every Ray Train run under a local results folder."""
    return sorted((Path(results_dir) / TRAIN_DIR).glob(f"*/{EPOCHS_FILE}"))


def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """Write `path` via `write(temp_path)` then rename, so readers never see half a file; return `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    temp = Path(temp_name)
    try:
        write(temp)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path
