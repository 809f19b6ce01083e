"""The deployment runtimes (ONNX Runtime, OpenVINO + NNCF) as backends of the quantization phase."""
import importlib.util

import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

import experiment
import main
import runtimes
from quantization import apply_quantization, prediction_agreement

SIZE = 16  # conftest.TINY_SIZE: the separable_images fixture's size


@pytest.mark.parametrize("name", sorted(runtimes.RUNTIMES))
def test_each_runtime_quantizes_saves_and_agrees_with_the_torch_twin(name, separable_cnn,
                                                                     separable_images, tmp_path):
    calibration = DataLoader(separable_images, batch_size=32)
    quantized = runtimes.quantize_with_runtime(name, separable_cnn, calibration, SIZE, tmp_path,
                                               threads=1)
    info = quantized.quant_info
    assert info["execution"] == f"{name}_int8" and (info["weight_bits"], info["act_bits"]) == (8, 8)
    assert all(path.is_file() for path in quantized.files) and info["size_mib"] > 0
    reference = apply_quantization(separable_cnn, calibration_data=calibration,
                                   execution="simulated")
    # the columns of torch rows (a compiled model adds its CPU flags and compile seconds)
    assert info.record().keys() >= reference.quant_info.record().keys()
    assert prediction_agreement(quantized, reference, calibration) >= 0.95
    fp32 = runtimes.fp32_runtime_model(name, separable_cnn, SIZE, tmp_path, threads=1)
    with torch.no_grad():
        images = separable_images.tensors[0][:8]
        assert torch.allclose(fp32(images), separable_cnn(images), atol=1e-4)


def test_an_unknown_runtime_lists_the_known_ones():
    with pytest.raises(ValueError, match="known runtimes: onnxruntime, openvino"):
        runtimes.get_runtime("tvm")


def test_a_missing_package_names_it_and_the_install_line(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "nncf" else real_find_spec(name, *a))
    with pytest.raises(ValueError, match=r"needs the Python package 'nncf'.*pip install -r"):
        runtimes.get_runtime("openvino").check_installed()
    assert "openvino" not in runtimes.available_runtimes()


def test_the_quantization_phase_writes_a_row_per_backend(static_w8a8_run, monkeypatch, capsys):
    run_dir, table, args = static_w8a8_run("[torch, onnxruntime, openvino]")
    assert set(table.index) == {"real_int8", "onnxruntime_int8", "openvino_int8"}
    assert (table["status"] == "ok").all()
    fastest = table["fp32_reference_b1"].unique()
    assert len(fastest) == 1  # one FP32 reference per architecture, shared by every row
    for execution in ("onnxruntime_int8", "openvino_int8"):
        row = table.loc[execution]
        assert (run_dir / row["artifact"]).is_file()
        assert row["agreement_with_simulated"] >= 0.9
        assert row["speedup_b1"] == pytest.approx(row["fp32_latency_ms_b1"] / row["latency_ms_b1"])

    # the analysis compares the runtimes: paired changes vs FP32, per group, and a figure panel
    assert main.main([*args, "--phase", "analysis"]) == 0
    report = (run_dir / "analysis" / "report.md").read_text()
    section = report.split("## Deployment runtimes", 1)[1].split("\n## ", 1)[0]
    assert all(name in section for name in ("real_int8", "onnxruntime_int8", "openvino_int8"))
    groups = pd.read_csv(run_dir / "analysis" / "tables" / "backend_groups.csv")
    assert set(groups["execution"]) == set(table.index)
    assert (groups["accuracy_drop_low"] <= groups["accuracy_drop"]).all()
    assert (run_dir / "analysis" / "figures" / "backends.png").read_bytes()[:4] == b"\x89PNG"
    # the same folder resumed on the other kind of CPU is refused, not silently mixed
    real = experiment.kernel_capability()
    monkeypatch.setattr(experiment, "kernel_capability",
                        lambda: {"cpu_capability": "OTHER", "vnni": not real["vnni"]})
    assert main.main([*args, "--phase", "quantization"]) == 2
    assert "would mix the two in one table" in capsys.readouterr().err
