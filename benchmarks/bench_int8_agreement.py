"""Real INT8 against its simulated twin, and what the 7-bit activation range costs, per
architecture.

    python -m benchmarks.bench_int8_agreement                       # checkpoints of results/default
    python -m benchmarks.bench_int8_agreement --set results_dir=/tmp/r --set runtime.threads=1

    python -m benchmarks.bench_int8_agreement --fresh                # no run needed

Needs the baseline phase of the config to have run, except with ``--fresh``: torchvision models
outside the registry (resnet18, mobilenet_v2, efficientnet_b0; 10 classes, 64 px) with fresh
weights and BatchNorm statistics taken from the data, as a user's new model would have;
calibration on 128 inputs, comparison on 128 others, at each forced activation range, and the
ONNX Runtime and OpenVINO INT8 models of the same calibration against the twin (their
quantizers differ: figures, no target). For each architecture: static PTQ w8a8 with
the config's first calibration size (random draw, seed 0), built with the range this CPU's kernels
take (``activation_range='auto'``), and its twin; prints the agreement of their test predictions
(target >= 0.99 on every CPU) and the test accuracy of FP32, of real INT8 and of the simulated
model at each forced range, so the accuracy cost of 'reduced' against 'full' can be read on any
CPU (simulation does not depend on the ISA). Names the CPU it ran on.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import warnings

import torch
import torchvision
from torch import nn

import experiment
from config import load_config
from evaluation import torch_threads
from quantization import apply_quantization, kernel_capability


def accuracy(table) -> float:
    return float((table["y_true"] == table["y_pred"]).mean())


def measure(ctx: experiment.Context, arch: str, size: int) -> dict:
    model = ctx.baselines.fp32_model(arch)
    calibration = ctx.calibration_loader("random", size, seed=ctx.cfg.seed)
    options = dict(calibration_data=calibration, seed=ctx.cfg.seed, progress=False)
    real = ctx.predict(apply_quantization(model, "ptq_static", **options))
    twin = ctx.predict(apply_quantization(model, "ptq_static", execution="simulated", **options))
    row = {"arch": arch, "agreement": float((real["y_pred"] == twin["y_pred"]).mean()),
           "fp32": accuracy(ctx.baselines.predictions(arch)), "real_int8": accuracy(real)}
    for forced in ("full", "reduced"):
        simulated = apply_quantization(model, "ptq_static", execution="simulated",
                                       activation_range=forced, **options)
        row[f"sim_{forced}"] = accuracy(ctx.predict(simulated))
    return row


FRESH_MODELS = ("resnet18", "mobilenet_v2", "efficientnet_b0")


def fresh_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Smooth random images (low-resolution noise upsampled, plus fine noise), normalized."""
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, max(size // 8, 1), max(size // 8, 1), generator=generator)
    images = nn.functional.interpolate(low, size=(size, size), mode="bilinear",
                                       align_corners=False)
    return (images + 0.1 * torch.randn(n, 3, size, size, generator=generator) - 0.45) / 0.25


@torch.no_grad()
def fresh_model(name: str, size: int = 64, seed: int = 0, **options) -> nn.Module:
    """A torchvision model with 10 classes, fresh weights and BatchNorm running statistics taken
    from 256 images (cumulative averages), in eval mode."""
    torch.manual_seed(seed)
    return fresh_statistics(getattr(torchvision.models, name)(num_classes=10, **options), size,
                            seed)


@torch.no_grad()
def fresh_statistics(model: nn.Module, size: int = 64, seed: int = 0) -> nn.Module:
    """``model`` with BatchNorm running statistics taken from 256 images (cumulative averages),
    in eval mode: a fresh-weight model as a user's new one would have (any model, e.g. timm's)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    for chunk in fresh_images(256, size, seed + 1).split(64):
        model(chunk)
    return model.eval()


def compare(model_a: nn.Module, model_b: nn.Module, images: torch.Tensor) -> tuple[float, float]:
    """(argmax agreement, max |a - b| / std of b's logits)."""
    with torch.no_grad():
        a, b = model_a(images), model_b(images)
    return (float((a.argmax(1) == b.argmax(1)).float().mean()),
            float((a - b).abs().max() / b.std()))


def measure_fresh(size: int = 64) -> None:
    import runtimes
    calibration, test = fresh_images(128, size, 2), fresh_images(128, size, 3)
    loader = list(calibration.split(32))
    names = runtimes.available_runtimes()
    print(f"fresh torchvision models, {size} px; agreement = argmax agreement with the twin, "
          "diff = max |logit - twin logit| / std of the twin's logits")
    print(f"{'model':16s} {'range':8s} {'real agreement':>14s} {'diff':>6s}"
          + "".join(f" {name + ' agr.':>17s} {'diff':>6s}" for name in names))
    for name in FRESH_MODELS:
        model = fresh_model(name, size)
        for forced in ("full", "reduced"):
            options = dict(calibration_data=loader, bits="w8a8", activation_range=forced)
            real = apply_quantization(model, "ptq_static", **options)
            twin = apply_quantization(model, "ptq_static", execution="simulated", **options)
            row = f"{name:16s} {forced:8s} " + "{:14.4f} {:6.3f}".format(*compare(real, twin, test))
            if forced == "full":  # the runtimes choose their own ranges
                for runtime in names:
                    with tempfile.TemporaryDirectory() as folder:
                        other = runtimes.quantize_with_runtime(runtime, model, loader, size,
                                                               folder)
                        row += " {:17.4f} {:6.3f}".format(*compare(other, twin, test))
            print(row, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/config.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--fresh", action="store_true",
                        help="fresh-weight torchvision models instead of a run's checkpoints")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    if args.fresh:
        kernels = kernel_capability()
        print(f"CPU: {kernels['cpu_capability']} (VNNI: {kernels['vnni']})")
        with torch_threads(1):
            measure_fresh()
        return
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
