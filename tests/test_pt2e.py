"""torch real INT8 by PT2E (torchao's x86 Inductor quantizer, ``torch.compile`` with freezing):
agreement with its twin at each range, ResNet's shared ReLU, bad input, the runtime's row.

Tests marked ``compile`` run Inductor (seconds each, once per range here); deselect them with
``-m 'not compile'``."""
import copy

import pytest
import torch
import torchvision
from torch.utils.data import DataLoader

import pt2e
import runtimes

SIZE = 16  # conftest.TINY_SIZE: the separable_images fixture's size
QUANTIZE_OPS = (torch.ops.quantized_decomposed.quantize_per_tensor.default,
                torch.ops.quantized_decomposed.quantize_per_tensor.tensor)
DEQUANTIZE_OPS = (torch.ops.quantized_decomposed.dequantize_per_tensor.default,
                  torch.ops.quantized_decomposed.dequantize_per_tensor.tensor)


def activation_maxima(program: torch.fx.GraphModule) -> set[int]:
    """The quant_max of every activation quantize op of a converted program."""
    return {int(node.args[4]) for node in program.graph.nodes if node.target in QUANTIZE_OPS}


@pytest.mark.compile
@pytest.mark.parametrize("activation_range", ["auto", "full", "reduced"])
def test_compiled_int8_agrees_with_its_twin_at_each_range(activation_range, separable_cnn,
                                                          separable_images, tmp_path):
    calibration = DataLoader(separable_images, batch_size=64)
    compiled = pt2e.pt2e_int8(separable_cnn, calibration, SIZE, tmp_path, 1,
                              activation_range=activation_range)
    expected = pt2e.resolve_range(activation_range)
    assert compiled.activation_range == expected
    assert activation_maxima(compiled.twin.program) == {255 if expected == "full" else 127}
    images = separable_images.tensors[0]
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


def test_an_unknown_range_is_refused_naming_the_value(separable_cnn, separable_images):
    with pytest.raises(ValueError, match=r"activation_range='7bit' is not supported by "
                                         r"torch_pt2e; supported: auto, full, reduced"):
        pt2e.quantize_pt2e(separable_cnn, DataLoader(separable_images, batch_size=64),
                           activation_range="7bit")


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
def test_the_quantization_phase_writes_a_torch_pt2e_row(static_w8a8_run):
    run_dir, table, _ = static_w8a8_run("[torch, torch_pt2e]", "models.architectures=[tiny_cnn]")
    assert set(table.index) == {"real_int8", "torch_pt2e_int8"}
    row = table.loc["torch_pt2e_int8"]
    assert row["status"] == "ok" and (run_dir / row["artifact"]).is_file()
    assert row["activation_range"] == pt2e.resolve_range("auto")
    assert {row["avx512_vnni"], row["avx_vnni"]} <= {True, False} and row["compile_s"] > 0
    assert row["agreement_with_own_twin"] >= 0.99 and row["agreement_with_simulated"] >= 0.9
    assert row["fp32_reference_b1"] == table.loc["real_int8", "fp32_reference_b1"]
    assert row["speedup_b1"] == pytest.approx(row["fp32_latency_ms_b1"] / row["latency_ms_b1"])
    assert "torch_pt2e" in runtimes.available_runtimes()


def squeeze_excitation_cnn() -> torch.nn.Module:
    """A stride-4 conv-BN-SiLU, a squeeze-excitation gate over its 4x4 map and a 1x1 head: the
    pattern of EfficientNet's blocks, random weights."""
    from torchvision.ops.misc import SqueezeExcitation
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, stride=4, padding=1), torch.nn.BatchNorm2d(32),
        torch.nn.SiLU(), SqueezeExcitation(32, 8), torch.nn.Conv2d(32, 2, 1),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()


@pytest.mark.compile
def test_squeeze_excitation_compiles_to_its_twin(separable_images, tmp_path):
    """A quantized average pool rounds the mean of 16 integers, often an exact .5 tie, which the
    twin and Inductor break differently: with the pools quantized, outputs here moved by up to
    0.055 std (the gate scales whole channels); with them float, by float rounding only."""
    images = separable_images.tensors[0]
    compiled = pt2e.pt2e_int8(squeeze_excitation_cnn(), [images], SIZE, tmp_path, 1)
    pools = [node for node in compiled.twin.program.graph.nodes
             if node.target == torch.ops.aten.adaptive_avg_pool2d.default]
    assert pools and all(node.args[0].target not in DEQUANTIZE_OPS for node in pools)
    with torch.inference_mode():
        real, twin = compiled(images), compiled.twin(images)
    assert (real - twin).abs().max() <= 0.02 * twin.std()
