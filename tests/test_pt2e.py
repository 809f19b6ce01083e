"""torch real INT8 by PT2E (torchao's x86 Inductor quantizer, ``torch.compile`` with freezing):
agreement with its twin at each range, ResNet's shared ReLU, bad input, the runtime's row.

Tests marked ``compile`` run Inductor (seconds each, once per range here); deselect them with
``-m 'not compile'``."""
import copy

import pandas as pd
import pytest
import torch
import torchvision
from torch.utils.data import DataLoader, TensorDataset

import main
import pt2e
import runtimes
from models import build_model
from training import fit

SIZE = 16
QUANTIZE_OPS = (torch.ops.quantized_decomposed.quantize_per_tensor.default,
                torch.ops.quantized_decomposed.quantize_per_tensor.tensor)


@pytest.fixture(scope="module")
def data():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (192,), generator=generator)
    images = torch.randn(192, 3, SIZE, SIZE, generator=generator) * 0.5
    images += (labels.float() * 2 - 1).view(-1, 1, 1, 1) * 0.5
    return TensorDataset(images, labels, torch.zeros(192, dtype=torch.long), torch.arange(192))


@pytest.fixture(scope="module")
def trained(data):
    torch.manual_seed(0)
    model = build_model("tiny_cnn", image_size=SIZE)
    fit(model,
        DataLoader(data, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0)),
        epochs=3, lr=1e-2, device="cpu", progress=False)
    return model.eval()


def activation_maxima(program: torch.fx.GraphModule) -> set[int]:
    """The quant_max of every activation quantize op of a converted program."""
    return {int(node.args[4]) for node in program.graph.nodes if node.target in QUANTIZE_OPS}


@pytest.mark.compile
@pytest.mark.parametrize("activation_range", ["auto", "full", "reduced"])
def test_compiled_int8_agrees_with_its_twin_at_each_range(activation_range, trained, data,
                                                          tmp_path):
    calibration = DataLoader(data, batch_size=64)
    compiled = pt2e.pt2e_int8(trained, calibration, SIZE, tmp_path, 1,
                              activation_range=activation_range)
    expected = pt2e.resolve_range(activation_range)
    assert compiled.activation_range == expected
    assert activation_maxima(compiled.twin.program) == {255 if expected == "full" else 127}
    images = data.tensors[0]
    with torch.inference_mode():
        real, twin = compiled(images), compiled.twin(images)
    assert not torch.equal(real, twin)  # the compiled model is not the float program again
    agreement = (real.argmax(1) == twin.argmax(1)).float().mean().item()
    assert agreement >= 0.99, f"{activation_range}: {agreement:.3f}"
    assert (real - twin).abs().max() <= 0.25 * twin.std()
    assert compiled.compile_s > 0 and all(path.is_file() for path in compiled.files)


def test_auto_is_the_fx_paths_range_for_this_cpu():
    from quantization import default_activation_range
    assert pt2e.resolve_range("auto") == default_activation_range()
    assert set(pt2e.cpu_flags()) == {"avx512_vnni", "avx_vnni"}


def test_an_unknown_range_is_refused_naming_the_value(trained, data):
    with pytest.raises(ValueError, match=r"activation_range='7bit' is not supported by "
                                         r"torch_pt2e; supported: auto, full, reduced"):
        pt2e.quantize_pt2e(trained, DataLoader(data, batch_size=64), activation_range="7bit")


def test_resnet_shared_relu_quantizes_and_leaves_the_model_unchanged():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=2).eval()
    state, structure = copy.deepcopy(model.state_dict()), repr(model)
    relu = model.layer1[0].relu
    split = pt2e.split_shared_activations(model)
    targets = [node.target for node in split.graph.nodes if node.op == "call_module"
               and str(node.target).startswith("layer1.0.relu")]
    assert len(targets) == len(set(targets)) == 2  # each call its own module
    images = torch.randn(8, 3, 32, 32)
    converted = pt2e.quantize_pt2e(model, [images])  # raises without the split
    with torch.no_grad():
        assert converted(images).shape == (8, 2)
    assert repr(model) == structure and model.layer1[0].relu is relu
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(state[key], value) for key, value in model.state_dict().items())
    assert not model.training


def test_the_quantizer_still_needs_the_split():
    """The torchao bug the split works around; when this fails, torchao fixed it."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e
    model = torchvision.models.resnet18(num_classes=2).eval()
    program = torch.export.export(model, (torch.randn(2, 3, 32, 32),)).module()
    with pytest.raises(ValueError, match="more than one output node"):
        prepare_pt2e(program, pt2e.quantizer("full"))


@pytest.mark.compile
def test_the_quantization_phase_writes_a_torch_pt2e_row(tmp_path):
    args = ["--config", "configs/smoke.yaml", "--set", f"results_dir={tmp_path / 'results'}",
            "--set", f"data.root={tmp_path / 'data'}", "--set", "models.architectures=[tiny_cnn]",
            "--set", "quantization.methods=[{method: ptq_static, bits: [w8a8]}]",
            "--set", "runtime.backends=[torch, torch_pt2e]",
            "--set", "runtime.latency_repeats=2", "--set", "runtime.latency_batch_sizes=[1]"]
    assert main.main([*args, "--phase", "baseline"]) == 0
    assert main.main([*args, "--phase", "quantization"]) == 0
    run_dir = tmp_path / "results" / "smoke"
    table = pd.read_csv(run_dir / "quantization_results.csv").set_index("execution")
    assert set(table.index) == {"real_int8", "torch_pt2e_int8"}
    row = table.loc["torch_pt2e_int8"]
    assert row["status"] == "ok" and (run_dir / row["artifact"]).is_file()
    assert row["activation_range"] == pt2e.resolve_range("auto")
    assert {row["avx512_vnni"], row["avx_vnni"]} <= {True, False} and row["compile_s"] > 0
    assert row["agreement_with_own_twin"] >= 0.99 and row["agreement_with_simulated"] >= 0.9
    assert row["fp32_reference_b1"] == table.loc["real_int8", "fp32_reference_b1"]
    assert row["speedup_b1"] == pytest.approx(row["fp32_latency_ms_b1"] / row["latency_ms_b1"])
    assert "torch_pt2e" in runtimes.available_runtimes()
