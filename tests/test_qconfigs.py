"""Tests of qconfigs: the observers, QAT's straight-through fake quantizer and the simulated
model's fast fake quantization, against what torch computes without them."""

import copy

import pytest
import torch
from torch import nn
from torch.ao.quantization.quantize_fx import _convert_to_reference_decomposed_fx

import qconfigs
import quantization
from models import build_model
from qconfigs import PercentileObserver
from quantization import PTQStaticConfig
from test_quantization import SIZE, loader, ptq, toy_data


@pytest.fixture(scope="module")
def data():
    return toy_data()


def test_percentile_observer_clips_outliers_that_minmax_keeps():
    values = torch.cat([torch.rand(100_000), torch.tensor([1000.0])])
    kwargs = dict(dtype=torch.quint8, quant_min=0, quant_max=255)
    percentile = PercentileObserver(percentile=99.9, **kwargs)
    percentile(values)
    scale, _ = percentile.calculate_qparams()
    minmax = torch.ao.quantization.MinMaxObserver(**kwargs)
    minmax(values)
    assert scale.item() * 255 < 1.5 < minmax.calculate_qparams()[0].item() * 255


def _plain_reference(model, data, bits):
    """The decomposed reference model as torch builds it, without this module's speed-ups."""
    first, batches = next(iter(loader(data)))[0], (batch[0] for batch in loader(data))
    prepared = quantization.prepare_quantization(
        model.cpu(), PTQStaticConfig(bits=bits, observer="minmax"), first)
    quantization.calibrate(prepared, batches)
    prepared.apply(torch.ao.quantization.disable_observer)
    return _convert_to_reference_decomposed_fx(prepared).eval()


@pytest.mark.parametrize("arch, bits", [("tiny_cnn", "w4a8"), ("tiny_cnn", "w8a4"),
                                        ("tiny_vit", "w4a4")])
def test_a_fast_simulated_model_computes_the_reference_bit_for_bit(data, arch, bits):
    torch.manual_seed(0)
    model = build_model(arch, image_size=SIZE).eval()
    fast = ptq(model, data, bits=bits)
    plain = _plain_reference(copy.deepcopy(model), data, bits)
    targets = {node.target for node in fast.graph.nodes}
    assert qconfigs._QUANTIZE not in targets and qconfigs._DEQUANTIZE not in targets
    assert qconfigs.fake_quantize in targets
    images = data.tensors[0][:64] * 3  # past the calibrated range too: the clamp must match
    with torch.inference_mode():
        assert torch.equal(fast(images), plain(images))


def test_a_cached_fake_quantized_weight_follows_an_in_place_change(data):
    torch.manual_seed(0)
    fast = ptq(build_model("tiny_cnn", image_size=SIZE).eval(), data, bits="w4a8")
    layer = next(m for m in fast.modules() if "get_weight" in m.__dict__)
    with torch.no_grad():  # where the cache is used
        before = layer.get_weight()
        assert layer.get_weight() is before
        layer.weight.mul_(-1)
        after = layer.get_weight()
        assert not torch.equal(after, before)
        assert torch.equal(after, type(layer).get_weight(layer))


def test_straight_through_fake_quantize_matches_torchs_values_and_gradients():
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 8, 5, 5, generator=generator) * 3).requires_grad_()
    scale, zero_point = torch.tensor([0.05]), torch.tensor([7], dtype=torch.int32)
    ours = qconfigs._StraightThrough.apply(x, scale, zero_point, 0, 15)
    theirs = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 15)
    assert torch.equal(ours, theirs)
    weights = torch.randn(x.shape, generator=generator)
    (ours_grad,) = torch.autograd.grad((ours * weights).sum(), x)
    (theirs_grad,) = torch.autograd.grad((theirs * weights).sum(), x)
    assert torch.equal(ours_grad, theirs_grad) and (ours_grad == 0).any()  # some were clamped


def test_qat_trains_to_the_same_weights_as_with_torchs_fake_quantize(monkeypatch):
    images = torch.randn(16, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(16) % 2

    def train():
        torch.manual_seed(0)
        prepared = quantization.prepare_quantization(build_model("tiny_cnn", image_size=SIZE),
                                                     quantization.QATConfig(bits="w8a4"),
                                                     images[:2], qat=True)
        optimizer = torch.optim.SGD(prepared.parameters(), lr=0.1)
        for _ in range(3):
            optimizer.zero_grad()
            nn.functional.cross_entropy(prepared(images), labels).backward()
            optimizer.step()
        return prepared.state_dict()

    ours = train()
    monkeypatch.setattr(qconfigs.StraightThroughFakeQuantize, "forward",
                        torch.ao.quantization.FakeQuantize.forward)
    theirs = train()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)
