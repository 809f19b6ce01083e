"""Cost of each architecture on this machine: size, training throughput, FP32 latency.

Informs the default config (epochs / batch size per architecture). Run from the repo root:

    python -m benchmarks.bench_training                   # the five study models at 32 px
    python -m benchmarks.bench_training --sizes 32 64 --archs mobilenet_v2 vit_small
    python -m benchmarks.bench_training --contended      # slowdown when a busy loop takes a core
    python -m benchmarks.bench_training --inference      # prediction time per eval batch size
    python -m benchmarks.bench_training --compile --archs squeezenet1_1   # torch.compile payback

Training throughput is measured with ``training.fit`` itself on random images (one untimed
warm-up step first); latency is the faster of the default and channels_last layouts.
Numbers are only meaningful on a quiet machine: the script prints the load average and warns.

``--contended`` times training steps of each OpenMP setting (``--variants``) in its own worker
process, idle and then with a busy loop pinned to core 0, interleaved over ``--rounds``, and
prints each setting's median seconds per step and its slowdown ratio (contended / idle).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from evaluation import fp32_reference_latency, torch_threads
from models import build_model, count_parameters, fp32_size_mib
from training import fit

STUDY_ARCHS = ["resnet50", "mobilenet_v2", "efficientnet_b0", "squeezenet1_1", "vit_small"]
# name -> (environment changes, None = unset; torch threads; extra worker flags)
VARIANTS = {
    "default": ({"OMP_WAIT_POLICY": None}, 2, []),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, 2, []),
    "active": ({"OMP_WAIT_POLICY": "ACTIVE"}, 2, []),
    "spin10k": ({"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "10000"}, 2, []),
    "1thread": ({"OMP_WAIT_POLICY": "PASSIVE"}, 1, []),
    "passive_cl": ({"OMP_WAIT_POLICY": "PASSIVE"}, 2, ["--channels-last"]),
    "default_cl": ({"OMP_WAIT_POLICY": None}, 2, ["--channels-last"]),
}
BUSY_LOOP = "import os; os.sched_setaffinity(0, {0})\nwhile True: pass"


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


def worker(args) -> None:
    """Serve timing requests on stdin: a line ``N`` runs N training steps, answers the seconds."""
    torch.set_num_threads(args.threads)
    model = build_model(args.worker, image_size=args.sizes[0])
    batches = random_batches(max(args.steps, 1), args.batch_size, args.sizes[0])
    fit(model, batches[:1], epochs=1, lr=1e-3, device="cpu", progress=False,
        channels_last=args.channels_last)  # warm-up
    print("ready", flush=True)
    for line in sys.stdin:
        start = time.perf_counter()
        fit(model, batches[:int(line)], epochs=1, lr=1e-3, device="cpu", progress=False,
            channels_last=args.channels_last)
        print(f"{(time.perf_counter() - start) / int(line):.4f}", flush=True)


def start_worker(arch: str, variant: str, args) -> subprocess.Popen:
    changes, threads, flags = VARIANTS[variant]
    env = {name: value for name, value in os.environ.items() if name not in changes}
    env.update({name: value for name, value in changes.items() if value is not None})
    command = [sys.executable, "-m", "benchmarks.bench_training", "--worker", arch, "--threads",
               str(threads), "--sizes", str(args.sizes[0]), "--batch-size", str(args.batch_size),
               "--steps", str(args.steps), *flags]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               env=env, cwd=Path(__file__).resolve().parents[1])
    if process.stdout.readline().strip() != "ready":
        raise RuntimeError(f"worker {arch}/{variant} failed to start")
    return process


def seconds_per_step(process: subprocess.Popen, steps: int) -> float:
    process.stdin.write(f"{steps}\n")
    process.stdin.flush()
    return float(process.stdout.readline())


def contended(args) -> None:
    """Per architecture and variant: median s/step idle and with core 0 busy, and the ratio."""
    print(f"torch {torch.__version__}, batch {args.batch_size}, {args.sizes[0]} px, "
          f"{args.steps} steps per timing, {args.rounds} interleaved rounds; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores before the run")
    rows = []
    for arch in args.archs:
        workers = {variant: start_worker(arch, variant, args) for variant in args.variants}
        idle, busy = {v: [] for v in workers}, {v: [] for v in workers}
        for _ in range(args.rounds):
            for variant, process in workers.items():
                idle[variant].append(seconds_per_step(process, args.steps))
            loop = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
            try:
                time.sleep(0.2)
                for variant, process in workers.items():
                    busy[variant].append(seconds_per_step(process, args.steps))
            finally:
                loop.kill()
                loop.wait()
        for variant, process in workers.items():
            process.stdin.close()
            process.wait()
            idle_s, busy_s = statistics.median(idle[variant]), statistics.median(busy[variant])
            rows.append({"arch": arch, "variant": variant, "idle_s/step": idle_s,
                         "busy_s/step": busy_s, "slowdown": busy_s / idle_s,
                         "vs_default_idle": idle_s / statistics.median(idle[args.variants[0]])})
        print_table(rows[-len(workers):])
    print(f"load average {os.getloadavg()[0]:.1f} after the run; vs_default_idle compares each "
          f"variant's idle time with {args.variants[0]!r}")


def inference_seconds(model, images: torch.Tensor, batch_size: int, channels_last: bool) -> float:
    """Seconds to run ``images`` through ``model`` under inference_mode in batches."""
    if channels_last:
        model, images = (model.to(memory_format=torch.channels_last),
                         images.contiguous(memory_format=torch.channels_last))
    start = time.perf_counter()
    with torch.inference_mode():
        for chunk in images.split(batch_size):
            model(chunk).argmax(1).tolist()
    return time.perf_counter() - start


def inference(args) -> None:
    """Prediction over a test-set-sized random set at each batch size, interleaved; best of
    ``--rounds`` per setting, as a ratio to batch 64 contiguous."""
    images = torch.randn(args.test_images, 3, args.sizes[0], args.sizes[0],
                         generator=torch.Generator().manual_seed(0))
    settings = [(b, cl) for b in args.eval_batch_sizes for cl in (False, True)]
    print(f"{args.test_images} images at {args.sizes[0]} px, {torch.get_num_threads()} threads, "
          f"best of {args.rounds} rounds; load average {os.getloadavg()[0]:.1f}")
    for arch in args.archs:
        model = build_model(arch, image_size=args.sizes[0]).eval()
        inference_seconds(model, images[:args.eval_batch_sizes[0]], 64, False)  # warm-up
        best = dict.fromkeys(settings, float("inf"))
        for _ in range(args.rounds):
            for batch, channels_last in settings:
                best[batch, channels_last] = min(best[batch, channels_last], inference_seconds(
                    copy.deepcopy(model), images, batch, channels_last))
        reference = best[settings[0]]
        print_table([{"arch": arch, "batch": b, "layout": "channels_last" if cl else "contiguous",
                      "seconds": s, "vs_first": s / reference} for (b, cl), s in best.items()])
    print(f"load average {os.getloadavg()[0]:.1f} after the run")


def compiled(args) -> None:
    """torch.compile's one-off cost against the seconds it saves per training step."""
    batches = random_batches(args.steps, args.batch_size, args.sizes[0])
    rows = []
    for arch in args.archs:
        timings = {}
        for label in ("eager", "compiled"):
            model = build_model(arch, image_size=args.sizes[0])
            runner = torch.compile(model) if label == "compiled" else model
            start = time.perf_counter()
            fit(runner, batches[:1], epochs=1, lr=1e-3, device="cpu", progress=False)
            first = time.perf_counter() - start
            start = time.perf_counter()
            fit(runner, batches, epochs=1, lr=1e-3, device="cpu", progress=False)
            timings[label] = (first, (time.perf_counter() - start) / args.steps)
        saved = timings["eager"][1] - timings["compiled"][1]
        overhead = timings["compiled"][0] - timings["eager"][0]
        rows.append({"arch": arch, "eager_s/step": timings["eager"][1],
                     "compiled_s/step": timings["compiled"][1], "compile_s": overhead,
                     "payback_steps": overhead / saved if saved > 0 else float("inf")})
    print_table(rows)
    print(f"load average {os.getloadavg()[0]:.1f}; the default config trains about "
          f"{args.train_images // args.batch_size} steps per epoch, 3-5 epochs per architecture")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=STUDY_ARCHS)
    parser.add_argument("--sizes", nargs="+", type=int, default=[32])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-images", type=int, default=5600,
                        help="training-set size for the seconds-per-epoch estimate")
    parser.add_argument("--contended", action="store_true",
                        help="slowdown of training steps while a busy loop takes core 0")
    parser.add_argument("--variants", nargs="+", default=["default", "passive", "1thread"],
                        choices=list(VARIANTS), help="settings compared by --contended")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (--contended)")
    parser.add_argument("--inference", action="store_true",
                        help="prediction time per evaluation batch size and layout")
    parser.add_argument("--eval-batch-sizes", nargs="+", type=int, default=[64, 256])
    parser.add_argument("--test-images", type=int, default=900,
                        help="images per prediction pass (--inference; the default test split)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile's cost and per-step saving in training")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--channels-last", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.contended:
        return contended(args)
    if args.inference or args.compile:
        with torch_threads(args.threads):
            return inference(args) if args.inference else compiled(args)
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
