"""Work units are plain data: they pickle, run in a fresh process with the same result, and a
method defined in this file alone is swept like the built-in ones."""
import json
import pickle
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

import experiment
import main
import test_main
from quantization import MethodTraits, QuantConfig, describe_quantized, register_method
from results import ResultStore, _json_safe
from test_main import _args

smoke_run = test_main.smoke_run  # the smoke run, as a fixture of this module
ROOT = Path(__file__).resolve().parents[1]
TIMING = re.compile(r"wall_s|cost_s|latency|speedup|reference_b|form_b|layout_b|train_time"
                    r"|load_avg|other_cores|cpu_shared")
"""Record columns that measure time or the CPU load beside it, which no rerun reproduces."""


def _units(run_dir):
    ctx = experiment.Context.for_run(run_dir)
    return (experiment.baseline_units(ctx) + experiment.quantization_units(ctx)
            + experiment.mitigation_units(ctx))


RUN_PICKLED = ("import pickle, sys, torch; torch.set_num_threads(1); import experiment; "
               "unit = pickle.load(sys.stdin.buffer); record = experiment.execute(unit)[0]; "
               "open(sys.argv[1], 'wb').write(pickle.dumps(record))")


def _run_fresh(unit, out: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", RUN_PICKLED, str(out)], input=pickle.dumps(unit),
                          capture_output=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return pickle.loads(out.read_bytes())


def test_every_smoke_unit_runs_the_same_in_a_fresh_process(smoke_run, tmp_path):
    _, run_dir = smoke_run
    units = _units(run_dir)
    stored = {}
    for table in ("baseline_results", "quantization_results", "mitigation_results"):
        stored.update({r["config_id"]: r for r in ResultStore(run_dir, table).records()})
    assert {unit.config_id for unit in units} == set(stored)
    assert all(pickle.loads(pickle.dumps(unit)) == unit for unit in units)
    with ThreadPoolExecutor(2) as pool:
        outs = [tmp_path / f"{i}.pkl" for i in range(len(units))]
        fresh = dict(zip([u.config_id for u in units], pool.map(_run_fresh, units, outs)))
    for config_id, record in fresh.items():
        record = json.loads(json.dumps(_json_safe(record)))
        kept = {k: v for k, v in record.items() if not TIMING.search(k)}
        assert kept == {k: stored[config_id][k] for k in kept}, config_id


# ----------------------------------------------------------------------------- a new method

CALLS = []


@dataclass(frozen=True)
class RoundWeightsConfig(QuantConfig):
    """Every conv/linear weight rounded to ``weight_bits`` symmetric levels per tensor, in float."""
    WEIGHT_BITS: ClassVar[tuple[int, ...]] = tuple(range(2, 9))


@register_method("round_weights_test", RoundWeightsConfig, overwrite=True,
                 traits=MethodTraits(calibration="none"))
def _round_weights(model, config, calibration_data, **_):
    CALLS.append(config.bits)
    levels = 2 ** (config.weight_bits - 1) - 1
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                scale = module.weight.abs().max() / levels
                module.weight.copy_(torch.round(module.weight / scale) * scale)
    model.quant_info = describe_quantized(model, "simulated")
    return model


def test_a_method_defined_in_this_file_alone_is_swept(smoke_run, tmp_path):
    source, _ = smoke_run
    shutil.copytree(source / "results", tmp_path / "results")
    methods = "quantization.methods=[{method: round_weights_test, bits: [w2a8, w8a8]}]"
    args = _args(tmp_path, "--phase", "quantization", "--set", methods,
                 "--set", f"data.root={source / 'data'}")  # the same data as the baseline
    assert main.main(args) == 0
    rows = {r["config_id"]: r for r in
            ResultStore(tmp_path / "results" / "smoke", "quantization_results").records()
            if r["method"] == "round_weights_test"}
    assert sorted(CALLS) == ["w2a8", "w8a8"]
    assert set(rows) == {f"synthetic/tiny_cnn/round_weights_test/{bits}/calib=none/seed=0"
                         for bits in ("w2a8", "w8a8")}
    assert all(r["status"] == "ok" and r["execution"] == "simulated" for r in rows.values())
    two_bit = rows["synthetic/tiny_cnn/round_weights_test/w2a8/calib=none/seed=0"]
    eight_bit = rows["synthetic/tiny_cnn/round_weights_test/w8a8/calib=none/seed=0"]
    assert two_bit["flip_rate"] > eight_bit["flip_rate"]  # coarser weights change more answers


def test_the_simulated_twin_and_the_fp32_model_are_built_once_per_process(smoke_run, monkeypatch):
    _, run_dir = smoke_run
    ctx = experiment.Context(experiment.Context.for_run(run_dir).cfg, run_dir)  # fresh caches
    built, loaded = [], []
    quantize, load = experiment._quantize, experiment.load_model_from_checkpoint
    monkeypatch.setattr(experiment, "_quantize", lambda *a,
                        **k: built.append(k) or quantize(*a, **k))
    monkeypatch.setattr(experiment, "load_model_from_checkpoint",
                        lambda path: loaded.append(path) or load(path))
    unit = next(u for u in experiment.quantization_units(ctx) if "ptq_static/w8a8" in u.config_id)
    first, second = (experiment.execute(unit)[0] for _ in range(2))
    assert first["agreement_with_simulated"] == second["agreement_with_simulated"]
    assert [k.get("execution") for k in built] == [None, "simulated", None]  # twin once
    assert len(loaded) == 1
    arch = unit.args["arch"]
    a, b = ctx.fp32_model(arch), ctx.fp32_model(arch)
    assert a is not b and all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                               b.state_dict().values()))
