"""Where a trial keeps things, and how files are written there: names the driver (tune/) shares.

    <results>/cache/<stage>/<key>/           stage cache entries (trainables.cache)
    <results>/train/<stage>-<key>/           Ray Train runs of the training stages
    <results>/train/<stage>-<key>/epochs.jsonl   their epochs, as Train reported them

`results` is a local folder or any pyarrow.fs URI (s3://...), parsed once into a filesystem
and a base path (`results_location`): paths are joined on that path, never on the URI string,
whose query (``?endpoint_override=HOST:PORT&scheme=http``) must stay at its end. Imports
nothing heavy (pyarrow only when a location is opened).
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

TRAIN_DIR = "train"
EPOCHS_FILE = "epochs.jsonl"
EPOCHS_DIR = "epochs"      # <results>/<sweep>/epochs/: one object per epoch when results are remote


def is_uri(path: str | os.PathLike) -> bool:
    """Return whether `path` names a pyarrow.fs URI (scheme://...) rather than a local path."""
    return "://" in str(path)


@dataclass(frozen=True)
class ResultsLocation:
    """A results root opened once: its pyarrow filesystem and the base path on it.

    text is what the user gave (a local path or a URI with its query), kept for sweep.json and
    for other processes, which open it again; `path(...)` joins on `base`.
    """

    text: str
    fs: Any                 # pyarrow.fs.FileSystem
    base: str

    @property
    def remote(self) -> bool:
        return is_uri(self.text)

    def path(self, *parts: str) -> str:
        """Return `parts` joined under the base path, as a path on `fs`."""
        return "/".join([self.base.rstrip("/"), *(part.strip("/") for part in parts if part)])

    def show(self, *parts: str) -> str:
        """Return `parts` under the root as a person reads it: a local path, or scheme://base/... without the query."""
        if not self.remote:
            return self.path(*parts)
        return f"{urlsplit(self.text).scheme}://{self.path(*parts)}"


@functools.lru_cache(maxsize=32)
def results_location(text: str) -> ResultsLocation:
    """Return the opened results root `text` (a local folder or a pyarrow.fs URI).

    Raises ValueError naming the URI when pyarrow cannot open it (an unknown scheme or query
    option). Cached: every caller in a process shares one filesystem object per root.
    """
    import pyarrow.fs

    if not is_uri(text):
        return ResultsLocation(text, pyarrow.fs.LocalFileSystem(), str(Path(text).expanduser().resolve()))
    try:
        fs, base = pyarrow.fs.FileSystem.from_uri(text)
    except (ValueError, OSError) as err:  # ArrowInvalid is a ValueError
        raise ValueError(f"--results-dir {text!r}: pyarrow cannot open it ({str(err).splitlines()[0]}); "
                         "use s3://BUCKET/PREFIX, optionally with ?endpoint_override=HOST:PORT&scheme=http "
                         "(or set AWS_ENDPOINT_URL)") from None
    return ResultsLocation(text, fs, base.rstrip("/"))


def check_results_location(location: ResultsLocation) -> None:
    """Raise ValueError in one line when a remote root's bucket is missing or its endpoint does not answer."""
    if not location.remote:
        return
    import pyarrow.fs

    bucket = location.base.split("/", 1)[0]
    try:
        info = location.fs.get_file_info(bucket)
    except OSError as err:
        raise ValueError(f"--results-dir {location.text!r}: cannot reach the object store "
                         f"({str(err).splitlines()[0]}); check the endpoint and the credentials") from None
    if info.type == pyarrow.fs.FileType.NotFound:
        raise ValueError(f"--results-dir {location.text!r}: bucket {bucket!r} does not exist at that "
                         "endpoint; create it first (vitsweep creates no buckets)")


def local_scratch(results_dir: str, remote_default: Path) -> Path:
    """Return `results_dir` as a local folder, or `remote_default` when the results live behind a URI."""
    return remote_default if is_uri(results_dir) else Path(results_dir)


def train_storage(results_dir: str):
    """Return (storage_path, filesystem) for Ray Train runs under <results>/train (filesystem None: local)."""
    location = results_location(results_dir)
    if location.remote:
        return location.path(TRAIN_DIR), location.fs
    return str((Path(results_dir) / TRAIN_DIR).resolve()), None


def remote_epochs_path(results_dir: str, sweep: str) -> str | None:
    """Return <results>/<sweep>/epochs as a path on the object store, or None (local results, or no sweep)."""
    location = results_location(results_dir)
    return location.path(sweep, EPOCHS_DIR) if location.remote and sweep else None


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
