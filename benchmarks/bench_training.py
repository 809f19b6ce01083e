"""Cost of each architecture on this machine: size, training throughput, FP32 latency.

Informs the default config (epochs / batch size per architecture). Run from the repo root:

    python benchmarks/bench_training.py                   # the five study models at 32 px
    python benchmarks/bench_training.py --sizes 32 64 --archs mobilenet_v2 vit_small

Training throughput is measured with ``training.fit`` itself on random images (one untimed
warm-up step first); latency is the faster of the default and channels_last layouts.
Numbers are only meaningful on a quiet machine: the script prints the load average and warns.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation import fp32_reference_latency, torch_threads  # noqa: E402
from models import build_model, count_parameters, fp32_size_mib  # noqa: E402
from training import fit  # noqa: E402

STUDY_ARCHS = ["resnet50", "mobilenet_v2", "efficientnet_b0", "squeezenet1_1", "vit_small"]


def random_batches(n_batches: int, batch_size: int, image_size: int) -> list:
    """Contract batches ``(images, targets, group_codes, sample_ids)`` of random data."""
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(batch_size, 3, image_size, image_size, generator=generator),
             torch.randint(0, 2, (batch_size,), generator=generator),
             torch.zeros(batch_size, dtype=torch.long),
             [f"{b}_{i}" for i in range(batch_size)]) for b in range(n_batches)]


def train_images_per_second(model, image_size: int, batch_size: int, steps: int) -> float:
    batches = random_batches(steps, batch_size, image_size)
    fit(model, batches[:1], epochs=1, lr=1e-3, device="cpu", progress=False)  # warm-up
    start = time.perf_counter()
    fit(model, batches, epochs=1, lr=1e-3, device="cpu", progress=False)
    return steps * batch_size / (time.perf_counter() - start)


def bench(arch: str, image_size: int, args) -> dict:
    model = build_model(arch, image_size=image_size)
    throughput = train_images_per_second(model, image_size, args.batch_size, args.steps)
    b1, layout1 = fp32_reference_latency(model, image_size, 1, threads=args.threads)
    bn, layout_n = fp32_reference_latency(model, image_size, args.batch_size,
                                          threads=args.threads, warmup=2, repeats=5)
    return {"arch": arch, "px": image_size, "params_M": count_parameters(model) / 1e6,
            "fp32_MiB": fp32_size_mib(model), "train_img/s": throughput,
            "epoch_s": args.train_images / throughput, "lat_b1_ms": b1, "layout_b1": layout1,
            f"lat_b{args.batch_size}_ms": bn, f"layout_b{args.batch_size}": layout_n}


def print_table(rows: list[dict]) -> None:
    columns = list(rows[0])
    cells = [[f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c]) for c in columns]
             for row in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for line in cells:
        print("  ".join(v.rjust(w) for v, w in zip(line, widths)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=STUDY_ARCHS)
    parser.add_argument("--sizes", nargs="+", type=int, default=[32])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-images", type=int, default=5600,
                        help="training-set size for the seconds-per-epoch estimate")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {args.threads} threads (OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', 'default')}, load average {load:.1f}), batch "
          f"{args.batch_size}, {args.steps} timed steps; epoch_s = {args.train_images} images / "
          "throughput")
    if load > 1 + (os.cpu_count() or 1) - args.threads:
        print("WARNING: other jobs share the CPU; with spinning OpenMP threads steps can be "
              "10-20x slower. Rerun on a quiet machine, or with OMP_WAIT_POLICY=PASSIVE (robust "
              "under load, slower when idle).")
    with torch_threads(args.threads):
        print_table([bench(arch, size, args) for size in args.sizes for arch in args.archs])


if __name__ == "__main__":
    main()
