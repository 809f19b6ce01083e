"""Work done once (issue 23): static PTQ's shared prepared and calibrated graphs and the runtimes'
reused FP32 exports give the same models, bit for bit, as doing the work again."""
import pytest
import torch
from torch.utils.data import DataLoader

import runtimes
from models import build_model
from quantization import (
    PTQStaticConfig,
    SharedGraphs,
    apply_quantization,
    copy_prepared,
    prepare_quantization,
    sharing,
)

SIZE = 16  # conftest.TINY_SIZE: the separable_images fixture's size


def images(n: int, seed: int, size: int = 32) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return list(torch.rand(n, 3, size, size, generator=generator).split(16))


@pytest.fixture(scope="module")
def squeezenet():
    """SqueezeNet at 32 px: its average pool is where the w8a8 twin needs its prepare facts."""
    torch.manual_seed(0)
    return build_model("squeezenet1_1", num_classes=2, image_size=32).eval()


def ptq(model, calibration, **options):
    return apply_quantization(model, "ptq_static", calibration_data=calibration, **options)


@pytest.mark.parametrize("execution", ["auto", "simulated"])
def test_the_twin_from_a_shared_calibration_is_the_twin_made_again(squeezenet, execution):
    calibration, test = images(48, 0), torch.cat(images(32, 1))
    fresh = ptq(squeezenet, calibration, bits="w8a8", execution=execution)
    with sharing(SharedGraphs()) as graphs:
        ptq(squeezenet, calibration, bits="w8a8")  # the unit; then its twin (or itself again)
        shared = ptq(squeezenet, calibration, bits="w8a8", execution=execution)
    assert graphs.reused == {"prepared": 0, "calibrated": 1}
    with torch.no_grad():
        assert torch.equal(shared(test), fresh(test))


def test_calibration_draws_share_one_prepared_graph(squeezenet):
    draws, test = [images(16, seed) for seed in (2, 3, 4)], torch.cat(images(32, 1))
    options = {"bits": "w8a4", "observer": "minmax"}
    fresh = [ptq(squeezenet, draw, **options) for draw in draws]
    with sharing(SharedGraphs()) as graphs:
        shared = [ptq(squeezenet, draw, **options) for draw in draws]
    assert graphs.reused == {"prepared": 1, "calibrated": 0}  # kept from the second draw on
    with torch.no_grad():
        for one, other in zip(shared, fresh):
            assert torch.equal(one(test), other(test))
        assert not torch.equal(shared[0](test), shared[1](test))  # the draws were calibrated apart


def test_other_weights_are_not_taken_for_the_same_model(squeezenet):
    calibration = images(16, 0)
    changed = build_model("squeezenet1_1", num_classes=2, image_size=32).eval()
    with sharing(SharedGraphs()) as graphs:
        ptq(squeezenet, calibration, bits="w8a8")
        ptq(changed, calibration, bits="w8a8")
    assert graphs.reused == {"prepared": 0, "calibrated": 0}


def test_a_copied_prepared_graph_keeps_what_convert_reads():
    prepared = prepare_quantization(build_model("mobilenet_v2", num_classes=2, image_size=32),
                                    PTQStaticConfig(bits="w8a8"), images(2, 0)[0])
    copied = copy_prepared(prepared)
    assert copied.integer_twin is True and copied.narrowed_inputs == prepared.narrowed_inputs
    assert copied.narrowed_inputs  # MobileNetV2's depthwise inputs: something to keep


def test_an_int8_model_from_the_reused_onnx_export_is_the_one_exported_again(
        separable_cnn, separable_images, tmp_path):
    calibration = DataLoader(separable_images, batch_size=32)
    fp32 = runtimes.fp32_runtime_model("onnxruntime", separable_cnn, SIZE, tmp_path / "fp32",
                                       threads=1)
    shared, fresh = (runtimes.quantize_with_runtime("onnxruntime", separable_cnn, calibration,
                                                    SIZE, tmp_path / folder, threads=1, fp32=given)
                     for folder, given in (("shared", fp32), ("fresh", None)))
    files = sorted(path.name for path in (tmp_path / "fresh").iterdir())
    assert files == ["fp32.onnx", "fp32.onnx.data", "int8.onnx"]
    assert sorted(path.name for path in (tmp_path / "shared").iterdir()) == files
    for name in files:
        assert (tmp_path / "shared" / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes()
    test = separable_images.tensors[0][:32]
    with torch.no_grad():
        assert torch.equal(shared(test), fresh(test))


def test_the_fp32_reference_times_each_candidate_once(separable_cnn, tmp_path, monkeypatch):
    """It used to time the FP32 model a second time, as latency_report's quantized model, and
    throw that measurement away."""
    import evaluation
    from config import load_config
    from experiment import Baselines

    timed = []
    monkeypatch.setattr(evaluation, "measure_latency",
                        lambda model, size, n, channels_last=False, **_: timed.append(
                            (n, channels_last)) or 1.0 + channels_last)
    cfg = load_config("configs/smoke.yaml", ["runtime.backends=[torch]",
                                             "runtime.latency_batch_sizes=[1, 4]"])
    reference = Baselines(cfg, tmp_path).fp32_reference("tiny_cnn", separable_cnn)
    assert reference == {1: (1.0, "torch_contiguous"), 4: (1.0, "torch_contiguous")}
    assert sorted(timed) == [(1, False), (1, True), (4, False), (4, True)]
