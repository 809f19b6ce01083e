"""Shared fixtures: one torch thread, and a tiny synthetic CelebA-format dataset per session."""

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "ray: starts a local Ray instance (deselect: -m 'not ray')")

from datasets import load_dataset
from evaluation import torch_threads


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models gain nothing from threads, and one thread stays fast when jobs share the CPU."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def tiny_synthetic_splits(tmp_path_factory):
    """``DatasetSplits`` of ~400 synthetic 32 px faces (Smiling; gender x age groups)."""
    root = tmp_path_factory.mktemp("data")
    return load_dataset("synthetic", root, image_size=32, seed=0,
                        synthetic={"n_images": 400, "image_size": 32})
