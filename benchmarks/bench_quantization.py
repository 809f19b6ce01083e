"""Benchmark: every runtime's FP32 and INT8 latency on this CPU, each INT8 against the strongest
FP32, and the project's fastest torch INT8 against the best peer INT8.

    python -m benchmarks.bench_quantization                          # five archs, 224 and 32 px
    python -m benchmarks.bench_quantization --archs resnet50 mobilenet_v2 --sizes 224

Variants (all on ``--threads`` threads, random weights: latency does not depend on their values):
FP32 as torch eager (contiguous and channels_last), torch traced and frozen, ONNX Runtime,
OpenVINO and ``torch.compile`` with Inductor freezing (``torch_pt2e``'s FP32); INT8 as the
project's FX torch model (eager, and traced and frozen when exact), ONNX Runtime static QDQ,
OpenVINO + NNCF and PT2E compiled by Inductor (the ``runtimes`` backends). Compiled variants
compile once per batch size in the process, during warm-up; their compile seconds are printed
apart from latency. They are measured in
interleaved rounds and the best round's median counts, so a burst of load from another process
hits every variant alike; the ratios printed come from one run. Prints the CPU it ran on.
Targets: every INT8 faster than the strongest FP32 (compiled FP32 among the candidates); the
project's fastest FX torch INT8 within 10% of the best peer INT8 (``torch/peer`` <= 1.10, peers:
ONNX Runtime and OpenVINO), and the project's fastest INT8 of any backend (``project/peer``) too.
``PT2E/peer`` and ``PT2E/FX`` put PT2E beside the best peer and the fastest FX INT8.
Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from pathlib import Path

# Threads that spin at barriers lose whole scheduler slices on a shared CPU.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import runtimes  # noqa: E402
from evaluation import measure_latency  # noqa: E402
from models import build_model  # noqa: E402
from quantization import apply_quantization, kernel_capability, traced_and_frozen  # noqa: E402

ARCHS = ("resnet50", "mobilenet_v2", "efficientnet_b0", "squeezenet1_1", "vit_small")


def calibration_images(size: int, n: int) -> list[torch.Tensor]:
    return [torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))]


def frozen_fp32(model: torch.nn.Module, size: int) -> torch.jit.ScriptModule:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.freeze(torch.jit.trace(model, torch.randn(2, 3, size, size)).eval())


def variants(arch: str, size: int, args, folder: Path) -> tuple[dict, dict]:
    """({FP32 name: (model, channels_last)}, {INT8 name: (model, channels_last)})."""
    model = build_model(arch, image_size=size).eval()
    calibration = calibration_images(size, args.calib_images)
    fp32 = {"torch": (model, False), "torch_cl": (model, True),
            "torch_frozen": (frozen_fp32(model, size), False)}
    int8_model = apply_quantization(model, "ptq_static", calibration_data=calibration,
                                    observer="minmax", threads=args.threads, progress=False)
    int8 = {"torch": (int8_model, False)}
    frozen = traced_and_frozen(int8_model, size)
    if frozen is not None:
        int8["torch_frozen"] = (frozen, False)
    for name in args.runtimes:
        fp32[name] = (runtimes.fp32_runtime_model(name, model, size, folder / name,
                                                  threads=args.threads), False)
        int8[name] = (runtimes.quantize_with_runtime(name, model, calibration, size,
                                                     folder / name, threads=args.threads), False)
    return fp32, int8


def interleaved(models: dict, size: int, batch: int, args) -> dict[str, float]:
    best = dict.fromkeys(models, float("inf"))
    for _ in range(args.rounds):
        for name, (model, channels_last) in models.items():
            best[name] = min(best[name], measure_latency(
                model, size, batch, threads=args.threads, warmup=args.warmup,
                repeats=args.repeats, channels_last=channels_last))
    return best


FX_FORMS = ("torch", "torch_frozen")  # the project's FX INT8: eager, traced and frozen
PT2E = "torch_pt2e"  # torch INT8 by PT2E + Inductor: the project's too, not a peer


def report(arch: str, size: int, batch: int, fp32: dict, int8: dict, peers: list[str]) -> None:
    strongest = min(fp32, key=fp32.get)
    torch_best = min(ms for name, ms in int8.items() if name in FX_FORMS)
    print(f"\n{arch} {size} px, batch {batch}: strongest FP32 = {strongest} "
          f"{fp32[strongest]:.2f} ms")
    print("  FP32 ms: " + ", ".join(f"{name} {ms:.2f}" for name, ms in fp32.items()))
    print("  INT8 ms (speedup vs strongest FP32): " + ", ".join(
        f"{name} {ms:.2f} ({fp32[strongest] / ms:.2f}x)" for name, ms in int8.items()))
    peers = [name for name in peers if name != PT2E]
    if peers:
        best_peer = min(peers, key=int8.get)
        project = min(ms for name, ms in int8.items() if name not in peers)  # FX or PT2E
        print(f"  torch/peer = {torch_best / int8[best_peer]:.2f} (fastest FX INT8 / "
              f"{best_peer} INT8); project/peer = {project / int8[best_peer]:.2f}")
        if PT2E in int8:
            print(f"  PT2E/peer = {int8[PT2E] / int8[best_peer]:.2f}; PT2E/FX = "
                  f"{int8[PT2E] / torch_best:.2f} (fastest FX INT8)")


def compile_seconds(arch: str, size: int, fp32: dict, int8: dict) -> None:
    """The seconds each compiled variant spent compiling (every batch shape it saw), apart
    from its latency."""
    spent = {f"{kind}:{name}": model.compile_s for kind, models in (("fp32", fp32), ("int8", int8))
             for name, (model, _) in models.items() if hasattr(model, "compile_s")}
    if spent:
        print(f"  compile s ({arch} {size} px, all batch sizes): " + ", ".join(
            f"{name} {seconds:.1f}" for name, seconds in spent.items()))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--sizes", nargs="+", type=int, default=[224, 32])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds; the best round's median counts")
    parser.add_argument("--calib-images", type=int, default=16)
    parser.add_argument("--runtimes", nargs="*", default=runtimes.available_runtimes(),
                        choices=sorted(runtimes.RUNTIMES))
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    kernels = kernel_capability()
    print(f"CPU: {kernels['cpu_capability']} (VNNI: {kernels['vnni']}), torch {torch.__version__}, "
          f"{args.threads} threads, best of {args.rounds} interleaved rounds of the median of "
          f"{args.repeats} runs; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as folder:
        for arch in args.archs:
            for size in args.sizes:
                fp32, int8 = variants(arch, size, args, Path(folder) / arch / str(size))
                for batch in args.batch_sizes:
                    timings = interleaved({**{f"fp32:{k}": v for k, v in fp32.items()},
                                           **{f"int8:{k}": v for k, v in int8.items()}},
                                          size, batch, args)
                    split = {kind: {name.split(":", 1)[1]: ms for name, ms in timings.items()
                                    if name.startswith(kind)} for kind in ("fp32", "int8")}
                    report(arch, size, batch, split["fp32"], split["int8"], args.runtimes)
                compile_seconds(arch, size, fp32, int8)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
