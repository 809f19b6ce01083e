"""Shared fixtures: one torch thread, and a tiny synthetic CelebA-format dataset per session.

torch is imported only by the fixtures that need it, so the tests of the torch-free modules
(tests/test_torch_free.py lists them) run where torch cannot be imported. A test of those files
that needs torch anyway carries ``@pytest.mark.torch`` (the markers are registered in
pyproject.toml).
"""
import sys

import pytest


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models gain nothing from threads, and one thread stays fast when jobs share the CPU."""
    if sys.modules.get("torch") is None:  # no collected test imported torch: nothing to limit
        yield
        return
    from evaluation import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def tiny_synthetic_splits(tmp_path_factory):
    """``DatasetSplits`` of ~400 synthetic 32 px faces (Smiling; gender x age groups)."""
    from datasets import load_dataset

    root = tmp_path_factory.mktemp("data")
    return load_dataset("synthetic", root, image_size=32, seed=0,
                        synthetic={"n_images": 400, "image_size": 32})
