"""PT2E real INT8 (torchao, x86 Inductor quantizer, ``torch.compile`` with freezing) against its
own twin and against the project's FX twin, beside the FX real INT8, per architecture of a run.

    python -m benchmarks.bench_pt2e_agreement --config results/default/config.yaml
    python -m benchmarks.bench_pt2e_agreement --config <run>/config.yaml --ranges full reduced

Needs the run's baseline (checkpoints and FP32 predictions). For each architecture: static PTQ
w8a8 on the config's first calibration size (random draw, the run's seed), by FX (``real_int8``
and its ``simulated`` twin) and by PT2E at each range asked (``auto`` by default: the one this
CPU's kernels take); prints the agreement of the test predictions of PT2E compiled with its twin
(the converted program run without Inductor), with the FX twin, and of FX real INT8 with the FX
twin, the accuracies, and the PT2E build and compile seconds. Names the CPU and its flags.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path

import experiment
import pt2e
from config import load_config
from evaluation import torch_threads
from quantization import apply_quantization, kernel_capability


def agreement(a, b) -> float:
    return float((a["y_pred"].values == b["y_pred"].values).mean())


def accuracy(table) -> float:
    return float((table["y_true"] == table["y_pred"]).mean())


def measure(ctx: experiment.Context, arch: str, ranges, folder: Path) -> list[dict]:
    model = ctx.baselines.fp32_model(arch)
    calibration = ctx.calibration_loader("random", ctx.cfg.quantization.calibration_sizes[0],
                                         seed=ctx.cfg.seed)
    options = dict(calibration_data=calibration, seed=ctx.cfg.seed, progress=False)
    fx_real = ctx.predict(apply_quantization(model, "ptq_static", **options))
    fx_twin = ctx.predict(apply_quantization(model, "ptq_static", execution="simulated",
                                             **options))
    rows = []
    for activation_range in ranges:
        row = {"arch": arch, "range": pt2e.resolve_range(activation_range),
               "fx_real_vs_fx_twin": agreement(fx_real, fx_twin),
               "fp32_acc": accuracy(ctx.baselines.predictions(arch)),
               "fx_real_acc": accuracy(fx_real)}
        try:
            start = time.perf_counter()
            compiled = pt2e.pt2e_int8(model, calibration, ctx.cfg.data.image_size,
                                      folder / arch / activation_range, ctx.cfg.runtime.threads,
                                      activation_range=activation_range)
            build_s = time.perf_counter() - start
            real, twin = ctx.predict(compiled), ctx.predict(compiled.twin)
        except Exception as error:  # noqa: BLE001 - recorded, the next architecture goes on
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            rows.append(row)
            continue
        row.update({"pt2e_vs_own_twin": agreement(real, twin),
                    "pt2e_vs_fx_twin": agreement(real, fx_twin),
                    "pt2e_twin_vs_fx_twin": agreement(twin, fx_twin),
                    "pt2e_acc": accuracy(real), "build_s": build_s,
                    "compile_s": compiled.compile_s, "size_mib": compiled.size_mib()})
        rows.append(row)
    return rows


COLUMNS = ("arch", "range", "pt2e_vs_own_twin", "pt2e_vs_fx_twin", "pt2e_twin_vs_fx_twin",
           "fx_real_vs_fx_twin", "fp32_acc", "pt2e_acc", "fx_real_acc", "build_s", "compile_s",
           "size_mib")


def show(row: dict) -> str:
    cells = []
    for key in COLUMNS:
        value = row.get(key, "")
        cells.append(f"{value:.4f}" if isinstance(value, float) and key.endswith(
            ("twin", "acc")) else f"{value:.1f}" if isinstance(value, float) else str(value))
    return "| " + " | ".join(cells) + " |" + (f" {row['error']}" if "error" in row else "")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/config.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--archs", nargs="*", help="default: the config's architectures")
    parser.add_argument("--ranges", nargs="+", default=["auto"], choices=pt2e.RANGES)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    cfg = load_config(args.config, [*args.set, "runtime.progress=false"])
    ctx = experiment.Context(cfg)
    kernels = kernel_capability()
    print(f"CPU: {kernels['cpu_capability']} (torch VNNI: {kernels['vnni']}; /proc/cpuinfo "
          f"{pt2e.cpu_flags()}); run {ctx.run_dir}; test split {len(ctx.splits.test)} images")
    print("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS), flush=True)
    with torch_threads(cfg.runtime.threads), tempfile.TemporaryDirectory() as folder:
        for arch in args.archs or cfg.models.architectures:
            for row in measure(ctx, arch, args.ranges, Path(folder)):
                print(show(row), flush=True)


if __name__ == "__main__":
    main()
