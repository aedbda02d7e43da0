"""The block-read data path: sharding, contiguous reads, and transforms equal to the per-image path."""

import math

import numpy as np
import pytest
import torch

from trainables.data.augment import _grey, adjust_hue, dihedral, histology_augment_batch, jitter_batch
from trainables.data.datasets import HDF5ImageDataset
from trainables.data.loader import (
    BatchTransform, BlockBatchSampler, HDF5BlockReader, _runs, block_loader, shard_range,
)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_get_disjoint_equal_shares(world):
    samplers = [BlockBatchSampler(203, 10, block=8, seed=1, rank=r, world_size=world) for r in range(world)]
    for s in samplers:
        s.set_epoch(4)
    shares = [np.concatenate([np.asarray(b) for b in s]) for s in samplers]
    assert {len(x) for x in shares} == {203 // world}
    assert len({len(list(s)) for s in samplers}) == 1          # the same number of steps per rank
    union = np.concatenate(shares)
    assert len(np.unique(union)) == len(union)                # disjoint


def test_epochs_reorder_blocks_but_keep_neighbours_together():
    sampler = BlockBatchSampler(64, 64, block=8, seed=0)
    orders = []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        orders.append(sampler.indices())
    assert not np.array_equal(orders[0], orders[1])
    assert sorted(orders[0].tolist()) == list(range(64))
    assert all(b - a == 1 for a, b in zip(orders[0][:8], orders[0][1:8]))


def test_shard_ranges_cover_every_index_once():
    covered = [i for r in range(3) for i in shard_range(10, r, 3)]
    assert covered == list(range(10))


def test_runs_split_at_gaps():
    assert _runs(np.array([4, 5, 6, 0, 1, 9])) == [(4, 7), (0, 2), (9, 10)]


def test_reader_returns_the_rows_asked_for_in_order(pcam_root):
    reader = HDF5BlockReader(pcam_root, "train")
    plain = HDF5ImageDataset(pcam_root, "train", normalize=False)
    pixels, labels, index = reader.read([5, 6, 7, 0, 1, 9])
    assert pixels.dtype == torch.uint8 and pixels.shape == (6, 8, 8, 3)
    for row, i in enumerate([5, 6, 7, 0, 1, 9]):
        torch.testing.assert_close(pixels[row].permute(2, 0, 1).float() / 255, plain[i][0])
        assert labels[row] == plain[i][1] and index[row] == i


def test_reader_rejects_out_of_range_rows(pcam_root):
    with pytest.raises(IndexError, match=r"\[0, 12\)"):
        HDF5BlockReader(pcam_root, "train").read([3, 12])


@pytest.mark.parametrize("image_size", [8, 20])
def test_batch_transform_matches_the_per_image_path(pcam_root, image_size):
    plain = HDF5ImageDataset(pcam_root, "valid", image_size=image_size)
    reader = HDF5BlockReader(pcam_root, "valid", image_size=image_size)
    batches = block_loader(reader, 5, torch.device("cpu"), shuffle=False, seed=0, shard=range(0, 12))
    images = torch.cat([x for x, _ in batches])
    expected = torch.stack([plain[i][0] for i in range(12)])
    torch.testing.assert_close(images, expected, atol=1e-5, rtol=1e-5)
    assert batches.served_indices().tolist() == list(range(12))


def test_batched_jitter_equals_per_image_steps():
    torch.manual_seed(0)
    images = torch.rand(3, 3, 6, 6)
    b, c, s, h = (torch.tensor(v) for v in ([0.9, 1.0, 1.1], [1.05, 0.92, 1.0], [0.95, 1.1, 1.0], [0.01, -0.02, 0.0]))
    out = jitter_batch(images, b, c, s, h)
    for i in range(3):
        x = images[i] * b[i]
        m = _grey(x).mean()
        x = m + (x - m) * c[i]
        g = _grey(x)
        x = (g + (x - g) * s[i]).clamp(0, 1)
        torch.testing.assert_close(out[i], adjust_hue(x, float(h[i])), atol=1e-5, rtol=1e-5)


def test_batched_augment_is_a_dihedral_image_with_modest_colour_change():
    images = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = histology_augment_batch(images, generator=torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    for i in range(16):
        # Colour jitter changes values a little; the closest dihedral image is the one applied.
        errors = [float((dihedral(images[i], k) - out[i]).abs().mean()) for k in range(8)]
        assert min(errors) < 0.1
    chosen = {int(np.argmin([float((dihedral(images[i], k) - out[i]).abs().mean()) for k in range(8)]))
              for i in range(16)}
    assert len(chosen) > 2  # images in one batch get different symmetries


def test_augmented_training_batches_differ_between_epochs(pcam_root):
    reader = HDF5BlockReader(pcam_root, "train")
    loader = block_loader(reader, 12, torch.device("cpu"), shuffle=True, seed=0, augment=True)
    first = next(iter(loader))[0]
    loader.sampler.set_epoch(1)
    second = next(iter(loader))[0]
    assert not torch.equal(first, second)
    assert math.isfinite(float(first.sum()))


def test_transform_normalises_with_the_given_statistics():
    transform = BatchTransform(4, 4, augment=False, normalize=True, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    out = transform(torch.full((1, 4, 4, 3), 255, dtype=torch.uint8))
    torch.testing.assert_close(out, torch.ones(1, 3, 4, 4))
