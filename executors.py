"""The Ray executor: work units of one or more phases run as Ray tasks; this process commits them.

    counts = run_on_ray([(store, units), ...], cfg.runtime, force=False)

A task receives one ``WorkUnit`` (plain data) and rebuilds what it needs from ``unit.run_dir``
with ``experiment.execute``; it returns ``(record, predictions, per_group)`` or the error it
raised. Only the driver writes the result store, through ``results.commit_result``, the function
the local loop uses, so commits stay atomic and a rerun skips what is done.

Scheduling: a unit is submitted once the files it ``needs`` exist and no unit of this sweep that
makes them (e.g. its architecture's baseline) is still to run, so with ``--phase all`` a
quantization unit starts as soon as its checkpoint is committed. A unit that times models (see
``times_latency``) asks for every CPU of a node, so nothing else of the sweep runs beside it while
it measures. Only this module imports ray (docs/cluster.md).
"""
from __future__ import annotations

import cpu_policy  # noqa: F401  (first, as in main.py: a worker's OpenMP reads it when torch loads)

import dataclasses
import logging
import os
import pickle
import socket
import time
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from tqdm.auto import tqdm

from quantization import method_config
from results import ResultStore, WorkUnit, commit_result, predictions_path

log = logging.getLogger(__name__)

TIMING_RUNNERS = ("baseline", "quantization", "runtime")
"""Runners whose records may hold latency measured in the task (FP32, INT8, other runtimes)."""

NODE_CANNOT_SEE = ("Ray node {host} ({node}) cannot see {what} {path}: the results folder, the "
                   "dataset and this checkout must be on storage every node mounts at the same "
                   "path (NFS, a mounted bucket); see docs/cluster.md, or run with "
                   "--set runtime.executor=local")
NEEDS_MISSING = ("{config_id} needs {missing}, which is missing and which no unit of this sweep "
                 "makes (did its baseline fail?); run `python main.py --phase baseline` first")
NO_GPU_FOR = "runtime.ray_resources.%s.num_gpus=auto: the cluster has no GPU, so its units use CPUs"
FAILED_ON = "configuration %s failed on node %s: %s"


def run_on_ray(sweeps: list[tuple[ResultStore, list[WorkUnit]]], runtime, *, force: bool = False,
               desc: str = "configurations", progress: bool = True) -> list[dict]:
    """Run the units of every ``(store, units)`` pair not done yet; counts per pair.

    ``runtime`` is the run's ``RuntimeConfig`` (``ray_address``, ``ray_resources``, ``threads``).
    Connects to Ray (or reuses a connection already open), checks that every node sees the run
    folder, then keeps submitting ready units and committing results until all are done.
    """
    started = _connect(runtime.ray_address)
    try:
        return _schedule(sweeps, runtime, force=force, desc=desc, progress=progress)
    finally:
        if started:
            ray.shutdown()


def _connect(address: str | None) -> bool:
    """``ray.init`` unless already connected; True when this call connected."""
    if ray.is_initialized():
        return False
    project = os.getcwd()  # units hold paths relative to it (results_dir, data.root)
    ray.init(address=address, include_dashboard=False, log_to_driver=True,
             runtime_env={"env_vars": {"PYTHONPATH": project}})
    return True


@dataclasses.dataclass
class _Job:
    store: ResultStore
    unit: WorkUnit
    counts: dict


def _schedule(sweeps, runtime, *, force, desc, progress) -> list[dict]:
    counts = [{"ran": 0, "skipped": 0, "failed": 0} for _ in sweeps]
    pending = _pending(sweeps, counts, force)
    total = sum(len(units) for _, units in sweeps)
    bar = tqdm(total=total, desc=desc, unit="config", disable=not progress)
    bar.update(total - len(pending))
    if pending:
        check_nodes_see(Path(pending[0].unit.run_dir))
        _run(pending, _task_options(runtime.ray_resources), bar)
    bar.close()
    for (store, _), count in zip(sweeps, counts):
        log.info("%s: %d ran, %d skipped (already done), %d failed", store.name, count["ran"],
                 count["skipped"], count["failed"])
    return counts


def _pending(sweeps, counts, force: bool) -> list[_Job]:
    """The units not done yet (tables brought up to date first, as the local loop does)."""
    pending = []
    for (store, units), count in zip(sweeps, counts):
        store.forget_failed_except({unit.config_id for unit in units})
        store.refresh()
        done = set() if force else store.done_ids()
        for unit in units:
            if unit.config_id in done:
                count["skipped"] += 1
            else:
                pending.append(_Job(store, _absolute(unit), count))
    return pending


def _run(pending: list[_Job], options: dict, bar) -> None:
    """Submit every ready unit, commit whichever finishes first, repeat."""
    in_flight: dict = {}
    while pending or in_flight:
        for job in _ready(pending, in_flight):
            pending.remove(job)
            phase = options[job.unit.phase]
            task = _execute.options(**phase[times_latency(job.unit)])
            in_flight[task.remote(job.unit, phase["threads"])] = job
        if not in_flight:  # nothing can run: what the rest needs will never appear
            _fail_stuck(pending)
            bar.update(len(pending))
            return
        [ref], _ = ray.wait(list(in_flight), num_returns=1)
        _commit(in_flight.pop(ref), ref)
        bar.update(1)


def _absolute(unit: WorkUnit) -> WorkUnit:
    return dataclasses.replace(unit, run_dir=str(Path(unit.run_dir).resolve()))


def _ready(pending: list[_Job], in_flight: dict) -> list[_Job]:
    """Pending units whose needs exist and whose makers (units of this sweep whose predictions
    file is one of those needs) are neither pending nor running."""
    making = {predictions_path(job.unit.run_dir, job.unit.config_id)
              for job in [*pending, *in_flight.values()]}
    return [job for job in pending
            if all(_need(job.unit, need).is_file() and _need(job.unit, need) not in making
                   for need in job.unit.needs)]


def _need(unit: WorkUnit, need: str) -> Path:
    return Path(unit.run_dir) / need


def _fail_stuck(pending: list[_Job]) -> None:
    for job in pending:
        missing = [need for need in job.unit.needs if not _need(job.unit, need).is_file()]
        error = FileNotFoundError(NEEDS_MISSING.format(config_id=job.unit.config_id,
                                                       missing=missing))
        log.error(FAILED_ON, job.unit.config_id, "-", error)
        commit_result(job.store, job.unit, error, 0.0)
        job.counts["failed"] += 1


def _commit(job: _Job, ref) -> None:
    """Commit one finished task through the local loop's writer path; the row names its node."""
    try:
        outcome, wall_s, host = ray.get(ref)
    except ray.exceptions.RayError as error:  # the worker or its node died, after Ray's retries
        outcome, wall_s, host = error, 0.0, "unknown"
    unit = dataclasses.replace(job.unit, fields={**job.unit.fields, "node": host})
    if isinstance(outcome, BaseException):
        log.error(FAILED_ON, unit.config_id, host, outcome)
    ok = commit_result(job.store, unit, outcome, wall_s)
    job.counts["ran" if ok else "failed"] += 1


@ray.remote
def _execute(unit: WorkUnit, threads: int):
    """Run one unit on a worker; an error comes back as a value so the driver records it."""
    import torch

    import experiment
    torch.set_num_threads(threads)  # Ray sets OMP_NUM_THREADS, torch has its own default
    start = time.perf_counter()
    try:
        outcome = experiment.execute(unit)
    except Exception as error:  # a failing configuration must not stop the sweep
        outcome = error if _picklable(error) else RuntimeError(f"{type(error).__name__}: {error}")
    return outcome, round(time.perf_counter() - start, 3), socket.gethostname()


def _picklable(value) -> bool:
    try:
        pickle.loads(pickle.dumps(value))
    except Exception:
        return False
    return True


def times_latency(unit: WorkUnit) -> bool:
    """Whether the unit measures latency, so it must run alone on a node: a baseline (FP32), a
    model of another runtime, or a quantization whose model runs on integer kernels (a simulated
    one is never timed)."""
    if unit.runner != "quantization":
        return unit.runner in TIMING_RUNNERS
    try:
        config = method_config(unit.args["method"], **unit.args["options"])
    except ValueError:  # the unit fails on its worker, where its error is recorded
        return True
    return getattr(config, "resolved_execution", "real_int8") == "real_int8"


def _task_options(resources: dict) -> dict:
    """Per phase: Ray options of a packed task (False) and of an exclusive one (True), and the
    torch threads of its task (``num_cpus``)."""
    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    node_cpus = max(int(node["Resources"].get("CPU", 1)) for node in _alive_nodes())
    options = {}
    for phase, asked in resources.items():
        gpus = asked["num_gpus"]
        if gpus == "auto":
            gpus = 1 if has_gpu else 0
            if not has_gpu:
                log.info(NO_GPU_FOR, phase)
        packed = {"num_cpus": asked["num_cpus"], "num_gpus": gpus}
        options[phase] = {False: packed, True: {**packed, "num_cpus": max(node_cpus,
                                                                          asked["num_cpus"])},
                          "threads": asked["num_cpus"]}
    return options


def _alive_nodes() -> list[dict]:
    return [node for node in ray.nodes() if node["Alive"]]


def check_nodes_see(run_dir: Path) -> None:
    """One task on every node: the run folder's config and this checkout must be visible."""
    what = {"the run folder": run_dir / "config.yaml", "the checkout": Path.cwd() / "experiment.py"}
    refs = {node["NodeID"]: _sees.options(num_cpus=0, scheduling_strategy=
                                          NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
                                          ).remote([str(path) for path in what.values()])
            for node in _alive_nodes()}
    for node, ref in refs.items():
        host, seen = ray.get(ref)
        for (name, path), ok in zip(what.items(), seen):
            if not ok:
                raise FileNotFoundError(NODE_CANNOT_SEE.format(host=host, node=node[:8],
                                                               what=name, path=path.parent))


@ray.remote
def _sees(paths: list[str]) -> tuple[str, list[bool]]:
    return socket.gethostname(), [os.path.isfile(path) for path in paths]
