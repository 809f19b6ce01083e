"""The Ray executor on a real local Ray instance (2 CPUs, 1 per task), smoke config only.

Deselect with ``-m "not ray"`` when Ray cannot start; they run by default.
"""
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest
import ray

import experiment
import main
from config import BAD_RAY_ADDRESS, BAD_RAY_RESOURCE, DEFAULT_RAY_RESOURCES, load_config
from executors import FAILED_ON, NEEDS_MISSING, NODE_CANNOT_SEE, check_nodes_see, run_on_ray
from results import ResultStore

TIMING = re.compile(r"^(wall_s|cost_s|train_time_s|calibration_cost_s|node|load_avg_1m|other_cores|"
                    r"cpu_shared|fp32_latency_ms_b\d+|"
                    r"latency_ms_b\d+|latency_layout_b\d+|fp32_reference_b\d+|int8_form_b\d+|"
                    r"speedup_b\d+)$")
"""Columns that time something (or name where and under what load it was timed): the only ones
allowed to differ."""
TABLES = ("baseline_results.csv", "quantization_results.csv", "mitigation_results.csv",
          "group_metrics.csv", "analysis/stats.csv")
NO_RAY_AFTER_LOCAL_RUN = ("import sys, main; rc = main.main(sys.argv[1:]); "
                          "assert 'ray' not in sys.modules, 'the local executor imported ray'; "
                          "sys.exit(rc)")


def _args(results_dir, *extra):
    return ["--phase", "all", "--config", "configs/smoke.yaml", "--log-level", "WARNING",
            "--set", f"results_dir={results_dir}", *extra]


def test_ray_settings_are_checked_and_merged_over_the_defaults():
    runtime = load_config(None, ["runtime.executor=ray", "runtime.ray_address=ray://head:10001",
                                 "runtime.ray_resources.quantization.num_cpus=4"]).runtime
    assert runtime.ray_resources == {**DEFAULT_RAY_RESOURCES,
                                     "quantization": {"num_cpus": 4, "num_gpus": 0}}
    assert load_config(None).runtime.executor == "local"
    with pytest.raises(ValueError, match=re.escape(BAD_RAY_ADDRESS.format(value="head:10001"))):
        load_config(None, ["runtime.ray_address=head:10001"])
    bad_gpus = BAD_RAY_RESOURCE.split("{expected}")[0].format(phase="baseline", key="num_gpus",
                                                              value=-1)
    with pytest.raises(ValueError, match=re.escape(bad_gpus)):
        load_config(None, ["runtime.ray_resources.baseline.num_gpus=-1"])
    with pytest.raises(ValueError, match="unknown key.*'memory'.*num_cpus"):
        load_config(None, ["runtime.ray_resources.mitigation.memory=2"])


@pytest.fixture(scope="module")
def ray_instance():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def runs(ray_instance, tmp_path_factory):
    """The smoke run twice in fresh folders: locally (in a process that must not import ray)
    and on Ray, at the same time."""
    root = tmp_path_factory.mktemp("executors")
    local = subprocess.Popen([sys.executable, "-c", NO_RAY_AFTER_LOCAL_RUN, *_args(root / "local")],
                             stderr=subprocess.PIPE, text=True,  # 1 thread, as each Ray task has
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    on_ray = main.main(_args(root / "ray", "--set", "runtime.executor=ray"))
    _, stderr = local.communicate()
    assert local.returncode == 0, stderr[-2000:]
    assert on_ray == 0
    return root / "local" / "smoke", root / "ray" / "smoke"


def _untimed(path):
    table = pd.read_csv(path)
    table = table.drop(columns=[c for c in table.columns if TIMING.match(c)])
    key = [c for c in ("config_id", "group", "metric") if c in table.columns]
    return table.sort_values(key).reset_index(drop=True)


@pytest.mark.ray
def test_a_node_that_cannot_see_the_run_folder_stops_the_run(ray_instance, tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        check_nodes_see(tmp_path / "elsewhere")
    [node] = ray.nodes()
    assert str(error.value) == NODE_CANNOT_SEE.format(host=socket.gethostname(),
                                                      node=node["NodeID"][:8],
                                                      what="the run folder",
                                                      path=tmp_path / "elsewhere")


@pytest.mark.ray
def test_ray_gives_every_configuration_and_the_local_tables(runs):
    local, on_ray = runs
    for name in TABLES:
        pd.testing.assert_frame_equal(_untimed(on_ray / name), _untimed(local / name), obj=name,
                                      check_exact=True)
    records = json.loads((on_ray / "quantization_results.json").read_text())
    assert all(r["status"] == "ok" and r["node"] for r in records)
    predictions = sorted(p.relative_to(local) for p in (local / "predictions").rglob("*.csv.gz"))
    assert predictions == sorted(p.relative_to(on_ray)
                                 for p in (on_ray / "predictions").rglob("*.csv.gz"))


def _fresh_quantization(run_dir, tmp_path):
    """A copy of a finished run without its quantization results."""
    copy = tmp_path / "results" / "smoke"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "records" / "quantization_results")
    for table in ("quantization_results.json", "quantization_results.csv"):
        (copy / table).unlink()
    return copy


@pytest.mark.ray
def test_killing_the_driver_loses_and_duplicates_nothing(runs, tmp_path):
    copy = _fresh_quantization(runs[1], tmp_path)
    records = copy / "records" / "quantization_results"
    driver = subprocess.Popen([sys.executable, "main.py", *_args(tmp_path / "results"),
                               "--phase", "quantization", "--set", "runtime.executor=ray",
                               "--set", "runtime.ray_address=auto"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while driver.poll() is None and not list(records.rglob("*.json")):
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    before = {p: p.read_bytes() for p in records.rglob("*.json")}
    records = json.loads((runs[1] / "quantization_results.json").read_text())
    expected = {r["config_id"] for r in records}
    assert 0 < len(before) < len(expected), "the kill came too late to test anything"

    assert main.main(_args(tmp_path / "results", "--phase", "quantization",
                           "--set", "runtime.executor=ray")) == 0
    assert all(path.read_bytes() == body for path, body in before.items())  # not redone
    table = pd.read_csv(copy / "quantization_results.csv")
    assert sorted(table["config_id"]) == sorted(expected)  # each once


@pytest.mark.ray
def test_a_failing_unit_is_recorded_and_the_rest_finish(runs, tmp_path, caplog):
    copy = _fresh_quantization(runs[1], tmp_path)
    ctx = experiment.Context.for_run(str(copy))
    units = experiment.quantization_units(ctx)
    broken = dataclasses.replace(units[0], args={**units[0].args, "options": {
        **units[0].args["options"], "observer": "no_such_observer"}})  # raises on the worker
    stuck = dataclasses.replace(units[1], needs=("checkpoints/gone.pt",))  # never runs
    store = ResultStore(copy, "quantization_results")
    [counts] = run_on_ray([(store, [broken, stuck, *units[2:]])], ctx.cfg.runtime, progress=False)
    assert counts == {"ran": len(units) - 2, "skipped": 0, "failed": 2}
    by_id = {r["config_id"]: r for r in store.records()}
    assert by_id[broken.config_id]["status"] == "failed"
    assert "no_such_observer" in by_id[broken.config_id]["error"]
    assert by_id[broken.config_id]["node"]
    assert by_id[stuck.config_id]["error"] == "FileNotFoundError: " + NEEDS_MISSING.format(
        config_id=stuck.config_id, missing=["checkpoints/gone.pt"])
    assert all(by_id[u.config_id]["status"] == "ok" for u in units[2:])
    assert FAILED_ON.split(" %s")[0] in caplog.text and broken.config_id in caplog.text
