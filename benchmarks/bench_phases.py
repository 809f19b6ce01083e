"""Wall time of each phase of ``main.py`` on a config, in a fresh results folder.

    python benchmarks/bench_phases.py                              # the default config
    python benchmarks/bench_phases.py --config configs/smoke.yaml
    python benchmarks/bench_phases.py --phases baseline baseline   # a rerun reuses checkpoints

Each phase runs as its own process, as a user would run it; prints seconds per phase. Targets on
a 2-core CPU: baseline and quantization each under 10 minutes on the default config, the smoke
config end to end under a minute. Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_phase(phase: str, config: str, results_dir: str, extra: list[str]) -> float:
    command = [sys.executable, "main.py", "--phase", phase, "--config", config,
               "--set", f"results_dir={results_dir}", "--set", "runtime.progress=false",
               "--log-level", "WARNING", *extra]
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/config.yaml")
    parser.add_argument("--phases", nargs="+",
                        default=["baseline", "quantization", "mitigation", "analysis"])
    parser.add_argument("--results-dir", default=None,
                        help="where to write (default: a temporary folder, deleted afterwards)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    extra = [item for override in args.set for item in ("--set", override)]
    with tempfile.TemporaryDirectory() as scratch:
        results_dir = args.results_dir or scratch
        total = 0.0
        for phase in args.phases:
            seconds = run_phase(phase, args.config, results_dir, extra)
            total += seconds
            print(f"{phase:13s} {seconds:8.1f} s", flush=True)
        print(f"{'total':13s} {total:8.1f} s  ({args.config})")


if __name__ == "__main__":
    main()
