"""Shared fixtures for the compress tests: tiny seeded DINOv3 models with shaped spectra and inputs."""

import pytest
import torch
from tiny_vit import make_classifier, make_model


@pytest.fixture(autouse=True)
def one_thread():
    """Run each test on one intra-op thread: tiny models gain nothing from more, and on shared
    cores multi-threaded LAPACK calls spin-wait (seconds instead of milliseconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def model():
    return make_model()


@pytest.fixture
def classifier():
    return make_classifier()


@pytest.fixture
def pixels():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def calibration_batches():
    generator = torch.Generator().manual_seed(2)
    return [torch.randn(4, 3, 32, 32, generator=generator) for _ in range(2)]
