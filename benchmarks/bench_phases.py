"""Wall time of each phase of ``main.py`` on a config, in a fresh results folder.

    python -m benchmarks.bench_phases                              # the default config
    python -m benchmarks.bench_phases --profile                    # + seconds per step type
    python -m benchmarks.bench_phases --config configs/smoke.yaml
    python -m benchmarks.bench_phases --phases baseline baseline   # a rerun reuses checkpoints

Each phase runs as its own process, as a user would run it; prints seconds per phase and the
total. With ``--profile`` each phase's process writes its ``profiling`` table (seconds per step
type: training steps, prediction, calibration, latency, ...) at exit, printed under its phase.
Step totals are inclusive: a step timed inside another counts in both. Target: the default
config in at most 20 minutes on an idle 2-core CPU. The load average before and after each phase
is printed: numbers taken while other jobs share the CPU are not the idle ones.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import profiling

ROOT = Path(__file__).resolve().parents[1]


def run_phase(phase: str, config: str, results_dir: str, extra: list[str],
              profile: Path | None) -> float:
    command = [sys.executable, "main.py", "--phase", phase, "--config", config,
               "--set", f"results_dir={results_dir}", "--set", "runtime.progress=false",
               "--log-level", "WARNING", *extra]
    env = {**os.environ, **({profiling.PROFILE_ENV: str(profile)} if profile else {})}
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, env=env)
    return time.perf_counter() - start


def print_profile(path: Path) -> None:
    rows = json.loads(path.read_text()) if path.is_file() else []
    for line in profiling.format_table(rows).splitlines() or ["(nothing timed)"]:
        print(f"    {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/config.yaml")
    parser.add_argument("--phases", nargs="+",
                        default=["baseline", "quantization", "mitigation", "analysis"])
    parser.add_argument("--results-dir", default=None,
                        help="where to write (default: a temporary folder, deleted afterwards)")
    parser.add_argument("--profile", action="store_true",
                        help="print each phase's seconds per step type")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    extra = [item for override in args.set for item in ("--set", override)]
    print(f"{args.config} on {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}",
          flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        results_dir = args.results_dir or scratch
        total = 0.0
        for index, phase in enumerate(args.phases):
            profile = Path(scratch) / f"profile_{index}_{phase}.json" if args.profile else None
            seconds = run_phase(phase, args.config, results_dir, extra, profile)
            total += seconds
            print(f"{phase:13s} {seconds:8.1f} s   (load average {os.getloadavg()[0]:.1f})",
                  flush=True)
            if profile:
                print_profile(profile)
        print(f"{'total':13s} {total:8.1f} s = {total / 60:.1f} min  ({args.config})")


if __name__ == "__main__":
    main()
