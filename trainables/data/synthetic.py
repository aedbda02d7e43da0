"""A small generated dataset in PCam's layout, for smoke runs of the PCam presets (no download).

Images are 96x96 RGB like PCam's: a pink, eosin-like background with purple, haematoxylin-like
"nuclei" (discs). Class 1 has more, larger and darker nuclei, as tumour patches do, so
the classes differ in colour and texture and a fine-tune can learn them in one short epoch.
Generated from a fixed seed: every node writes the same bytes (so the data fingerprint,
and with it the stage cache keys, agree across nodes).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import h5py
import numpy as np

from trainables.data.datasets import SPLITS, split_path

log = logging.getLogger(__name__)

SIZE = 96
COUNTS = {"train": 256, "valid": 128, "test": 128}
SEED = 0
# Bumped whenever the generator would write different bytes.
FORMAT_VERSION = 1
_MARKER = "_SYNTHETIC_COMPLETE.json"


def synthetic_images(labels: np.ndarray, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """Return uint8 (N, size, size, 3) patches for binary `labels` (1 = denser, darker nuclei)."""
    n = len(labels)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    background = np.array([232.0, 176.0, 206.0], dtype=np.float32)
    nucleus = np.array([96.0, 58.0, 142.0], dtype=np.float32)
    for i, label in enumerate(labels):
        count = rng.integers(18, 30) if label else rng.integers(4, 10)
        radius = rng.uniform(4.5, 7.5, count) if label else rng.uniform(2.5, 4.5, count)
        centres = rng.uniform(0, size, (count, 2)).astype(np.float32)
        distance = np.sqrt((yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2)
        coverage = np.clip(radius[:, None, None] + 0.5 - distance, 0.0, 1.0).max(axis=0)  # soft-edged discs
        darkness = 1.0 - (0.12 if label else 0.0)
        tint = background * rng.uniform(0.93, 1.05, 3).astype(np.float32)
        pixels = tint * (1 - coverage[..., None]) + nucleus * darkness * coverage[..., None]
        pixels += rng.normal(0.0, 9.0, pixels.shape).astype(np.float32)  # grain
        images[i] = np.clip(pixels, 0, 255).astype(np.uint8)
    return images


def write_synthetic_pcam(root: str | Path, counts: dict[str, int] = COUNTS, seed: int = SEED) -> Path:
    """Write balanced synthetic splits as <root>/camelyonpatch_level_2_split_<split>_{x,y}.h5; return root."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for offset, split in enumerate(SPLITS):
        rng = np.random.default_rng((seed, offset))
        labels = rng.permutation(np.arange(counts[split]) % 2).astype(np.uint8)
        with h5py.File(split_path(root, split, "x"), "w") as handle:
            handle.create_dataset("x", data=synthetic_images(labels, rng))
        with h5py.File(split_path(root, split, "y"), "w") as handle:
            handle.create_dataset("y", data=labels.reshape(-1, 1, 1, 1))
    return root


def _complete(root: Path) -> bool:
    try:
        marker = json.loads((root / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("format_version") == FORMAT_VERSION and all(
        split_path(root, split, kind).is_file() for split in SPLITS for kind in ("x", "y"))


def ensure_synthetic_pcam(root: str | Path) -> Path:
    """Return `root` holding the complete synthetic set, writing it first if absent.

    Written aside and renamed into place with its marker, so a crash leaves no half-written
    folder and concurrent trials on one node race harmlessly (the loser reuses the winner's).
    """
    root = Path(root)
    if _complete(root):
        return root
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"{root} exists but is not a complete synthetic PCam set (marker {_MARKER}); "
                         "delete it or choose another folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        write_synthetic_pcam(staging)
        (staging / _MARKER).write_text(json.dumps({"format_version": FORMAT_VERSION, "counts": COUNTS}))
        try:
            if root.exists():
                root.rmdir()
            os.rename(staging, root)
        except OSError:
            if not _complete(root):
                raise
        log.info("wrote synthetic PCam-layout data to %s: %s", root, COUNTS)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return root


__all__ = ["COUNTS", "ensure_synthetic_pcam", "synthetic_images", "write_synthetic_pcam"]
