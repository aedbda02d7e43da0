"""The training data path: block reads from HDF5, uint8 batches, transforms on the training device.

The per-image path (`HDF5ImageDataset` in a `DataLoader`) reads one HDF5 row, augments and
resizes one float image at a time on a CPU core. Here a batch is read as a few contiguous
runs of rows (block-shuffled indices: each `READ_BLOCK` neighbouring rows stay together, the
order of blocks is random every epoch), collated as uint8 (a quarter of float32's bytes to
copy), moved to the training device, and only there augmented, resized and normalised,
the whole batch at once.

Sharding across DDP ranks happens in the sampler: every rank draws the same block
permutation and takes its own contiguous 1/N of it, so the ranks' images are disjoint and
each rank runs the same number of steps (DDP's all-reduce needs that). Validation shards
are contiguous ranges that together cover every image once; the ranks' predictions are
gathered into the union (see `gather_predictions`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler

from trainables.data.augment import histology_augment_batch
from trainables.data.datasets import HDF5ImageDataset

# Rows read together. PCam rows are 27 KB at 96 px, so 16 rows are one ~440 KB read; large
# enough that HDF5's per-call overhead vanishes, small enough that a 64-image batch still
# mixes four random places of the file.
READ_BLOCK = 16


def shard_range(length: int, rank: int, world_size: int) -> range:
    """Return rank's contiguous share of range(length): [rank*L//N, (rank+1)*L//N); shares cover it once."""
    return range(rank * length // world_size, (rank + 1) * length // world_size)


class BlockBatchSampler(Sampler[list[int]]):
    """Yields one rank's batches of dataset indices, `block` neighbouring rows kept together.

    Epoch e (set_epoch) permutes the blocks of range(length) with seed + e, the same on every
    rank; rank r takes positions [r*m, (r+1)*m) of that order with m = length // world_size,
    so ranks are disjoint and equal in size (the length % world_size leftover rows sit out
    this epoch, different ones each epoch). Without shuffle the order is 0..length-1.
    """

    def __init__(self, length: int, batch_size: int, *, block: int = READ_BLOCK, shuffle: bool = True,
                 seed: int = 0, rank: int = 0, world_size: int = 1, drop_last: bool = False):
        if length < 1 or batch_size < 1 or block < 1:
            raise ValueError(f"length, batch_size and block must be >= 1, got {length}, {batch_size}, {block}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if length < world_size:
            raise ValueError(f"{length} images cannot be shared by {world_size} workers")
        self.length, self.batch_size, self.block = length, batch_size, block
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def per_rank(self) -> int:
        return self.length // self.world_size

    def indices(self) -> np.ndarray:
        """Return this rank's indices for the current epoch, in training order."""
        starts = np.arange(0, self.length, self.block)
        if self.shuffle:
            starts = np.random.default_rng((self.seed, self.epoch)).permutation(starts)
        order = np.concatenate([np.arange(s, min(s + self.block, self.length)) for s in starts])
        return order[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]

    def __iter__(self) -> Iterator[list[int]]:
        mine = self.indices()
        for start in range(0, len(mine), self.batch_size):
            batch = mine[start:start + self.batch_size]
            if self.drop_last and len(batch) < self.batch_size:
                return
            yield batch.tolist()

    def __len__(self) -> int:
        if self.drop_last:
            return self.per_rank // self.batch_size
        return math.ceil(self.per_rank / self.batch_size)


def _runs(indices: np.ndarray) -> list[tuple[int, int]]:
    """Return [(start, stop), ...]: the maximal runs of consecutive increasing values, in order."""
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    bounds = np.concatenate([[0], breaks, [len(indices)]])
    return [(int(indices[a]), int(indices[b - 1]) + 1) for a, b in zip(bounds[:-1], bounds[1:])]


class HDF5BlockReader(HDF5ImageDataset):
    """The same split and checks as HDF5ImageDataset, read a batch at a time as raw uint8.

    `reader.read(indices)` (also `__getitems__`, which a DataLoader with a batch sampler
    calls) returns (uint8 (N, H, W, 3) pixels, int64 labels, int64 indices); each run of
    consecutive indices is one HDF5 slice read. Stain normalisation (`stain`, per tile) is
    applied here; the other transforms are not: `BatchTransform` does them on the training device.
    """

    def read(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = np.asarray(indices, dtype=np.int64)
        if rows.size == 0 or rows.min() < 0 or rows.max() >= self.length:
            raise IndexError(f"indices must lie in [0, {self.length}), got {rows.min() if rows.size else 'none'}.."
                             f"{rows.max() if rows.size else ''}")
        images = self._images()
        pixels = torch.from_numpy(np.concatenate([images[a:b] for a, b in _runs(rows)]))
        if self.stain is not None:  # per tile, on the loader's CPU worker, before any transform
            pixels = torch.stack([self.stain(tile) for tile in pixels])
        index = torch.from_numpy(rows)
        return pixels, self.targets[index], index

    __getitems__ = read


def _as_batch(batch):
    """DataLoader collate_fn: the reader already returns a collated batch."""
    return batch


class BatchTransform:
    """uint8 (N, H, W, 3) pixels on any device -> float (N, 3, S, S): augmented, resized, normalised.

    The same steps as HDF5ImageDataset.__getitem__, in the same order (augment at the native
    size, then bilinear antialiased resize, then (x - mean) / std), applied to a batch.
    """

    def __init__(self, native_size: int, image_size: int, *, augment: bool, normalize: bool,
                 mean: Sequence[float], std: Sequence[float]):
        self.native_size, self.image_size = native_size, image_size
        self.augment, self.normalize = augment, normalize
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def __call__(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        # Channels first while still uint8 (a quarter of the bytes to move), then in-place float
        # arithmetic: strided float ops cost several times the contiguous ones on a CPU.
        images = pixels.permute(0, 3, 1, 2).contiguous().to(torch.float32)
        if self.augment or self.image_size != self.native_size or not self.normalize:
            images.div_(255.0)
            if self.augment:
                images = histology_augment_batch(images, generator=generator)
            if self.image_size != self.native_size:
                # Antialiasing changes nothing when enlarging (96 -> 224) and costs a slower kernel.
                images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                       align_corners=False, antialias=self.image_size < self.native_size)
            if self.normalize:
                images.sub_(self.mean.to(images.device)).div_(self.std.to(images.device))
            return images
        # Unaugmented at the native size: (x / 255 - mean) / std as one scale and one shift.
        scale = (1.0 / (255.0 * self.std)).to(images.device)
        return images.mul_(scale).sub_((self.mean / self.std).to(images.device))


class DeviceBatches:
    """Iterates (images, labels) already on `device` and transformed; records the indices it served.

    `served` holds the dataset indices of the current pass (reset on each iteration), so a
    caller can check what was really trained on or scored.
    """

    def __init__(self, loader: DataLoader, transform: BatchTransform, device: torch.device):
        self.loader, self.transform, self.device = loader, transform, device
        self.served: list[torch.Tensor] = []

    @property
    def sampler(self):
        return self.loader.batch_sampler

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.served = []
        non_blocking = self.device.type == "cuda"
        for pixels, labels, indices in self.loader:
            self.served.append(indices)
            images = self.transform(pixels.to(self.device, non_blocking=non_blocking))
            yield images, labels.to(self.device, non_blocking=non_blocking)

    def served_indices(self) -> torch.Tensor:
        """Return the indices served by the last (or current) pass, in order."""
        return torch.cat(self.served) if self.served else torch.empty(0, dtype=torch.int64)


def block_loader(reader: HDF5BlockReader, batch_size: int, device: torch.device, *, shuffle: bool, seed: int,
                 rank: int = 0, world_size: int = 1, workers: int = 0, augment: bool = False,
                 shard: range | None = None) -> DeviceBatches:
    """Return the device-side batches of one rank: a shuffled training share, or (with `shard`) an
    evaluation range read in order."""
    if shard is not None:
        batches = [list(range(s, min(s + batch_size, shard.stop))) for s in range(shard.start, shard.stop, batch_size)]
        sampler = batches
    else:
        sampler = BlockBatchSampler(len(reader), batch_size, shuffle=shuffle, seed=seed, rank=rank,
                                    world_size=world_size)
    loader = DataLoader(reader, batch_sampler=sampler, collate_fn=_as_batch, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    transform = BatchTransform(reader.native_size, reader.image_size, augment=augment,
                               normalize=reader.normalize, mean=reader.mean, std=reader.std)
    return DeviceBatches(loader, transform, device)


def gather_predictions(labels: torch.Tensor, probs: torch.Tensor, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (labels, probs) of every rank's contiguous validation shard, concatenated in rank order
    (= dataset order); one rank (no process group) returns its own."""
    if world_size == 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return labels, probs
    shards: list = [None] * world_size
    torch.distributed.all_gather_object(shards, (labels.cpu(), probs.cpu()))
    return torch.cat([s[0] for s in shards]), torch.cat([s[1] for s in shards])


def gather_indices(indices: torch.Tensor, world_size: int) -> list[torch.Tensor]:
    """Return every rank's served indices (rank order); this rank's alone without a process group."""
    if world_size == 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [indices]
    shards: list = [None] * world_size
    torch.distributed.all_gather_object(shards, indices.cpu())
    return shards


__all__ = [
    "BatchTransform", "BlockBatchSampler", "DeviceBatches", "HDF5BlockReader", "READ_BLOCK",
    "block_loader", "gather_indices", "gather_predictions", "shard_range",
]
