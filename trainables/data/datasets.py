"""Image classification data in PCam's HDF5 layout: the reader, its fingerprint, the embedded
digits set, and the trial's datasets (`make_dataset`).

Layout (PCam, and the digits set written here in the same shape):
    <root>/<prefix>_split_<split>_x.h5      dataset "x": (N, H, W, 3) uint8
    <root>/<prefix>_split_<split>_y.h5      dataset "y": (N, 1, 1, 1) binary labels
    <root>/<prefix>_split_<split>_digit.h5  dataset "y": (N, 1, 1, 1) 0..9 (digits only)

CLI (trainables.data.cli):
    python -m trainables.data download --root data/pcam
    python -m trainables.data digits --root DIR
    python -m trainables.data check --root DIR [--prefix digits]
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from trainables.data.augment import histology_augment

if TYPE_CHECKING:
    from trainables.config import TrialConfig

logger = logging.getLogger(__name__)

PCAM_PREFIX = "camelyonpatch_level_2"
DIGITS_PREFIX = "digits"
SPLITS = ("train", "valid", "test")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Label file suffix -> the classes its labels may take.
LABEL_CLASSES = {"y": (0, 1), "digit": tuple(range(10))}

DIGITS_IMAGE_SIZE = 32
DIGITS_SEED = 0
DIGITS_FRACTIONS = {"train": 0.70, "valid": 0.15, "test": 0.15}
# Bumped whenever write_digits would produce different bytes; part of the completion marker.
DIGITS_FORMAT_VERSION = 1
_DIGITS_MARKER = "_COMPLETE.json"


class DataFileError(ValueError):
    """A data file exists but is unreadable, truncated or not in the expected layout."""


def split_path(root: str | Path, split: str, kind: str, prefix: str = PCAM_PREFIX) -> Path:
    """Return the path of one HDF5 file: <root>/<prefix>_split_<split>_<kind>.h5."""
    return Path(root) / f"{prefix}_split_{split}_{kind}.h5"


def _fix_hint(root: Path, prefix: str) -> str:
    if prefix == PCAM_PREFIX:
        return f"python -m trainables.data download --root {root}"
    if prefix == DIGITS_PREFIX:
        return f"python -m trainables.data digits --root {root}"
    return f"rewrite the {prefix!r} files under {root}"


def _open_h5(path: Path, root: Path, prefix: str) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as err:
        # h5py's own message ("truncated file: eof = ...") is kept as the reason, not as a traceback.
        raise DataFileError(
            f"cannot read {path}: {err} — the file is truncated or corrupt; "
            f"re-download with: {_fix_hint(root, prefix)}"
        ) from None


def _dataset(handle: h5py.File, name: str, path: Path) -> h5py.Dataset:
    if name not in handle or not isinstance(handle[name], h5py.Dataset):
        raise DataFileError(f"{path} has no dataset {name!r} (found: {sorted(handle.keys())})")
    return handle[name]


def _check_images(images: h5py.Dataset, path: Path) -> tuple[int, int]:
    shape = images.shape
    if len(shape) != 4 or shape[3] != 3:
        raise DataFileError(f"{path}: dataset 'x' must have shape (N, H, W, 3), got {shape}")
    if images.dtype != np.uint8:
        raise DataFileError(f"{path}: dataset 'x' must be uint8, got {images.dtype}")
    if shape[1] != shape[2]:
        raise DataFileError(f"{path}: images must be square, got H={shape[1]}, W={shape[2]}")
    return shape[0], shape[1]


def _read_labels(path: Path, root: Path, prefix: str, labels: str) -> np.ndarray:
    with _open_h5(path, root, prefix) as handle:
        dataset = _dataset(handle, "y", path)
        if len(dataset.shape) != 4 or dataset.shape[1:] != (1, 1, 1):
            raise DataFileError(f"{path}: dataset 'y' must have shape (N, 1, 1, 1), got {dataset.shape}")
        if not np.issubdtype(dataset.dtype, np.integer):
            raise DataFileError(f"{path}: dataset 'y' must hold integers, got {dataset.dtype}")
        values = dataset[:].reshape(-1).astype(np.int64)
    allowed = LABEL_CLASSES[labels]
    bad = ~np.isin(values, allowed)
    if bad.any():
        found = sorted(set(np.unique(values[bad]).tolist()))[:10]
        raise DataFileError(
            f"{path}: labels must be in {{{allowed[0]}..{allowed[-1]}}} for label set {labels!r}, "
            f"found {found} in {int(bad.sum())} rows"
        )
    return values


def _check_channel_stats(name: str, values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) != 3:
        raise ValueError(f"{name} must have 3 values (one per RGB channel), got {values!r}")
    return tuple(float(v) for v in values)


class HDF5ImageDataset(Dataset):
    """One split of an HDF5 image dataset in PCam's layout; items are (float32 CHW image, int64 label).

    `labels` picks the label file ("y" binary, "digit" 0..9); `limit` keeps the first N rows;
    `image_size` resizes (bilinear, antialiased; None keeps the native size); `augment` applies
    `histology_augment` before resizing; `normalize` maps [0, 1] pixels to (x - mean) / std;
    `stain` (trainables.data.stain) maps the uint8 (H, W, 3) pixels first, in the loader worker.
    Everything is validated here, so a bad file fails at construction, not inside a worker.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        prefix: str = PCAM_PREFIX,
        labels: str = "y",
        limit: int | None = None,
        image_size: int | None = None,
        augment: bool = False,
        normalize: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        stain: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if labels not in LABEL_CLASSES:
            raise ValueError(f"labels must be one of {tuple(LABEL_CLASSES)}, got {labels!r}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"limit must be a positive int or None, got {limit!r}")
        if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
            raise ValueError(f"image_size must be a positive int or None (native), got {image_size!r}")
        self.mean = _check_channel_stats("mean", mean)
        self.std = _check_channel_stats("std", std)
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")

        self.root = Path(root)
        self.split = split
        self.prefix = prefix
        self.labels_name = labels
        self.augment = augment
        self.normalize = normalize
        self.stain = stain
        self.x_path = split_path(root, split, "x", prefix)
        label_path = split_path(root, split, labels, prefix)
        for path in (self.x_path, label_path):
            if not path.is_file():
                name = "PCam" if prefix == PCAM_PREFIX else f"{prefix!r} dataset"
                raise FileNotFoundError(
                    f"{name} split {split!r} not found: expected {path} — run: {_fix_hint(self.root, prefix)}"
                )

        with _open_h5(self.x_path, self.root, prefix) as handle:
            count, native_size = _check_images(_dataset(handle, "x", self.x_path), self.x_path)
        targets = _read_labels(label_path, self.root, prefix, labels)
        if targets.shape[0] != count:
            raise DataFileError(
                f"{self.x_path} has {count} images but {label_path} has {targets.shape[0]} labels; "
                f"both must have the same N — re-download with: {_fix_hint(self.root, prefix)}"
            )
        if count == 0:
            raise ValueError(f"split {split!r} under {self.root} is empty: {self.x_path} has 0 images")

        self.length = count if limit is None else min(limit, count)
        self.targets = torch.from_numpy(targets[: self.length])
        self.native_size = native_size
        self.image_size = native_size if image_size is None else image_size
        self.num_classes = len(LABEL_CLASSES[labels])
        self._mean = torch.tensor(self.mean).view(3, 1, 1)
        self._std = torch.tensor(self.std).view(3, 1, 1)
        self._handle: h5py.File | None = None
        self._handle_pid: int | None = None

    def __len__(self) -> int:
        return self.length

    def _images(self) -> h5py.Dataset:
        # One handle per process: a handle inherited through fork shares the parent's HDF5
        # state and must not be used, so a worker opens its own on first access.
        pid = os.getpid()
        if self._handle is None or self._handle_pid != pid:
            self._handle = _open_h5(self.x_path, self.root, self.prefix)
            self._handle_pid = pid
        return self._handle["x"]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        index %= self.length
        pixels = torch.from_numpy(self._images()[index])  # (H, W, 3) uint8
        if self.stain is not None:
            pixels = self.stain(pixels)
        image = pixels.permute(2, 0, 1).to(torch.float32).div_(255.0)
        if self.augment:
            image = histology_augment(image)
        if self.image_size != self.native_size:
            image = F.interpolate(
                image[None], size=(self.image_size, self.image_size), mode="bilinear",
                align_corners=False, antialias=True,
            )[0]
        if self.normalize:
            image = (image - self._mean) / self._std
        return image.contiguous(), self.targets[index]

    def close(self) -> None:
        """Close this process's file handle, if open."""
        if self._handle is not None and self._handle_pid == os.getpid():
            self._handle.close()
        self._handle = None
        self._handle_pid = None

    def __getstate__(self) -> dict:
        # h5py handles do not pickle (spawn workers, Ray object store): the receiver reopens.
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_handle_pid"] = None
        return state

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, prefix={self.prefix!r}, "
            f"labels={self.labels_name!r}, n={self.length}, image_size={self.image_size}, augment={self.augment})"
        )


def check_dataset(
    root: str | Path, prefix: str = PCAM_PREFIX, labels: Sequence[str] = ("y",)
) -> dict[str, int]:
    """Return {split: rows} after opening every split with every label set, so a missing,
    truncated or malformed file fails here, naming the file, before any training starts."""
    counts = {}
    for split in SPLITS:
        for label_set in labels:
            dataset = HDF5ImageDataset(root, split, prefix=prefix, labels=label_set)
            counts[split] = len(dataset)
    return counts


def data_fingerprint(
    root: str | Path, prefix: str = PCAM_PREFIX, splits: Sequence[str] = SPLITS
) -> str:
    """Return a 16-hex-digit hash of the data under `root`: per file its name, size, dataset shapes and dtypes, all labels and the first, middle and last image rows (no mtimes)."""
    root = Path(root)
    digest = hashlib.sha256()
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"splits must be drawn from {SPLITS}, got {split!r}")
        paths = sorted(root.glob(f"{prefix}_split_{split}_*.h5"))
        if not any(p.name.endswith("_x.h5") for p in paths):
            raise FileNotFoundError(
                f"split {split!r} not found: expected {split_path(root, split, 'x', prefix)} — "
                f"run: {_fix_hint(root, prefix)}"
            )
        for path in paths:
            digest.update(f"{path.name}:{path.stat().st_size}".encode())
            with _open_h5(path, root, prefix) as handle:
                for name in sorted(handle.keys()):
                    dataset = handle[name]
                    if not isinstance(dataset, h5py.Dataset):
                        continue
                    digest.update(f"{name}:{dataset.shape}:{dataset.dtype}".encode())
                    if name == "x":
                        count = dataset.shape[0]
                        for row in sorted({0, count // 2, count - 1} if count else set()):
                            digest.update(np.ascontiguousarray(dataset[row]).tobytes())
                    else:
                        digest.update(np.ascontiguousarray(dataset[:]).tobytes())
    return digest.hexdigest()[:16]


def _digits_images_rgb(images_8x8: np.ndarray, size: int) -> np.ndarray:
    # load_digits pixels are 0..16 grey levels; upscale bilinearly, stretch to 0..255, copy to 3 channels.
    grey = torch.from_numpy(images_8x8.astype(np.float32))[:, None]
    grey = F.interpolate(grey, size=(size, size), mode="bilinear", align_corners=False)
    grey = (grey * (255.0 / 16.0)).round().clamp(0, 255).to(torch.uint8)
    return grey.permute(0, 2, 3, 1).expand(-1, -1, -1, 3).contiguous().numpy()


def _stratified_split(digits: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(digits))
    holdout = DIGITS_FRACTIONS["valid"] + DIGITS_FRACTIONS["test"]
    train, rest = train_test_split(indices, test_size=holdout, stratify=digits, random_state=seed)
    valid, test = train_test_split(
        rest, test_size=DIGITS_FRACTIONS["test"] / holdout, stratify=digits[rest], random_state=seed
    )
    return {"train": np.sort(train), "valid": np.sort(valid), "test": np.sort(test)}


def write_digits(root: str | Path) -> Path:
    """Write scikit-learn's bundled digits as RGB uint8 32x32 HDF5 splits (70/15/15, stratified, seed 0) under `root`; return `root`.

    Labels: `_digit` holds the class 0..9, `_y` the binary target y = (digit >= 5).
    Rows within each split are shuffled with the same seed.
    """
    from sklearn.datasets import load_digits

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    bunch = load_digits()
    images = _digits_images_rgb(bunch.images, DIGITS_IMAGE_SIZE)
    digits = bunch.target.astype(np.uint8)
    rng = np.random.default_rng(DIGITS_SEED)
    counts = {}
    for split, rows in _stratified_split(digits, DIGITS_SEED).items():
        rows = rng.permutation(rows)
        arrays = {
            "x": images[rows],
            "y": (digits[rows] >= 5).astype(np.uint8).reshape(-1, 1, 1, 1),
            "digit": digits[rows].reshape(-1, 1, 1, 1),
        }
        for kind, array in arrays.items():
            with h5py.File(split_path(root, split, kind, DIGITS_PREFIX), "w") as handle:
                handle.create_dataset("x" if kind == "x" else "y", data=array)
        counts[split] = len(rows)
    logger.info("wrote digits to %s: %s", root, counts)
    return root


def _digits_complete(root: Path) -> bool:
    marker = root / _DIGITS_MARKER
    if not marker.is_file():
        return False
    try:
        content = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return content.get("format_version") == DIGITS_FORMAT_VERSION and all(
        split_path(root, split, kind, DIGITS_PREFIX).is_file()
        for split in SPLITS
        for kind in ("x", "y", "digit")
    )


def ensure_digits(root: str | Path) -> Path:
    """Return `root` holding the complete digits dataset, writing it first if absent.

    Written into a sibling temporary folder that is renamed into place with its completion
    marker inside, so a crash never leaves a half-written `root`; concurrent callers race
    on the rename and the loser reuses the winner's copy.
    """
    root = Path(root)
    if _digits_complete(root):
        return root
    if root.exists() and any(root.iterdir()):
        raise DataFileError(
            f"{root} exists but does not hold a complete digits dataset (format {DIGITS_FORMAT_VERSION}, "
            f"marker {_DIGITS_MARKER}); delete it or choose another folder"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        write_digits(staging)
        counts = {split: len(HDF5ImageDataset(staging, split, prefix=DIGITS_PREFIX)) for split in SPLITS}
        (staging / _DIGITS_MARKER).write_text(
            json.dumps({"format_version": DIGITS_FORMAT_VERSION, "counts": counts})
        )
        try:
            if root.exists() and not any(root.iterdir()):
                root.rmdir()  # rename cannot replace a directory, even an empty one, on every OS
            os.rename(staging, root)
        except OSError:
            if not _digits_complete(root):
                raise
            logger.info("another process wrote %s first; reusing it", root)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return root


def dataset_prefix(cfg: TrialConfig) -> str:
    """Return the HDF5 file prefix of the configured dataset."""
    return DIGITS_PREFIX if cfg.data.dataset == "digits" else PCAM_PREFIX


def make_dataset(cfg: TrialConfig, root: str, split: str, labels: str = "y", *, augment: bool = False,
                 limit: int | None = None) -> HDF5ImageDataset:
    """Return the configured split as a dataset (stain-normalised if configured, resized,
    normalised, augmented if asked)."""
    if limit is None:
        limit = {"train": cfg.data.train_limit, "valid": cfg.data.val_limit,
                 "test": cfg.data.test_limit}[split]
    from trainables.data.stain import make_stain_normalizer

    prefix = dataset_prefix(cfg)
    return HDF5ImageDataset(
        root, split, prefix=prefix, labels=labels, limit=limit or None,
        image_size=cfg.data.image_size, augment=augment, normalize=cfg.data.normalize,
        stain=make_stain_normalizer(cfg.data.stain_norm, split_path(root, "train", "x", prefix)),
    )
