"""Stain normalisation: reference tile choice, Macenko and Reinhard, bad tiles counted across loader workers."""

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from trainables.config import TrialConfig
from trainables.data.datasets import HDF5ImageDataset, split_path
from trainables.data.stain import make_stain_normalizer, reference_tile, tissue_fraction

# Hematoxylin and eosin optical-density vectors (RGB columns), as in Macenko's reference.
HE = np.array([[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]])


def stained_tiles(n: int, size: int = 32, seed: int = 0, strength: float = 1.0) -> np.ndarray:
    """Return n (size, size, 3) uint8 tiles made by Beer-Lambert mixing of H and E concentrations."""
    rng = np.random.default_rng(seed)
    concentration = rng.gamma(2.0, 0.5 * strength, size=(n, size * size, 2))
    optical_density = concentration @ HE.T
    tiles = 240 * np.exp(-optical_density)
    return tiles.clip(0, 255).astype(np.uint8).reshape(n, size, size, 3)


def write_split(root, split: str, *, x: np.ndarray) -> None:
    """Write <root>/<PCam prefix>_split_<split>_{x,y}.h5 holding `x` and alternating labels."""
    with h5py.File(split_path(root, split, "x"), "w") as handle:
        handle.create_dataset("x", data=x)
    with h5py.File(split_path(root, split, "y"), "w") as handle:
        handle.create_dataset("y", data=(np.arange(len(x)) % 2).astype(np.uint8).reshape(-1, 1, 1, 1))


BLANK = np.full((32, 32, 3), 245, dtype=np.uint8)


@pytest.fixture
def stain_root(tmp_path):
    tiles = stained_tiles(8)
    tiles[0] = BLANK          # a blank first row: the reference must skip it
    tiles[5] = BLANK
    write_split(tmp_path, "train", x=tiles)
    write_split(tmp_path, "valid", x=stained_tiles(4, seed=1, strength=0.5))
    write_split(tmp_path, "test", x=stained_tiles(4, seed=2))
    return tmp_path


def test_blank_tile_has_no_tissue():
    assert tissue_fraction(torch.from_numpy(BLANK)) == 0.0
    assert tissue_fraction(torch.from_numpy(stained_tiles(1)[0])) > 0.5


def test_reference_is_the_first_tissue_tile(stain_root):
    row, _ = reference_tile(split_path(stain_root, "train", "x"), "macenko")
    assert row == 1


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_normalisation_moves_a_pale_tile_towards_the_reference(method, stain_root):
    normalizer = make_stain_normalizer(method, split_path(stain_root, "train", "x"))
    reference = torch.from_numpy(stained_tiles(8)[1]).float().mean()
    pale = torch.from_numpy(stained_tiles(1, seed=1, strength=0.5)[0])
    out = normalizer(pale)
    assert out.dtype == torch.uint8 and out.shape == pale.shape
    assert abs(out.float().mean() - reference) < abs(pale.float().mean() - reference)
    assert normalizer.failures == 0


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_bad_tiles_keep_their_pixels_and_are_counted(method, stain_root):
    normalizer = make_stain_normalizer(method, split_path(stain_root, "train", "x"))
    flat = torch.full((32, 32, 3), 120, dtype=torch.uint8)   # tissue, but nothing to normalise
    for tile in (torch.from_numpy(BLANK), flat):
        assert torch.equal(normalizer(tile), tile)
    assert normalizer.failures == 2


def test_loader_workers_normalise_and_count(stain_root):
    normalizer = make_stain_normalizer("macenko", split_path(stain_root, "train", "x"))
    plain = HDF5ImageDataset(stain_root, "train", normalize=False)
    dataset = HDF5ImageDataset(stain_root, "train", normalize=False, stain=normalizer)
    images = torch.cat([x for x, _ in DataLoader(dataset, batch_size=2, num_workers=2)])
    assert normalizer.failures == 2
    assert torch.equal(images[0], plain[0][0]) and not torch.equal(images[2], plain[2][0])


def test_stain_norm_keys_the_data_only_when_on():
    from trainables.stages import data_key_config as _data_key

    assert "stain_norm" not in _data_key(TrialConfig())
    assert _data_key(TrialConfig.from_flat({"data.stain_norm": "macenko"}))["stain_norm"] == "macenko"


def test_unknown_method_lists_the_choices():
    with pytest.raises(ValueError, match="data.stain_norm must be one of none, macenko, reinhard"):
        TrialConfig.from_flat({"data.stain_norm": "vahadane"})


def test_data_without_tissue_says_so(tmp_path):
    write_split(tmp_path, "train", x=np.stack([BLANK] * 3))
    with pytest.raises(ValueError, match="none of the first 1000 tiles"):
        make_stain_normalizer("macenko", split_path(tmp_path, "train", "x"))
