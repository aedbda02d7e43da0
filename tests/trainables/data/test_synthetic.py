"""The generated PCam-layout set: PCam's files and shapes, balanced, learnable, identical on every node."""

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from trainables.data.datasets import PCAM_PREFIX, HDF5ImageDataset, check_dataset, data_fingerprint
from trainables.data.synthetic import COUNTS, ensure_synthetic_pcam, synthetic_images


def test_written_in_pcams_layout_with_its_counts(tmp_path):
    root = ensure_synthetic_pcam(tmp_path / "s")
    assert check_dataset(root, PCAM_PREFIX) == COUNTS
    dataset = HDF5ImageDataset(root, "train", normalize=False)
    assert dataset.native_size == 96 and float(dataset.targets.float().mean()) == 0.5


def test_every_node_writes_the_same_data(tmp_path):
    a = ensure_synthetic_pcam(tmp_path / "a")
    b = ensure_synthetic_pcam(tmp_path / "b")
    assert data_fingerprint(a) == data_fingerprint(b)
    assert ensure_synthetic_pcam(a) == a  # a second call reuses the folder


def test_classes_differ_in_a_learnable_way():
    rng = np.random.default_rng(1)
    labels = np.arange(200) % 2
    images = synthetic_images(labels, rng).astype(np.float32)
    features = np.concatenate([images.mean(axis=(1, 2)), images.std(axis=(1, 2))], axis=1)
    model = LogisticRegression(max_iter=1000).fit(features[:100], labels[:100])
    assert roc_auc_score(labels[100:], model.predict_proba(features[100:])[:, 1]) > 0.95
