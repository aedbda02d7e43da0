"""Tests for trainables.data.datasets and trainables.data.augment: HDF5 reader, errors, fingerprint, digits writer."""

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from trainables.data import datasets as data
from trainables.data.augment import color_jitter, dihedral, histology_augment
from trainables.data.datasets import (
    DIGITS_PREFIX,
    DataFileError,
    HDF5ImageDataset,
    data_fingerprint,
    ensure_digits,
    split_path,
    write_digits,
)


def raw(root, split="train", **kwargs):
    return HDF5ImageDataset(root, split, normalize=False, **kwargs)


def read(path, name):
    with h5py.File(path, "r") as handle:
        return handle[name][:]


def test_round_trip_returns_written_pixels_and_labels(pcam_root):
    x, y = read(split_path(pcam_root, "valid", "x"), "x"), read(split_path(pcam_root, "valid", "y"), "y")
    dataset = raw(pcam_root, "valid")
    image, label = dataset[5]
    assert image.dtype == torch.float32 and image.shape == (3, 8, 8)
    assert label.dtype == torch.int64 and int(label) == int(y[5, 0, 0, 0])
    torch.testing.assert_close(image, torch.from_numpy(x[5]).permute(2, 0, 1).float() / 255)


def test_length_and_limit(pcam_root):
    assert len(raw(pcam_root)) == 12
    limited = raw(pcam_root, limit=5)
    assert len(limited) == 5 and limited.targets.shape == (5,)
    with pytest.raises(IndexError):
        limited[5]


def test_normalize_applies_imagenet_statistics(pcam_root):
    plain, normalized = raw(pcam_root)[3][0], HDF5ImageDataset(pcam_root, "train")[3][0]
    mean = torch.tensor(data.IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(data.IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(normalized, (plain - mean) / std)


def test_resize_to_image_size_keeps_a_constant_image_constant(tmp_path, write_h5):
    x = np.full((2, 8, 8, 3), 51, dtype=np.uint8)
    write_h5(tmp_path, x=x)
    image, _ = raw(tmp_path, image_size=20)[0]
    assert image.shape == (3, 20, 20)
    torch.testing.assert_close(image, torch.full((3, 20, 20), 0.2))


def test_resize_downsamples_with_antialiasing(tmp_path, write_h5):
    x = np.zeros((1, 12, 12, 3), dtype=np.uint8)
    x[:, ::2] = 255
    # Plain bilinear 3x downsampling samples single rows (all black or all white);
    # antialiasing averages several stripes into grey.
    write_h5(tmp_path, x=x, labels=np.zeros((1, 1, 1, 1), np.uint8))
    image, _ = raw(tmp_path, image_size=4)[0]
    assert image.shape == (3, 4, 4)
    assert 0.25 < image.min() and image.max() < 0.75


def test_augment_keeps_shape_dtype_range_and_label(pcam_root):
    torch.manual_seed(0)
    plain = raw(pcam_root)
    augmented = raw(pcam_root, augment=True)
    for index in range(len(plain)):
        image, label = augmented[index]
        assert image.shape == (3, 8, 8) and image.dtype == torch.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert label == plain[index][1]


def test_augment_changes_the_image(pcam_root):
    torch.manual_seed(0)
    plain, augmented = raw(pcam_root), raw(pcam_root, augment=True)
    assert any(not torch.equal(plain[i][0], augmented[i][0]) for i in range(4))


def test_dihedral_gives_eight_distinct_images_and_identity_first():
    image = torch.arange(3 * 4 * 4, dtype=torch.float32).view(3, 4, 4)
    outputs = [dihedral(image, k) for k in range(8)]
    assert torch.equal(outputs[0], image)
    assert len({tuple(o.flatten().tolist()) for o in outputs}) == 8


def test_color_jitter_with_zero_strength_is_identity():
    image = torch.rand(3, 6, 6)
    out = color_jitter(image, brightness=0, contrast=0, saturation=0, hue=0)
    torch.testing.assert_close(out, image)


def test_hue_jitter_keeps_grey_pixels_grey():
    grey = torch.full((3, 4, 4), 0.4)
    out = color_jitter(grey, brightness=0, contrast=0, saturation=0, hue=0.5, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, grey, atol=1e-5, rtol=0)


def test_histology_augment_is_seeded_by_generator():
    image = torch.rand(3, 8, 8)
    first = histology_augment(image, torch.Generator().manual_seed(3))
    again = histology_augment(image, torch.Generator().manual_seed(3))
    assert torch.equal(first, again)


def test_dataloader_with_two_fork_workers_reads_every_item(pcam_root):
    dataset = raw(pcam_root)
    dataset[0]  # a handle opened in the parent must not be reused by the forked workers
    loader = DataLoader(dataset, batch_size=4, num_workers=2, multiprocessing_context="fork")
    labels = torch.cat([y for _, y in loader])
    assert torch.equal(labels, dataset.targets)


def test_dataset_pickles_without_its_file_handle(pcam_root):
    import pickle

    dataset = raw(pcam_root)
    dataset[0]
    clone = pickle.loads(pickle.dumps(dataset))
    assert torch.equal(clone[1][0], dataset[1][0])


def test_missing_split_names_the_file_and_the_fix(pcam_root):
    os.remove(split_path(pcam_root, "valid", "x"))
    with pytest.raises(FileNotFoundError) as caught:
        raw(pcam_root, "valid")
    message = str(caught.value)
    assert str(split_path(pcam_root, "valid", "x")) in message
    assert "python -m trainables.data download --root" in message


def test_truncated_hdf5_names_the_file(pcam_root):
    path = split_path(pcam_root, "train", "x")
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    with pytest.raises(DataFileError) as caught:
        raw(pcam_root)
    assert str(path) in str(caught.value) and "re-download" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_wrong_image_shape_is_rejected(tmp_path, write_h5):
    write_h5(tmp_path, x=np.zeros((4, 8, 8, 1), np.uint8), labels=np.zeros((4, 1, 1, 1), np.uint8))
    with pytest.raises(DataFileError, match=r"\(N, H, W, 3\)"):
        raw(tmp_path)


def test_wrong_image_dtype_is_rejected(tmp_path, write_h5):
    write_h5(tmp_path, x=np.zeros((4, 8, 8, 3), np.float32), labels=np.zeros((4, 1, 1, 1), np.uint8))
    with pytest.raises(DataFileError, match="uint8"):
        raw(tmp_path)


def test_wrong_label_shape_is_rejected(tmp_path, write_h5):
    write_h5(tmp_path, n=4, labels=np.zeros((4,), np.uint8))
    with pytest.raises(DataFileError, match=r"\(N, 1, 1, 1\)"):
        raw(tmp_path)


def test_labels_outside_the_binary_set_are_rejected(tmp_path, write_h5):
    write_h5(tmp_path, n=4, labels=np.array([0, 1, 2, 1], np.uint8).reshape(-1, 1, 1, 1))
    with pytest.raises(DataFileError, match=r"found \[2\]"):
        raw(tmp_path)


def test_missing_dataset_key_is_rejected(tmp_path, write_h5):
    write_h5(tmp_path, n=4)
    with h5py.File(split_path(tmp_path, "train", "y"), "w") as handle:
        handle.create_dataset("labels", data=np.zeros((4, 1, 1, 1), np.uint8))
    with pytest.raises(DataFileError, match="no dataset 'y'"):
        raw(tmp_path)


def test_mismatched_counts_are_rejected(tmp_path, write_h5):
    write_h5(tmp_path, n=4, labels=np.zeros((5, 1, 1, 1), np.uint8))
    with pytest.raises(DataFileError, match="4 images but .* 5 labels"):
        raw(tmp_path)


def test_empty_split_is_rejected(tmp_path, write_h5):
    write_h5(tmp_path, x=np.zeros((0, 8, 8, 3), np.uint8), labels=np.zeros((0, 1, 1, 1), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        raw(tmp_path)


@pytest.mark.parametrize(
    "kwargs, field",
    [({"limit": 0}, "limit"), ({"image_size": -1}, "image_size"), ({"labels": "z"}, "labels"),
     ({"std": (1, 0, 1)}, "std"), ({"mean": (0.5,)}, "mean")],
)
def test_invalid_arguments_name_the_argument(pcam_root, kwargs, field):
    with pytest.raises(ValueError, match=field):
        HDF5ImageDataset(pcam_root, "train", **kwargs)


def test_fingerprint_is_stable_and_ignores_mtime(pcam_root):
    first = data_fingerprint(pcam_root)
    os.utime(split_path(pcam_root, "train", "x"), (0, 0))
    assert data_fingerprint(pcam_root) == first and len(first) == 16


def test_fingerprint_changes_when_a_label_changes(pcam_root, write_h5):
    before = data_fingerprint(pcam_root)
    labels = np.ones((12, 1, 1, 1), np.uint8)
    x = read(split_path(pcam_root, "test", "x"), "x")
    write_h5(pcam_root, "test", x=x, labels=labels)
    assert data_fingerprint(pcam_root) != before


@pytest.mark.parametrize("row", [0, 6, 11])  # the first, middle and last of 12 images
def test_fingerprint_changes_when_one_pixel_of_a_sampled_image_changes(pcam_root, write_h5, row):
    before = data_fingerprint(pcam_root)
    x = read(split_path(pcam_root, "valid", "x"), "x")
    labels = read(split_path(pcam_root, "valid", "y"), "y")
    x[row, 3, 4, 1] ^= 1  # same shapes, dtypes, labels and file sizes: only the image differs
    write_h5(pcam_root, "valid", x=x, labels=labels)
    assert data_fingerprint(pcam_root) != before


def test_fingerprint_of_missing_split_raises(pcam_root):
    os.remove(split_path(pcam_root, "test", "x"))
    with pytest.raises(FileNotFoundError, match="test"):
        data_fingerprint(pcam_root)


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory) -> Path:
    return ensure_digits(tmp_path_factory.mktemp("cache") / "digits")


def test_digits_splits_have_official_layout_and_sizes(digits_root):
    sizes = {}
    for split in data.SPLITS:
        with h5py.File(split_path(digits_root, split, "x", DIGITS_PREFIX), "r") as handle:
            assert handle["x"].shape[1:] == (32, 32, 3) and handle["x"].dtype == np.uint8
            sizes[split] = handle["x"].shape[0]
    assert sum(sizes.values()) == 1797
    assert abs(sizes["train"] / 1797 - 0.70) < 0.01 and abs(sizes["test"] / 1797 - 0.15) < 0.01


def test_digits_images_span_grey_levels_in_three_equal_channels(digits_root):
    x = read(split_path(digits_root, "train", "x", DIGITS_PREFIX), "x")
    assert x.max() == 255 and x.min() == 0
    assert np.array_equal(x[..., 0], x[..., 1]) and np.array_equal(x[..., 0], x[..., 2])


def test_digits_splits_are_stratified_by_digit(digits_root):
    for split in data.SPLITS:
        digits = HDF5ImageDataset(digits_root, split, prefix=DIGITS_PREFIX, labels="digit").targets
        counts = torch.bincount(digits, minlength=10).double()
        assert counts.min() / counts.max() > 0.9, f"{split}: {counts.tolist()}"


def test_digits_binary_target_is_digit_at_least_five(digits_root):
    binary = HDF5ImageDataset(digits_root, "valid", prefix=DIGITS_PREFIX).targets
    digits = HDF5ImageDataset(digits_root, "valid", prefix=DIGITS_PREFIX, labels="digit").targets
    assert torch.equal(binary, (digits >= 5).long())
    assert 0.45 < binary.double().mean() < 0.55


def test_ensure_digits_reuses_a_complete_folder(digits_root):
    before = {p.name: p.stat().st_mtime_ns for p in digits_root.iterdir()}
    ensure_digits(digits_root)
    assert {p.name: p.stat().st_mtime_ns for p in digits_root.iterdir()} == before


def test_write_digits_is_deterministic(tmp_path):
    a, b = write_digits(tmp_path / "a"), write_digits(tmp_path / "b")
    assert data_fingerprint(a, DIGITS_PREFIX) == data_fingerprint(b, DIGITS_PREFIX)


def test_crash_while_writing_digits_leaves_no_folder(tmp_path, monkeypatch):
    def crash_after_first_file(root):
        staging = Path(root)
        staging.mkdir(parents=True)
        (staging / "digits_split_train_x.h5").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "write_digits", crash_after_first_file)
    target = tmp_path / "digits"
    with pytest.raises(KeyboardInterrupt):
        ensure_digits(target)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_ensure_digits_reuses_a_copy_another_process_finished_first(tmp_path, monkeypatch):
    target = tmp_path / "digits"
    real_write = data.write_digits

    def write_while_another_process_wins(root):
        real_write(root)
        monkeypatch.setattr(data, "write_digits", real_write)
        ensure_digits(target)  # the rival publishes first
        return root

    monkeypatch.setattr(data, "write_digits", write_while_another_process_wins)
    assert ensure_digits(target) == target
    assert len(HDF5ImageDataset(target, "test", prefix=DIGITS_PREFIX)) == 270
    assert [p.name for p in tmp_path.iterdir()] == ["digits"]


def test_ensure_digits_refuses_a_foreign_nonempty_folder(tmp_path):
    target = tmp_path / "digits"
    target.mkdir()
    (target / "digits_split_train_x.h5").write_bytes(b"half")
    with pytest.raises(DataFileError, match="not hold a complete digits dataset"):
        ensure_digits(target)
