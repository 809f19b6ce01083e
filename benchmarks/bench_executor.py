"""The Ray executor against the local one, and a cluster wall-time estimate from measured costs.

    python -m benchmarks.bench_executor                        # smoke quantization: local vs Ray
    python -m benchmarks.bench_executor --estimate results/default --config configs/celeba_full.yaml

The first form trains the smoke baseline once in a temporary folder, then times the smoke
quantization phase (``--force``, in this process) three ways, each twice (cold: the first run
loads the data, imports torch in new workers and times each architecture's FP32 once; warm: the
second): locally; on a local Ray instance of 2 CPUs, 1 CPU and 1 torch thread per unit; and on
Ray with 1 CPU, where units run one at a time like the local loop, so (Ray 1 CPU warm − local
warm) / units is what Ray adds per unit. Run it on an otherwise idle machine.

The second form lists the units of ``--config`` (e.g. the full study), gives each the mean
``wall_s`` that the run in ``--estimate`` measured for the same (phase, architecture, method)
times ``--scale``, and list-schedules them on 1, 4 and 16 nodes (see ``estimate``).
"""
from __future__ import annotations

import argparse
import heapq
import statistics
import tempfile
import time
from pathlib import Path

import config as config_module
import experiment
import main as cli
from results import ResultStore

ROOT = Path(__file__).resolve().parents[1]

SMOKE = str(ROOT / "configs" / "smoke.yaml")
NODES = (1, 4, 16)


def _smoke(results_dir: str, *extra: str) -> list[str]:
    return ["--config", SMOKE, "--log-level", "WARNING", "--set", f"results_dir={results_dir}",
            *extra]


def timed_quantization(results_dir: str, *extra: str) -> tuple[float, float]:
    """Seconds of the phase, and the sum of its units' own ``wall_s``."""
    start = time.perf_counter()
    assert cli.main(_smoke(results_dir, "--phase", "quantization", "--force", *extra)) == 0
    seconds = time.perf_counter() - start
    records = ResultStore(Path(results_dir) / "smoke", "quantization_results").records()
    return seconds, sum(record["wall_s"] for record in records)


def compare_executors() -> None:
    import ray

    with tempfile.TemporaryDirectory() as results_dir:
        assert cli.main(_smoke(results_dir, "--phase", "baseline")) == 0
        rows = [(f"local, 1 process, {state}", timed_quantization(results_dir))
                for state in ("cold", "warm")]
        local = rows[-1][1][0]
        n = len(ResultStore(Path(results_dir) / "smoke", "quantization_results").records())
        for cpus in (2, 1):
            start = time.perf_counter()
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
            rows.append((f"ray.init(num_cpus={cpus})", (time.perf_counter() - start, None)))
            for state in ("cold", "warm"):
                rows.append((f"Ray {cpus} CPU x 1 thread, {state}",
                             timed_quantization(results_dir, "--set", "runtime.executor=ray")))
            ray.shutdown()
    print(f"{'':32s} {'wall':>7s}   {'units':>7s} (sum of the units' own wall_s)")
    for name, (seconds, units) in rows:
        print(f"{name:32s} {seconds:7.2f} s" + ("" if units is None else f" {units:7.2f} s"))
    warm = {name: s for name, (s, _) in rows if name.endswith("warm")}
    print(f"{'Ray 2 CPU warm / local warm':32s} {warm['Ray 2 CPU x 1 thread, warm'] / local:7.2f}")
    overhead = (warm["Ray 1 CPU x 1 thread, warm"] - local) / n
    print(f"{'Ray overhead per unit':32s} {overhead:7.2f} s  ((Ray 1 CPU warm - local warm) / {n} "
          "units)")


# ----------------------------------------------------------------------------- estimate

def measured_costs(run_dir: Path) -> dict:
    """Mean ``wall_s`` of the ok records of a run, keyed (phase, arch, method)."""
    costs: dict = {}
    for phase in cli.SWEEP_UNITS:
        for record in ResultStore(run_dir, f"{phase}_results").records():
            if record.get("status") == "ok" and record.get("wall_s") is not None:
                key = (phase, record["arch"], record["method"])
                costs.setdefault(key, []).append(record["wall_s"])
    return {key: statistics.mean(values) for key, values in costs.items()}


def unit_cost(costs: dict, phase: str, arch: str, method: str) -> float:
    """The measured mean of the same (phase, arch, method); else of (phase, method) over the
    measured architectures; else of the phase."""
    for match in ((phase, arch, method), (phase, None, method), (phase, None, None)):
        values = [cost for key, cost in costs.items()
                  if all(want is None or want == got for want, got in zip(match, key))]
        if values:
            return statistics.mean(values)
    raise ValueError(f"the measured run has no {phase} records to estimate from")


def study_units(cfg) -> list:
    """Every unit of ``cfg``'s three sweep phases, listed without its baselines on disk."""
    ctx = experiment.Context(cfg)
    return [unit for phase, listed in cli.SWEEP_UNITS.items()
            for unit in (listed(ctx, False) if phase == "baseline" else listed(ctx, check=False))]


def estimate(units: list, costs: dict, scale: float, nodes: int) -> float:
    """Seconds to run ``units`` on ``nodes`` identical nodes, one unit per node at a time (as the
    Ray executor runs the timing units; packed units would go faster), longest unit first among
    those ready; a unit is ready once the baseline of its architecture is done."""
    cost = {unit.config_id: scale * unit_cost(costs, unit.phase, unit.fields["arch"],
                                              unit.fields["method"]) for unit in units}
    base_done = {}  # arch -> when its baseline finishes
    free = [0.0] * nodes
    for unit in sorted((u for u in units if u.phase == "baseline"),
                       key=lambda u: -cost[u.config_id]):
        start = heapq.heappop(free)
        base_done[unit.fields["arch"]] = start + cost[unit.config_id]
        heapq.heappush(free, base_done[unit.fields["arch"]])
    rest = sorted((u for u in units if u.phase != "baseline"),
                  key=lambda u: (base_done.get(u.fields["arch"], 0.0), -cost[u.config_id]))
    for unit in rest:
        start = max(heapq.heappop(free), base_done.get(unit.fields["arch"], 0.0))
        heapq.heappush(free, start + cost[unit.config_id])
    return max(free)


def print_estimate(run_dir: Path, config_path: str, scale: float) -> None:
    cfg = config_module.load_config(config_path)
    units, costs = study_units(cfg), measured_costs(run_dir)
    by_phase = {phase: sum(u.phase == phase for u in units) for phase in cli.SWEEP_UNITS}
    print(f"{config_path}: {len(units)} units {by_phase}; per-unit costs from {run_dir} "
          f"({len(costs)} (phase, arch, method) means) x scale {scale:g}")
    for n in NODES:
        hours = estimate(units, costs, scale, n) / 3600
        print(f"{n:3d} node(s): {hours:8.2f} h")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--estimate", metavar="RUN_DIR", help="a finished run to take costs from")
    parser.add_argument("--config", default="configs/celeba_full.yaml",
                        help="the study to estimate (with --estimate)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="how many times longer a unit of --config takes than the measured "
                             "one (data size, image size, node speed); 1 = as measured")
    args = parser.parse_args()
    if args.estimate:
        print_estimate(Path(args.estimate), args.config, args.scale)
    else:
        compare_executors()


if __name__ == "__main__":
    main()
