"""Fixtures for the data-layer tests: small HDF5 files in PCam's official layout."""

from pathlib import Path

import h5py
import numpy as np
import pytest

from trainables.data.datasets import PCAM_PREFIX, split_path


def write_split(
    root: Path,
    split: str = "train",
    *,
    n: int = 12,
    size: int = 8,
    labels=None,
    x=None,
    prefix: str = PCAM_PREFIX,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Write <root>/<prefix>_split_<split>_{x,y}.h5 and return the (images, labels) written."""
    rng = np.random.default_rng(seed)
    if x is None:
        x = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    if labels is None:
        labels = (np.arange(len(x)) % 2).astype(np.uint8).reshape(-1, 1, 1, 1)
    root.mkdir(parents=True, exist_ok=True)
    with h5py.File(split_path(root, split, "x", prefix), "w") as handle:
        handle.create_dataset("x", data=x)
    with h5py.File(split_path(root, split, "y", prefix), "w") as handle:
        handle.create_dataset("y", data=labels)
    return x, labels


@pytest.fixture
def pcam_root(tmp_path: Path) -> Path:
    """A folder with all three PCam splits, 12 random 8x8 images each, alternating labels."""
    root = tmp_path / "pcam"
    for offset, split in enumerate(("train", "valid", "test")):
        write_split(root, split, seed=offset)
    return root


@pytest.fixture
def write_h5():
    """The write_split helper, for tests that need files of their own shape."""
    return write_split
