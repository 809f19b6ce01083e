"""Benchmark: FP32 (default and channels_last layouts) vs real INT8 latency, sizes and PTQ
calibration time, for the five study architectures.

    python benchmarks/bench_quantization.py                       # all five, 224 and 32 px
    python benchmarks/bench_quantization.py --archs resnet50 --sizes 224 --repeats 5

Prints numbers and asserts nothing. Weights are random (no downloads): latency and size do not
depend on their values. Target: real INT8 ResNet-50 at least 3x faster than the faster FP32
layout at 224 px, batch 1, 2 threads. Run it on an otherwise idle machine; a shared CPU inflates
and scatters every number.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# On a CPU shared with other jobs, OpenMP threads that spin at barriers lose whole scheduler
# slices and turn milliseconds into hundreds; passive waiting keeps the comparison meaningful.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation import measure_latency, model_size_mib  # noqa: E402
from models import build_model  # noqa: E402
from quantization import apply_quantization  # noqa: E402

ARCHS = ("resnet50", "mobilenet_v2", "efficientnet_b0", "squeezenet1_1", "vit_small")
CALIBRATION_SIZE = 32  # calibration time is reported at this image size


def random_images(n: int, size: int, batch_size: int = 64) -> DataLoader:
    images = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(images), batch_size=batch_size)


def interleaved_latency(models: dict, size: int, batch: int, args) -> dict[str, float]:
    """Median ms of each model, measured in alternating rounds; the best round counts, so a
    burst of load from other processes hits every variant alike and is not mistaken for speed."""
    best = dict.fromkeys(models, float("inf"))
    for _ in range(args.rounds):
        for name, (model, channels_last) in models.items():
            ms = measure_latency(model, size, batch, threads=args.threads, warmup=args.warmup,
                                 repeats=args.repeats, channels_last=channels_last)
            best[name] = min(best[name], ms)
    return best


def bench(arch: str, size: int, args) -> list[dict]:
    """One row per batch size for ``arch`` at ``size`` px."""
    model = build_model(arch, image_size=size).eval()
    if size == CALIBRATION_SIZE:
        calibration = dict(calibration_data=random_images(args.calib_images, size))
    else:  # the observer does not change the converted model's speed; keep this part cheap
        calibration = dict(calibration_data=random_images(8, size), observer="minmax")
    int8 = apply_quantization(model, "ptq_static", threads=args.threads, progress=False,
                              **calibration)
    info = int8.quant_info
    variants = {"fp32_ms": (model, False), "fp32_cl_ms": (model, True), "int8_ms": (int8, False)}
    rows = []
    for batch in args.batch_sizes:
        ms = interleaved_latency(variants, size, batch, args)
        rows.append({"arch": arch, "px": size, "batch": batch, **ms,
                     "speedup": min(ms["fp32_ms"], ms["fp32_cl_ms"]) / ms["int8_ms"],
                     "fp32_mib": model_size_mib(model), "int8_mib": info["size_mib"],
                     "execution": info["execution"],
                     "calib_s": info["cost_s"] if size == CALIBRATION_SIZE else float("nan"),
                     "float_ops": len(info["float_ops"] or [])})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--sizes", nargs="+", type=int, default=[224, CALIBRATION_SIZE])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternating measurement rounds; the best round's median counts")
    parser.add_argument("--calib-images", type=int, default=512,
                        help=f"calibration set size at {CALIBRATION_SIZE} px")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, engine {torch.backends.quantized.engine}, "
          f"{args.threads} threads, best of {args.rounds} rounds of the median of "
          f"{args.repeats} runs after {args.warmup} warm-up runs; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, "
          f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")
    header = ("arch", "px", "batch", "fp32_ms", "fp32_cl_ms", "int8_ms", "speedup", "fp32_mib",
              "int8_mib", "execution", "calib_s", "float_ops")
    print("  ".join(f"{name:>10}" for name in header), flush=True)
    for arch in args.archs:
        for size in args.sizes:
            for row in bench(arch, size, args):
                print("  ".join(f"{row[name]:>10.2f}" if isinstance(row[name], float)
                                else f"{row[name]:>10}" for name in header), flush=True)
    print("speedup = faster FP32 layout / INT8; calib_s = PTQ (histogram observers) on "
          f"{args.calib_images} images at {CALIBRATION_SIZE} px, prepare and convert included; "
          f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
