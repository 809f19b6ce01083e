"""Shared fixtures: a tiny synthetic CelebA-format dataset generated once per test session."""

import pytest

from datasets import load_dataset


@pytest.fixture(scope="session")
def tiny_synthetic_splits(tmp_path_factory):
    """``DatasetSplits`` of ~400 synthetic 32 px faces (Smiling; gender x age groups)."""
    root = tmp_path_factory.mktemp("data")
    return load_dataset("synthetic", root, image_size=32, seed=0,
                        synthetic={"n_images": 400, "image_size": 32})
