"""Real INT8 against its simulated twin, and what the 7-bit activation range costs, per architecture.

    python benchmarks/bench_int8_agreement.py                       # checkpoints of results/default
    python benchmarks/bench_int8_agreement.py --set results_dir=/tmp/r --set runtime.threads=1

Needs the baseline phase of the config to have run. For each architecture: static PTQ w8a8 with
the config's first calibration size (random draw, seed 0), built with the range this CPU's kernels
take (``activation_range='auto'``), and its twin; prints the agreement of their test predictions
(target >= 0.99 on every CPU) and the test accuracy of FP32, of real INT8 and of the simulated
model at each forced range, so the accuracy cost of 'reduced' against 'full' can be read on any
CPU (simulation does not depend on the ISA). Names the CPU it ran on.
"""
from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import experiment  # noqa: E402
from config import load_config  # noqa: E402
from evaluation import torch_threads  # noqa: E402
from quantization import apply_quantization, kernel_capability  # noqa: E402


def accuracy(table) -> float:
    return float((table["y_true"] == table["y_pred"]).mean())


def measure(ctx: experiment.Context, arch: str, size: int) -> dict:
    model = ctx.fp32_model(arch)
    calibration = ctx.calibration_loader("random", size, seed=ctx.cfg.seed)
    options = dict(calibration_data=calibration, seed=ctx.cfg.seed, progress=False)
    real = ctx.predict(apply_quantization(model, "ptq_static", **options))
    twin = ctx.predict(apply_quantization(model, "ptq_static", execution="simulated", **options))
    row = {"arch": arch, "agreement": float((real["y_pred"] == twin["y_pred"]).mean()),
           "fp32": accuracy(ctx.fp32_predictions(arch)), "real_int8": accuracy(real)}
    for forced in ("full", "reduced"):
        simulated = apply_quantization(model, "ptq_static", execution="simulated",
                                       activation_range=forced, **options)
        row[f"sim_{forced}"] = accuracy(ctx.predict(simulated))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/config.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    cfg = load_config(args.config, [*args.set, "runtime.progress=false"])
    ctx = experiment.Context(cfg)
    kernels = kernel_capability()
    print(f"CPU: {kernels['cpu_capability']} (VNNI: {kernels['vnni']}); activation_range 'auto' = "
          f"{'full' if kernels['vnni'] else 'reduced'}; run {cfg.run_dir}")
    print(f"{'arch':16s} {'agreement':>9s} {'fp32':>7s} {'real':>7s} {'sim full':>9s} "
          f"{'sim reduced':>11s}")
    with torch_threads(cfg.runtime.threads):
        for arch in cfg.models.architectures:
            row = measure(ctx, arch, cfg.quantization.calibration_sizes[0])
            print(f"{arch:16s} {row['agreement']:9.4f} {row['fp32']:7.4f} {row['real_int8']:7.4f} "
                  f"{row['sim_full']:9.4f} {row['sim_reduced']:11.4f}", flush=True)


if __name__ == "__main__":
    main()
