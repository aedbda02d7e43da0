"""Stain normalisation of H&E tiles (torchstain's Macenko and Reinhard), fitted on one training tile.

`data.stain_norm` = none | macenko | reinhard. The reference is the first tile of the training
split, in file order, that is at least half tissue and on which the method fits; every split
is normalised to it inside the loader workers, on the uint8 pixels, before augmentation,
resizing and mean/std normalisation.

A tile the method cannot normalise keeps its original pixels and is counted, never failing
the trial: too little tissue (under 5% of pixels with optical density >= 0.15 in every
channel, Macenko's own transparency threshold: blank background has no stain vectors), a flat
channel (Reinhard divides by the channel's spread), an error inside the method, or a result
that is not a valid image.
"""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import get_worker_info

from trainables.config import STAIN_METHODS

log = logging.getLogger(__name__)

TRANSPARENCY_OD = 0.15        # Macenko's beta: pixels below this optical density are background
INTENSITY_IO = 240            # Macenko's transmitted light intensity
MIN_TISSUE_FRACTION = 0.05
REFERENCE_TISSUE_FRACTION = 0.5
REFERENCE_SEARCH_ROWS = 1000
_COUNTER_SLOTS = 65           # one per loader worker (and the main process), so counts never race


def tissue_fraction(tile: torch.Tensor) -> float:
    """Return the fraction of pixels of an (H, W, 3) uint8 tile with optical density >= 0.15 in every channel."""
    optical_density = -torch.log((tile.float() + 1.0) / INTENSITY_IO)
    return float((optical_density >= TRANSPARENCY_OD).all(dim=-1).float().mean())


class StainNormalizer:
    """Callable (H, W, 3) uint8 tile -> the tile in the reference's stain; bad tiles come back unchanged and counted."""

    def __init__(self, method: str, reference: torch.Tensor):
        if method not in STAIN_METHODS[1:]:
            raise ValueError(f"data.stain_norm must be one of {', '.join(STAIN_METHODS)}, got {method!r}")
        self.method = method
        self._normalizer = _fit(method, reference)
        # Shared memory: loader workers (fork or spawn) add to the parent's counts.
        self._failures = torch.zeros(_COUNTER_SLOTS, dtype=torch.int64).share_memory_()

    @property
    def failures(self) -> int:
        """Return how many tiles kept their original pixels, over all loader workers."""
        return int(self._failures.sum())

    def __call__(self, tile: torch.Tensor) -> torch.Tensor:
        normalized = _normalize(self.method, self._normalizer, tile)
        if normalized is None:
            info = get_worker_info()
            self._failures[(0 if info is None else info.id + 1) % _COUNTER_SLOTS] += 1
            return tile
        return normalized


def _usable(tile: torch.Tensor) -> bool:
    flat_channel = bool((tile.reshape(-1, 3).float().std(dim=0) == 0).any())
    return not flat_channel and tissue_fraction(tile) >= MIN_TISSUE_FRACTION


def _fit(method: str, reference: torch.Tensor):
    from torchstain.torch.normalizers import TorchMacenkoNormalizer, TorchReinhardNormalizer

    normalizer = TorchMacenkoNormalizer() if method == "macenko" else TorchReinhardNormalizer()
    normalizer.fit(reference.permute(2, 0, 1).contiguous())
    return normalizer


def _normalize(method: str, normalizer, tile: torch.Tensor) -> torch.Tensor | None:
    """Return the normalised (H, W, 3) uint8 tile, or None when this tile cannot be normalised."""
    if not _usable(tile):
        return None
    chw = tile.permute(2, 0, 1).contiguous()
    try:
        if method == "macenko":
            out, _, _ = normalizer.normalize(I=chw, Io=INTENSITY_IO, stains=False)
        else:
            out = normalizer.normalize(chw)
    except (RuntimeError, ValueError, IndexError):  # torch.linalg errors are RuntimeErrors
        return None
    # Macenko casts its float result to int: NaN (degenerate stain matrix) turns into negatives.
    if out.shape != tile.shape or int(out.min()) < 0 or int(out.max()) > 255:
        return None
    return out.to(torch.uint8)


def reference_tile(x_path: str | Path, method: str) -> tuple[int, torch.Tensor]:
    """Return (row, tile): the first training tile, in file order, that is >= 50% tissue and fits `method`."""
    with h5py.File(x_path, "r") as handle:
        images = handle["x"]
        for row in range(min(len(images), REFERENCE_SEARCH_ROWS)):
            tile = torch.from_numpy(np.ascontiguousarray(images[row]))
            if tissue_fraction(tile) < REFERENCE_TISSUE_FRACTION or not _usable(tile):
                continue
            try:
                normalizer = _fit(method, tile)
            except (RuntimeError, ValueError, IndexError):
                continue
            if _normalize(method, normalizer, tile) is not None:
                return row, tile
    raise ValueError(
        f"data.stain_norm={method!r}: none of the first {REFERENCE_SEARCH_ROWS} tiles of {x_path} is at least "
        f"{REFERENCE_TISSUE_FRACTION:.0%} tissue with a {method} fit; set data.stain_norm=none for this data")


def make_stain_normalizer(method: str, train_x_path: str | Path) -> StainNormalizer | None:
    """Return the normaliser for data.stain_norm fitted on the training split's reference tile (None for none)."""
    if method == "none":
        return None
    row, tile = reference_tile(train_x_path, method)
    log.info("stain normalisation %s fitted on %s row %d", method, train_x_path, row)
    return StainNormalizer(method, tile)


__all__ = ["STAIN_METHODS", "StainNormalizer", "make_stain_normalizer", "reference_tile", "tissue_fraction"]
