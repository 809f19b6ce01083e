"""What each tensor is quantized with, and how a simulated model computes it fast.

The observers (``PercentileObserver`` beside torch's), QAT's straight-through fake quantizer,
the per-layer ``QConfig`` of a bit width and the x86 ``QConfigMapping`` of a method config
(``qconfig_mapping``); and for simulated models the ``fake_quantize`` op that replaces each
quantize -> dequantize pair of torch's decomposed reference graph, with fake-quantized weights
computed once (``fuse_fake_quantize_pairs``, ``reuse_fake_quantized_weights``). The engine
(``quantization``) builds its prepared graphs and conversions from these.
"""
from __future__ import annotations

import types

import torch
import torch.ao.quantization.quantize_fx  # noqa: F401  (registers the quantized_decomposed ops)
from torch import nn
from torch.ao.nn.quantized.reference.modules.utils import ReferenceQuantizedModule
from torch.ao.quantization import (
    QConfig,
    QConfigMapping,
    get_default_qat_qconfig_mapping,
    get_default_qconfig_mapping,
)
from torch.ao.quantization.fake_quantize import FakeQuantize, FixedQParamsFakeQuantize
from torch.ao.quantization.observer import (
    FixedQParamsObserver,
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
    ReuseInputObserver,
)
from torchvision.ops import SqueezeExcitation

from int8_kernels import BACKEND_ENGINE
from quant_inspect import check_layer_names


class PercentileObserver(HistogramObserver):
    """Histogram observer whose range is clipped at ``percentile`` (and ``100 - percentile``) of
    every value seen during calibration, e.g. 99.99 ignores the top 0.01% outliers."""

    def __init__(self, percentile: float = 99.99, **kwargs):
        super().__init__(**kwargs)
        self.percentile = percentile

    @torch.jit.export
    def calculate_qparams(self):
        if self.histogram.sum() == 0:  # nothing observed: let the parent warn and default
            return super().calculate_qparams()
        cdf = torch.cumsum(self.histogram, 0) / self.histogram.sum()
        edges = torch.linspace(self.min_val.item(), self.max_val.item(), self.bins + 1,
                               device=cdf.device)
        tail = 1 - self.percentile / 100
        low_bin, high_bin = torch.searchsorted(cdf, cdf.new_tensor([tail, 1 - tail])).clamp(
            max=self.bins - 1).tolist()
        return self._calculate_qparams(edges[low_bin], edges[high_bin + 1])


class _StraightThrough(torch.autograd.Function):
    """``fake_quantize`` of an activation with the straight-through gradient of
    ``torch.fake_quantize_per_tensor_affine`` (passed where the rounded value is in range, zero
    where it is clamped); tensor ``scale``/``zero_point`` as FakeQuantize holds them."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, low: int, high: int):
        levels = _levels(x, scale, zero_point)
        ctx.save_for_backward((levels >= low) & (levels <= high))
        return _from_levels(levels, scale, zero_point, low, high)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


class StraightThroughFakeQuantize(FakeQuantize):
    """``FakeQuantize`` whose per-tensor fake quantization runs as ``_StraightThrough``: the
    same values and gradients as torch's kernel, which takes about a third of a QAT step of
    ViT-Small (2-core AMD EPYC AVX2). Observer updates are FakeQuantize's own."""

    def forward(self, X):
        if self.is_per_channel or not self.fake_quant_enabled[0]:
            return super().forward(X)
        if self.observer_enabled[0]:
            self.activation_post_process(X.detach())
            scale, zero_point = self.calculate_qparams()
            self.scale.resize_(scale.shape).copy_(scale)
            self.zero_point.resize_(zero_point.shape).copy_(zero_point)
        return _StraightThrough.apply(X, self.scale, self.zero_point, self.quant_min,
                                      self.quant_max)


_OBSERVER_CLASSES = {"minmax": MinMaxObserver, "moving_average": MovingAverageMinMaxObserver,
                     "histogram": HistogramObserver, "percentile": PercentileObserver}


def _qconfig(weight_bits: int, act_bits: int, observer: str, percentile: float,
             qat: bool) -> QConfig:
    """Per-tensor affine unsigned activations, per-channel symmetric signed weights; observers
    for PTQ, FakeQuantize (straight-through gradients) around them for QAT."""
    activation = dict(observer=_OBSERVER_CLASSES[observer], dtype=torch.quint8,
                      qscheme=torch.per_tensor_affine, quant_min=0, quant_max=2**act_bits - 1)
    if observer == "percentile":
        activation["percentile"] = percentile
    weight = dict(observer=MovingAveragePerChannelMinMaxObserver if qat
                  else PerChannelMinMaxObserver, dtype=torch.qint8,
                  qscheme=torch.per_channel_symmetric, quant_min=-2**(weight_bits - 1),
                  quant_max=2**(weight_bits - 1) - 1)
    if qat:
        return QConfig(activation=StraightThroughFakeQuantize.with_args(**activation),
                       weight=FakeQuantize.with_args(**weight))
    return QConfig(activation=activation.pop("observer").with_args(**activation),
                   weight=weight.pop("observer").with_args(**weight))


def _keeps_backend_qconfig(qconfig: QConfig, act_bits: int) -> bool:
    """Backend entries to keep: shape ops that reuse their input's qparams, and (at 8-bit
    activations) ops with fixed output qparams such as sigmoid."""
    factory = getattr(qconfig.activation, "p", qconfig.activation)  # with_args wraps a partial
    cls = getattr(factory, "func", factory)
    if cls is FixedQParamsFakeQuantize or issubclass(cls, FixedQParamsObserver):
        return act_bits == 8
    return issubclass(cls, ReuseInputObserver)


# Squeeze-excitation gates (EfficientNet) stay float: quantized, their pooled inputs and per-channel
# sigmoid gates turn single rounding steps of the integer kernels into different predictions
# (real INT8 agreed with its twin on 84% of test images; with float gates on 99.8%, AVX2).
FLOAT_BLOCKS = (SqueezeExcitation,)


def qconfig_mapping(model: nn.Module, config, *, qat: bool = False) -> QConfigMapping:
    """The x86 QConfigMapping for ``config`` (a ``quantization.PTQStaticConfig``): its global
    bit widths, ``layer_bits`` overrides and ``fp32_layers`` (qconfig None), ``FLOAT_BLOCKS``
    kept float, with the backend's fixed-qparams/shape-op entries."""
    check_layer_names(model, dict(config.layer_bits), "layer_bits")
    check_layer_names(model, config.fp32_layers, "fp32_layers")

    def make(weight_bits: int) -> QConfig:
        return _qconfig(weight_bits, config.act_bits, config.observer, config.percentile, qat)

    mapping = QConfigMapping().set_global(make(config.weight_bits))
    backend = (get_default_qat_qconfig_mapping if qat else get_default_qconfig_mapping)(
        BACKEND_ENGINE)
    for op, qconfig in backend.object_type_qconfigs.items():
        if _keeps_backend_qconfig(qconfig, config.act_bits):
            mapping.set_object_type(op, qconfig)
    for name, module in model.named_modules():
        if isinstance(module, FLOAT_BLOCKS):
            mapping.set_module_name(name, None)
    for name, bits in config.layer_bits:
        mapping.set_module_name(name, make(bits))
    for name in config.fp32_layers:
        mapping.set_module_name(name, None)
    return mapping


# --------------------------------------------------------------------------- simulated models

_QUANTIZE = torch.ops.quantized_decomposed.quantize_per_tensor.default
_DEQUANTIZE = torch.ops.quantized_decomposed.dequantize_per_tensor.default


def fake_quantize(x: torch.Tensor, scale: float, zero_point: int, low: int,
                  high: int) -> torch.Tensor:
    """The decomposed reference's quantize -> dequantize of an activation, op for op (the same
    float32 results: round half to even, clamp, back to float), in place after the first op.
    About 15x faster than the pair of decomposed ops and 7x faster than
    ``torch.fake_quantize_per_tensor_affine`` on a ViT activation (2-core AMD EPYC AVX2)."""
    return _from_levels(_levels(x, scale, zero_point), scale, zero_point, low, high)


def _levels(x: torch.Tensor, scale, zero_point) -> torch.Tensor:
    """round(x / scale) + zero_point, unclamped, in a new tensor."""
    return torch.mul(x, 1.0 / scale).round_().add_(zero_point)


def _from_levels(levels: torch.Tensor, scale, zero_point, low: int, high: int) -> torch.Tensor:
    """Clamp integer ``levels`` to low..high and map them back to floats, in place."""
    return levels.clamp_(low, high).sub_(zero_point).mul_(scale)


def fuse_fake_quantize_pairs(model: torch.fx.GraphModule) -> None:
    """Replace each activation's quantize -> dequantize pair of the decomposed reference graph
    (elementwise passes, fresh tensors and two dtype copies) by one ``fake_quantize`` call with
    the same scale, zero point and integer range. Shared: ``quantization.convert_quantized``
    calls it on every simulated model."""
    graph = model.graph
    for node in list(graph.nodes):
        source = node.args[0] if node.target is _DEQUANTIZE else None
        if (source is None or getattr(source, "target", None) is not _QUANTIZE
                or len(source.users) != 1 or tuple(node.args[1:]) != tuple(source.args[1:])
                or not all(isinstance(a, (int, float)) for a in source.args[1:5])):
            continue
        value, scale, zero_point, low, high, _dtype = source.args
        with graph.inserting_before(node):
            fused = graph.call_function(fake_quantize, (value, scale, zero_point, low, high))
        node.replace_all_uses_with(fused)
        graph.erase_node(node)
        graph.erase_node(source)
    graph.lint()
    model.recompile()


def reuse_fake_quantized_weights(model: nn.Module) -> None:
    """A reference module quantizes and dequantizes its weight on every forward pass (about a
    third of a simulated model's prediction time); compute it once and again only when the
    weight or its quantization parameters change in place. Training (weights needing grad
    with grad enabled) still goes through the module's own ``get_weight``. Shared:
    ``quantization.convert_quantized`` calls it on every simulated model."""
    for module in model.modules():
        if isinstance(module, ReferenceQuantizedModule):
            module.get_weight = types.MethodType(_fake_quantized_weight, module)


def _fake_quantized_weight(module) -> torch.Tensor:
    compute = type(module).get_weight
    if torch.is_grad_enabled() and module.weight.requires_grad:
        return compute(module)
    key = (module.weight._version, module.weight_scale._version, module.weight_zero_point._version)
    cached = module.__dict__.get("_fake_quantized_weight")
    if cached is None or cached[0] != key:
        with torch.inference_mode(False), torch.no_grad():  # a tensor usable outside inference
            cached = (key, compute(module))
        module.__dict__["_fake_quantized_weight"] = cached
    return cached[1]
