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


TINY_SIZE = 16
"""Image size of ``separable_images`` (test modules that use it spell it ``SIZE = 16``)."""


@pytest.fixture(scope="module")
def separable_images():
    """192 noisy 16 px images whose label shifts every pixel: a task tiny_cnn learns in 3 epochs.
    A ``TensorDataset`` of (image, label, group 0, sample id)."""
    import torch
    from torch.utils.data import TensorDataset

    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (192,), generator=generator)
    images = torch.randn(192, 3, TINY_SIZE, TINY_SIZE, generator=generator) * 0.5
    images += (labels.float() * 2 - 1).view(-1, 1, 1, 1) * 0.5
    return TensorDataset(images, labels, torch.zeros(192, dtype=torch.long), torch.arange(192))


@pytest.fixture(scope="module")
def separable_cnn(separable_images):
    """tiny_cnn trained 3 epochs on ``separable_images``, in eval mode."""
    import torch
    from torch.utils.data import DataLoader

    from models import build_model
    from training import fit

    torch.manual_seed(0)
    model = build_model("tiny_cnn", image_size=TINY_SIZE)
    loader = DataLoader(separable_images, batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    fit(model, loader, epochs=3, lr=1e-2, device="cpu", progress=False)
    return model.eval()


@pytest.fixture
def static_w8a8_run(tmp_path):
    """``run(backends, *sets)``: the smoke config's baseline and a static w8a8 quantization
    phase with those ``runtime.backends`` in ``tmp_path``; returns the run folder, its
    ``quantization_results.csv`` indexed by ``execution`` and the CLI arguments (no phase)."""
    def run(backends: str, *sets: str):
        import pandas as pd

        import main

        args = ["--config", "configs/smoke.yaml", "--set", f"results_dir={tmp_path / 'results'}",
                "--set", f"data.root={tmp_path / 'data'}",
                "--set", "quantization.methods=[{method: ptq_static, bits: [w8a8]}]",
                "--set", f"runtime.backends={backends}", "--set", "runtime.latency_repeats=2",
                "--set", "runtime.latency_batch_sizes=[1]"]
        for value in sets:
            args += ["--set", value]
        assert main.main([*args, "--phase", "baseline"]) == 0
        assert main.main([*args, "--phase", "quantization"]) == 0
        run_dir = tmp_path / "results" / "smoke"
        table = pd.read_csv(run_dir / "quantization_results.csv").set_index("execution")
        return run_dir, table, args
    return run
