"""Fetch PCam from Zenodo (record 2546921): resumable download, MD5 verification, atomic gunzip.

Checksums, in order of precedence:
1. a user-supplied md5sum-style file (`--checksums`);
2. the training files' MD5s, pinned here (every published list agrees on them);
3. the MD5 Zenodo's record API reports for each file, fetched at download time. PCam's
   README table swaps the valid and test entries, so those four are not pinned by split;
   Zenodo's value must still be one of the two values published for that kind of file.
A file with no checksum from any source is an error: nothing is unpacked unverified.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import logging
import os
import shutil
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import h5py
from tqdm import tqdm

from trainables.data.datasets import PCAM_PREFIX, SPLITS

logger = logging.getLogger(__name__)

FILE_URL = "https://zenodo.org/records/2546921/files/{name}?download=1"
RECORD_API_URL = "https://zenodo.org/api/records/2546921"
SPLIT_SIZES = {"train": 262_144, "valid": 32_768, "test": 32_768}

PINNED_MD5 = {
    f"{PCAM_PREFIX}_split_train_x.h5.gz": "1571f514728f59376b705fc836ff4b63",
    f"{PCAM_PREFIX}_split_train_y.h5.gz": "35c2d7259d906cfc8143347bb8e05be7",
}
# The valid/test MD5s as published, per kind of file; which split owns which value is
# disputed (see module docstring), so they only bound what Zenodo may report.
PUBLISHED_HELDOUT_MD5 = {
    "x": {"d5b63470df7cfa627aeec8b9dc0c066e", "d8c2d60d490dbd479f8199bdfa0cf6ec"},
    "y": {"2b85f58b927af9964a4c15b8f7e8f179", "60a7035772fbdb7f34eb86d4420cf66a"},
}

CHUNK_BYTES = 1 << 20
Opener = Callable[..., http.client.HTTPResponse]


class ChecksumError(ValueError):
    """A downloaded file's MD5 differs from the expected value, or no expected value is known."""


def archive_names(splits: Iterable[str] = SPLITS) -> list[str]:
    """Return the .h5.gz file names for `splits`, x before y."""
    names = []
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"splits must be drawn from {SPLITS}, got {split!r}")
        names += [f"{PCAM_PREFIX}_split_{split}_{kind}.h5.gz" for kind in ("x", "y")]
    return names


def md5_of(path: str | Path, chunk_bytes: int = CHUNK_BYTES) -> str:
    """Return the hex MD5 of a file's bytes."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def read_checksum_file(path: str | Path) -> dict[str, str]:
    """Return {file name: md5} from an md5sum-style file ('<md5>  <name>' per line; '#' comments)."""
    checksums = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or len(parts[0]) != 32 or any(c not in "0123456789abcdefABCDEF" for c in parts[0]):
            raise ValueError(f"{path}:{number}: expected '<32 hex md5>  <file name>', got {line!r}")
        checksums[Path(parts[1].lstrip("*")).name] = parts[0].lower()
    return checksums


def parse_record_md5(record: dict) -> dict[str, str]:
    """Return {file name: md5} from a Zenodo record API document (files as a list, or as {"entries": [...]})."""
    files = record.get("files")
    if isinstance(files, dict):
        files = files.get("entries", [])
    if isinstance(files, dict):
        files = list(files.values())
    checksums = {}
    for entry in files or []:
        name, checksum = entry.get("key") or entry.get("filename"), entry.get("checksum", "")
        if name and checksum.startswith("md5:"):
            checksums[name] = checksum[len("md5:"):].lower()
    if not checksums:
        raise ChecksumError("the Zenodo record lists no files with md5 checksums")
    return checksums


def fetch_record_md5(url: str = RECORD_API_URL, opener: Opener = urllib.request.urlopen) -> dict[str, str]:
    """Return {file name: md5} as reported by Zenodo's record API at `url`."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with opener(request, timeout=60) as response:
        return parse_record_md5(json.load(response))


def expected_checksums(
    names: Sequence[str], user: dict[str, str], record: dict[str, str] | None
) -> dict[str, str]:
    """Return the MD5 each of `names` must have, from the user's file, then the pinned values, then Zenodo's record."""
    expected, missing = {}, []
    for name in names:
        if name in user:
            expected[name] = user[name]
        elif name in PINNED_MD5:
            if record and name in record and record[name] != PINNED_MD5[name]:
                raise ChecksumError(
                    f"Zenodo reports md5 {record[name]} for {name}, but the published value is {PINNED_MD5[name]}"
                )
            expected[name] = PINNED_MD5[name]
        elif record and name in record:
            kind = name.removesuffix(".h5.gz").rsplit("_", 1)[-1]
            if kind in PUBLISHED_HELDOUT_MD5 and record[name] not in PUBLISHED_HELDOUT_MD5[kind]:
                raise ChecksumError(
                    f"Zenodo reports md5 {record[name]} for {name}, which matches none of the published "
                    f"values {sorted(PUBLISHED_HELDOUT_MD5[kind])}; pass --checksums FILE to override"
                )
            expected[name] = record[name]
        else:
            missing.append(name)
    if missing:
        raise ChecksumError(
            f"no checksum known for {missing}: Zenodo's record API was unreachable or did not list them; "
            f"pass --checksums FILE ('<md5>  <name>' per line) to verify against your own values"
        )
    return expected


def _open_range(url: str, start_bytes: int, opener: Opener) -> http.client.HTTPResponse:
    headers = {"Range": f"bytes={start_bytes}-"} if start_bytes else {}
    return opener(urllib.request.Request(url, headers=headers), timeout=60)


def _append_response(response, part: Path, start_bytes: int, name: str, progress: bool) -> None:
    resumed = start_bytes > 0 and response.status == 206
    if start_bytes and not resumed:
        logger.info("server ignored the range request for %s; restarting from 0", name)
    offset = start_bytes if resumed else 0
    length = response.headers.get("Content-Length")
    total = offset + int(length) if length is not None else None
    received_bytes = 0
    with open(part, "ab" if resumed else "wb") as out, tqdm(
        total=total, initial=offset, unit="B", unit_scale=True, desc=name, disable=not progress
    ) as bar:
        while block := response.read(CHUNK_BYTES):
            out.write(block)
            received_bytes += len(block)
            bar.update(len(block))
    # http.client returns a short body without complaint when the server hangs up early.
    if length is not None and received_bytes < int(length):
        raise ConnectionError(f"connection closed after {received_bytes} of {length} bytes")


def download_file(
    url: str,
    dest: str | Path,
    expected_md5: str,
    *,
    opener: Opener = urllib.request.urlopen,
    retries: int = 3,
    retry_wait_s: float = 5.0,
    progress: bool = True,
) -> Path:
    """Return `dest` after downloading `url` into `dest`.part (resuming it with an HTTP Range request), checking its MD5 and renaming it into place."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, retries + 1):
        start_bytes = part.stat().st_size if part.exists() else 0
        try:
            with _open_range(url, start_bytes, opener) as response:
                _append_response(response, part, start_bytes, dest.name, progress)
        except urllib.error.HTTPError as err:
            if err.code != 416:  # 416: range starts at or past the end, i.e. the .part is whole
                raise
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as err:
            if attempt == retries:
                raise
            logger.warning("download of %s interrupted (%s); resuming (attempt %d/%d)", dest.name, err, attempt + 1, retries)
            time.sleep(retry_wait_s * attempt)
            continue
        actual = md5_of(part)
        if actual == expected_md5:
            os.replace(part, dest)
            return dest
        part.unlink()
        if attempt == retries:
            break
        logger.warning("md5 of %s is %s, expected %s; downloading again", dest.name, actual, expected_md5)
    raise ChecksumError(f"{dest}: md5 does not match {expected_md5} after {retries} attempts")


def gunzip_atomic(archive: str | Path, dest: str | Path) -> Path:
    """Return `dest` after decompressing `archive` into `dest`.tmp and renaming it into place."""
    archive, dest = Path(archive), Path(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        with gzip.open(archive, "rb") as source, open(tmp, "wb") as out:
            shutil.copyfileobj(source, out, CHUNK_BYTES)
            out.flush()
            os.fsync(out.fileno())
    except (OSError, EOFError, zlib.error) as err:
        tmp.unlink(missing_ok=True)
        raise ValueError(f"cannot decompress {archive}: {err} — delete it and download again") from None
    os.replace(tmp, dest)
    return dest


def unpacked_is_complete(path: str | Path, split_sizes: dict[str, int] = SPLIT_SIZES) -> bool:
    """Return whether an unpacked PCam .h5 opens and holds its split's full row count (`split_sizes`)."""
    path = Path(path)
    if not path.is_file():
        return False
    stem = path.name.removesuffix(".h5")
    split, kind = stem.split("_split_")[-1].split("_")
    try:
        with h5py.File(path, "r") as handle:
            return kind in handle and handle[kind].shape[0] == split_sizes[split]
    except OSError:
        return False


def download_pcam(
    root: str | Path,
    *,
    splits: Sequence[str] = SPLITS,
    checksum_file: str | Path | None = None,
    keep_archives: bool = False,
    file_url: str = FILE_URL,
    record_api_url: str = RECORD_API_URL,
    opener: Opener = urllib.request.urlopen,
    progress: bool = True,
    split_sizes: dict[str, int] = SPLIT_SIZES,
) -> Path:
    """Return `root` holding the unpacked PCam .h5 files for `splits`, fetching, verifying and unpacking what is missing."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    todo = [
        name for name in archive_names(splits)
        if not unpacked_is_complete(root / name.removesuffix(".gz"), split_sizes)
    ]
    for name in archive_names(splits):
        if name not in todo:
            logger.info("%s already present; skipping", name.removesuffix(".gz"))
    if not todo:
        return root
    user = read_checksum_file(checksum_file) if checksum_file else {}
    record = None
    if not all(name in user for name in todo):  # pinned values are cross-checked against Zenodo too
        try:
            record = fetch_record_md5(record_api_url, opener)
        except (urllib.error.URLError, OSError, json.JSONDecodeError, ChecksumError) as err:
            logger.warning("could not read checksums from Zenodo's record API (%s)", err)
    expected = expected_checksums(todo, user, record)
    for name in todo:
        archive = root / name
        if not (archive.is_file() and md5_of(archive) == expected[name]):
            download_file(file_url.format(name=name), archive, expected[name], opener=opener, progress=progress)
        gunzip_atomic(archive, root / name.removesuffix(".gz"))
        if not keep_archives:
            archive.unlink()
        logger.info("unpacked %s", name.removesuffix(".gz"))
    return root
