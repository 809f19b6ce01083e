"""Benchmark the synthetic CelebA-format set: generation speed, loading speed, learnability.

    python -m benchmarks.bench_synthetic                      # generation + loading speed
    python -m benchmarks.bench_synthetic --learnability       # + a small CNN trained from scratch

Prints measured numbers only; nothing is compared against a target here.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from datasets import load_dataset, make_loader
from synthetic import generate_synthetic_celeba


def bench_generation(folder: Path, n_images: int, image_size: int) -> None:
    start = time.perf_counter()
    generate_synthetic_celeba(folder, n_images=n_images, image_size=image_size)
    seconds = time.perf_counter() - start
    print(f"generate: {n_images} images at {image_size} px in {seconds:.2f} s "
          f"= {n_images / seconds:.0f} images/s")


def bench_file_creation(folder: Path, n_files: int) -> None:
    """The file system's own ceiling: creating as many small files as there are images."""
    folder.mkdir(parents=True)
    payload = bytes(1500)  # about the size of one 64 px JPEG
    start = time.perf_counter()
    for i in range(n_files):
        (folder / f"{i:06d}.jpg").write_bytes(payload)
    seconds = time.perf_counter() - start
    print(f"file-system baseline: {n_files} small files written in {seconds:.2f} s "
          f"= {n_files / seconds:.0f} files/s")


def bench_loading(root: Path, n_images: int, image_size: int, resize_to: int) -> None:
    for cache_gib, label in ((2.0, "cached"), (0.0, "uncached")):
        splits = load_dataset("synthetic", root, image_size=resize_to, cache_limit_gib=cache_gib,
                              synthetic={"n_images": n_images, "image_size": image_size})
        for epoch in (1, 2):
            start = time.perf_counter()
            count = sum(len(batch[0]) for batch in make_loader(splits.train, 256))
            seconds = time.perf_counter() - start
            print(f"load ({label}, epoch {epoch}): {count} images -> {resize_to} px in "
                  f"{seconds:.2f} s = {count / seconds:.0f} images/s")


def small_cnn() -> nn.Module:
    def block(c_in, c_out):
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out),
                             nn.ReLU(), nn.MaxPool2d(2))
    return nn.Sequential(block(3, 16), block(16, 32), block(32, 64),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 2))


def bench_learnability(root: Path, n_images: int, image_size: int, resize_to: int,
                       epochs: int, lr: float) -> None:
    torch.manual_seed(0)
    splits = load_dataset("synthetic", root, image_size=resize_to,
                          synthetic={"n_images": n_images, "image_size": image_size})
    model = small_cnn()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for images, targets, _, _ in make_loader(splits.train, 64, shuffle=True, seed=epoch):
            loss = nn.functional.cross_entropy(model(images), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    train_s = time.perf_counter() - start
    model.eval()
    correct, groups = [], []
    with torch.no_grad():
        for images, targets, group_codes, _ in make_loader(splits.test, 256):
            correct.append((model(images).argmax(1) == targets).numpy())
            groups.append(group_codes.numpy())
    correct, groups = np.concatenate(correct), np.concatenate(groups)
    majority = max(splits.test.targets.mean(), 1 - splits.test.targets.mean())
    print(f"learnability: {len(splits.train)} train images at {resize_to} px, {epochs} epochs "
          f"({train_s:.0f} s): test accuracy {correct.mean():.3f} "
          f"(majority-class rate {majority:.3f}, n={len(correct)})")
    for code, group in enumerate(splits.test.group_names):
        members = groups == code
        print(f"  {group:13s} n={members.sum():4d} accuracy {correct[members].mean():.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--resize-to", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--learnability", action="store_true")
    parser.add_argument("--learn-images", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bench_file_creation(root / "baseline", args.n_images)
        bench_generation(root / "generated", args.n_images, args.image_size)
        bench_loading(root, args.n_images, args.image_size, args.resize_to)
        if args.learnability:
            bench_learnability(root, args.learn_images, args.image_size, args.resize_to,
                               args.epochs, args.lr)


if __name__ == "__main__":
    main()
