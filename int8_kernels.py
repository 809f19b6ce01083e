"""What this CPU's x86 integer kernels compute exactly, and the activation ranges that keep them
exact (see ``quantization``'s docstring, "Activation ranges follow the CPU").

``kernel_capability`` reads the CPU; ``narrow_integer_inputs`` sets 7-bit ranges along the input
chain of every integer conv and linear that would saturate; ``clamp_inputs`` makes the real
integer model clamp there as its simulated twin does; ``isolated_torch_state`` runs code on the
x86 engine and restores global torch state after.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterable

import torch
from torch import nn
from torch.ao.nn import quantized as nnq
from torch.ao.nn.intrinsic import _FusedModule
from torch.ao.nn.quantized.modules.conv import _ConvNd as _QuantizedConvNd
from torch.ao.quantization.fake_quantize import FakeQuantizeBase
from torch.ao.quantization.observer import HistogramObserver, ObserverBase

BACKEND_ENGINE = "x86"

def kernel_capability() -> dict:
    """What the x86 integer kernels of this CPU can do: torch's ``cpu_capability`` (e.g.
    ``AVX2``, ``AVX512``) and whether AVX-512 VNNI is present (``vnni``), which fbgemm's GEMM and
    oneDNN's convs need to accumulate u8 x s8 products in int32 instead of int16 pairs."""
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "vnni": bool(torch.cpu._is_vnni_supported())}


def default_activation_range() -> str:
    """``'full'`` (0..255 activations) where VNNI kernels cannot saturate, else ``'reduced'``
    (0..127 at the inputs of every integer conv and linear)."""
    return "full" if kernel_capability()["vnni"] else "reduced"


# torch.ao still works in this torch; its deprecation notices would drown the log.
_DEPRECATION_NOTICES = (".*torch.ao.quantization is deprecated",
                        ".*quantized tensor creation functions .* are deprecated")


@contextlib.contextmanager
def isolated_torch_state(threads: int | None = None):
    """Run with the x86 engine (and ``threads``), restoring engine and thread count after.
    Shared: ``quantization`` and ``quant_inspect`` run their torch work inside it."""
    engine, num_threads = torch.backends.quantized.engine, torch.get_num_threads()
    try:
        torch.backends.quantized.engine = BACKEND_ENGINE
        if threads:
            torch.set_num_threads(threads)
        with warnings.catch_warnings():
            for message in _DEPRECATION_NOTICES:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        torch.backends.quantized.engine = engine
        torch.set_num_threads(num_threads)


def share_dropout_quantizers(prepared: torch.fx.GraphModule) -> None:
    """Give each dropout's output the quantizer of its input.

    The backend observes a dropout's output separately, but the integer model runs eval-mode
    dropout as the identity and keeps its input's scale; after pooling the two ranges differ
    (MobileNet's and EfficientNet's heads), and the twin would quantize on a finer grid than the
    deployed model. Sharing the quantizer makes both use the input's. Shared: called by
    ``quantization.prepare_quantization``."""
    replaced = {}  # id(dropout's own quantizer) -> its input's quantizer
    for node in prepared.graph.nodes:
        if not _is_quantizer(prepared, node):
            continue
        quantizer = prepared.get_submodule(node.target)
        op = node.args[0] if node.args else None
        if isinstance(op, torch.fx.Node) and _is_dropout(prepared, op) and op.args:
            source = op.args[0]
            if isinstance(source, torch.fx.Node) and _is_quantizer(prepared, source):
                replaced[id(quantizer)] = prepared.get_submodule(source.target)
        if id(quantizer) in replaced:  # also where a later op shares the dropout's quantizer
            prepared.add_submodule(str(node.target), replaced[id(quantizer)])


def _is_dropout(model: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(model.get_submodule(node.target), (nn.Dropout, nnq.Dropout))
    return node.op == "call_function" and node.target is nn.functional.dropout


FBGEMM_MIN_GROUPS = 101  # the x86 engine hands convs with more groups than 100 to fbgemm
# 7-bit u8 inputs: 2 * 127 * 128 <= 32767, so int16 pair sums cannot saturate
NARROW_QUANT_MAX = 127
_FLOAT_WEIGHT_OPS = (nn.modules.conv._ConvNd, nn.Linear)
_INT_WEIGHT_OPS = (_QuantizedConvNd, nnq.Linear)


def _takes_narrow_input(module: nn.Module, activation_range: str) -> bool:
    """Whether the input of ``module`` (float, fused or quantized) gets the 7-bit range: every
    conv/linear under ``'reduced'``, only fbgemm's depthwise convs under ``'full'``."""
    if isinstance(module, _FusedModule):
        module = module[0]
    if not isinstance(module, _FLOAT_WEIGHT_OPS + _INT_WEIGHT_OPS):
        return False
    return activation_range == "reduced" or getattr(module, "groups", 1) >= FBGEMM_MIN_GROUPS


# Ops whose integer version keeps its input's scale and zero point and never raises its maximum:
# the 7-bit range of a conv/linear input is set where the chain through them starts.
_PASS_THROUGH_MODULES = (nn.Identity, nn.Dropout, nnq.Dropout, nn.Flatten, nn.ReLU, nn.ReLU6,
                         nn.Hardtanh, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
                         nn.modules.pooling._AdaptiveAvgPoolNd)
_PASS_THROUGH_FUNCTIONS = (torch.flatten, torch.reshape, torch.transpose, torch.squeeze,
                           torch.unsqueeze, torch.mean, torch.relu, nn.functional.relu,
                           nn.functional.relu6, nn.functional.hardtanh, nn.functional.dropout,
                           nn.functional.max_pool2d, nn.functional.avg_pool2d,
                           nn.functional.adaptive_avg_pool2d)
_PASS_THROUGH_METHODS = ("flatten", "reshape", "view", "transpose", "permute", "contiguous",
                         "squeeze", "unsqueeze", "mean", "relu", "relu_", "detach")


def _is_pass_through(model: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(model.get_submodule(node.target), _PASS_THROUGH_MODULES)
    if node.op == "call_function":
        return node.target in _PASS_THROUGH_FUNCTIONS
    return node.op == "call_method" and node.target in _PASS_THROUGH_METHODS


def _is_quantizer(model: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    return node.op == "call_module" and isinstance(model.get_submodule(node.target),
                                                   (ObserverBase, FakeQuantizeBase))


def _input_chain(model: torch.fx.GraphModule, node: torch.fx.Node) -> list[torch.fx.Node]:
    """The first argument of ``node``, then back through quantizers and pass-through ops to
    (and including) the op that produced the tensor."""
    chain, current = [], node.args[0] if node.args else None
    while isinstance(current, torch.fx.Node):
        chain.append(current)
        if not (_is_quantizer(model, current) or _is_pass_through(model, current)):
            break
        current = current.args[0] if current.args else None
    return chain


def narrow_integer_inputs(prepared: torch.fx.GraphModule, activation_range: str) -> list[str]:
    """Give the input of every conv/linear that ``activation_range`` names (see
    ``_takes_narrow_input``) the range 0..127; returns those layers' names.

    fbgemm's depthwise kernels add pairs of u8 x s8 products in int16 (``vpmaddubsw``) on every
    CPU; without VNNI so do oneDNN's convs and fbgemm's GEMM. 2 * 255 * 127 > 32767 saturates;
    2 * 127 * 128 cannot. Every quantizer on the input's chain back to its producer is narrowed
    (the integer model keeps the producer's scale through dropout, pooling, reshapes), so both
    executions, which come from this prepared graph, use the same levels; a shared quantizer
    narrows that tensor for every consumer, as ``convert_quantized``'s clamp does. Shared:
    ``quantization.prepare_quantization`` calls it.
    """
    narrowed = []
    for node in prepared.graph.nodes:
        if node.op != "call_module" or not node.args:
            continue
        if not _takes_narrow_input(prepared.get_submodule(node.target), activation_range):
            continue
        quantizers = [item for item in _input_chain(prepared, node)
                      if _is_quantizer(prepared, item)]
        for item in quantizers:
            _narrow_activation_range(prepared.get_submodule(item.target), NARROW_QUANT_MAX)
        if quantizers:
            narrowed.append(str(node.target))
    return narrowed


class QuantizedRangeClamp(nn.Module):
    """Clamp a quint8 tensor to the integer levels 0..``quant_max`` (same scale and zero point).

    ``convert_fx`` turns an observer narrowed to 0..127 into scale/zero point only: its
    ``quantize_per_tensor`` and the integer ops that produce the tensor clamp to 0..255, so
    values above the calibrated maximum reach 128..255, which the reference twin clamps to 127
    (and which the int16 pair sums could saturate on). This module restores the range."""

    def __init__(self, quant_max: int = NARROW_QUANT_MAX):
        super().__init__()
        self.quant_max = quant_max

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (isinstance(x, torch.Tensor) and x.is_quantized):
            return x
        return torch.clamp(x, max=(self.quant_max - x.q_zero_point()) * x.q_scale())

    def extra_repr(self) -> str:
        return f"quant_max={self.quant_max}"


def clamp_inputs(model: torch.fx.GraphModule, layers: Iterable[str]) -> list[str]:
    """In a ``convert_fx`` model, clamp the quantized input of each of ``layers`` (the names
    ``narrow_integer_inputs`` returned) to 0..127. The clamp follows the op that produced the
    tensor (before any pass-through op) and replaces all its uses, as the twin's narrowed
    quantizers do for every consumer.
    Returns the names of the inserted clamps. Shared: ``quantization.convert_quantized``
    calls it."""
    layers, graph = set(layers), getattr(model, "graph", None)
    if graph is None or not layers:
        return []
    clamped, names = set(), []
    for node in list(graph.nodes):
        if node.op != "call_module" or str(node.target) not in layers or not node.args:
            continue
        chain = _input_chain(model, node)
        source = chain[-1] if chain else None
        if source is None or source in clamped:
            continue
        name = f"{str(node.target).replace('.', '_')}_input_clamp"
        model.add_submodule(name, QuantizedRangeClamp())
        with graph.inserting_after(source):
            clamp = graph.call_module(name, (source,))
        source.replace_all_uses_with(clamp, delete_user_cb=lambda user: user is not clamp)
        clamped.add(source)
        names.append(name)
    if names:
        graph.lint()
        model.recompile()
    return names


def _narrow_activation_range(quantizer: nn.Module, quant_max: int) -> None:
    """Set an activation observer's (and its fake quantizer's) quant_max; a histogram observer's
    error search then aims at that many levels."""
    for module in (quantizer, getattr(quantizer, "activation_post_process", None)):
        if module is None or not hasattr(module, "quant_max"):
            continue
        module.quant_max = min(int(module.quant_max), quant_max)
        if hasattr(module, "has_customized_qrange"):
            module.has_customized_qrange = True
        if isinstance(module, HistogramObserver):
            module.dst_nbins = module.quant_max - module.quant_min + 1


# Average pooling of a quantized tensor: x86's integer kernels (quantized avg_pool2d and
# adaptive_avg_pool2d, which keep the input's scale and zero point) sum the u8 levels and round
# the mean half to even: the raw levels for an NCHW tensor, the levels less the zero point for a
# channels-last one (the layout of every integer conv's output). The reference twin averages the
# dequantized floats and rounds that, so where the mean of the levels is a tie (x.5) float error
# picks the side: 3-20% of the pooled values of a 2x2 map differed by one level (EfficientNet-B0's
# and MobileNetV2's heads).
_AVERAGE_POOL_MODULES = (nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd)
_AVERAGE_POOL_FUNCTIONS = (nn.functional.avg_pool2d, nn.functional.adaptive_avg_pool2d)


class AveragePoolInLevels(nn.Module):
    """``pool`` (an average-pool module or function, with its extra arguments) of a
    fake-quantized tensor computed as x86's integer kernel does: the mean of its levels (with the
    zero point for NCHW tensors, without it for channels-last ones), rounded half to even, back
    on the same grid (scale, zero point)."""

    def __init__(self, pool, scale: float, zero_point: int, args: tuple = (), kwargs=None):
        super().__init__()
        self.pool, self.scale, self.zero_point = pool, float(scale), int(zero_point)
        self.args, self.kwargs = tuple(args), dict(kwargs or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = torch.round(x.double() / self.scale)  # level - zero point, exact
        # the channels-last kernel averages levels less the zero point, the NCHW one raw levels
        centred = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
            memory_format=torch.channels_last)
        offset = 0 if centred else self.zero_point
        mean = self.pool(levels + offset, *self.args, **self.kwargs)
        halves = torch.round(mean * 2)
        mean = torch.where((mean * 2 - halves).abs() < 1e-6, halves / 2, mean)  # exact ties
        levels = (torch.round(mean) - offset).to(x.dtype)  # level - zero point
        return levels.mul_(self.scale)  # as the twin's fake_quantize and dequantize do

    def extra_repr(self) -> str:
        return f"scale={self.scale}, zero_point={self.zero_point}"


def average_pools_in_levels(model: torch.fx.GraphModule, fake_quantize) -> list[str]:
    """In a simulated (reference) model whose activations pass through ``fake_quantize`` calls,
    make every average pool between two fake quantizers with the same grid compute as x86's
    integer kernel (``AveragePoolInLevels``). Returns the names of the pools changed. Shared:
    ``quantization.convert_quantized`` calls it."""
    changed = []
    for node in list(model.graph.nodes):
        if node.op == "call_module":
            if not isinstance(model.get_submodule(node.target), _AVERAGE_POOL_MODULES):
                continue
            pool = model.get_submodule(node.target)
        elif node.op == "call_function" and node.target in _AVERAGE_POOL_FUNCTIONS:
            pool = node.target
        else:
            continue
        source, users = node.args[0] if node.args else None, list(node.users)
        if not (isinstance(source, torch.fx.Node) and source.target is fake_quantize
                and len(users) == 1 and users[0].target is fake_quantize
                and tuple(users[0].args[1:]) == tuple(source.args[1:])
                and all(not isinstance(a, torch.fx.Node) for a in node.args[1:])):
            continue
        name = f"{node.name}_in_levels"
        model.add_submodule(name, AveragePoolInLevels(pool, *source.args[1:3], node.args[1:],
                                                      node.kwargs))
        with model.graph.inserting_before(node):
            exact = model.graph.call_module(name, (source,))
        node.replace_all_uses_with(exact)
        model.graph.erase_node(node)
        changed.append(name)
    if changed:
        model.graph.lint()
        model.recompile()
    return changed


# Convs and linears of a w8a8 twin computed as the integer kernels do. The reference twin
# convolves dequantized floats in float32 and rounds the result; the kernels accumulate the
# integer products exactly in int32 and requantize with their own float32 arithmetic. Where the
# two land on different sides of a rounding boundary (3e-6 to 1e-5 of the outputs of a fresh
# MobileNetV2 or EfficientNet-B0 layer) the outputs differ by one level, and in a network with
# fresh weights such single-level differences multiply from layer to layer until the logits
# differ by about their own standard deviation. Requantization, measured against the kernels of
# an AVX-512 VNNI Xeon (see docs/int8.md):
#   oneDNN (x86 convs with at most 100 groups, on VNNI CPUs), with the input scale as torch hands
#   it over (the reciprocal of its reciprocal, s_in' = 1 / float(1 / s_in), float32):
#       regular and grouped convs: q = round((float(acc) * (s_in' * s_w) + bias) / s_out + zp_out)
#       depthwise convs:           q = round((float(acc) * s_in' * s_w + bias) / s_out + zp_out)
#   fbgemm (depthwise convs with more than 100 groups, linears, every conv without VNNI):
#       q = round((float(acc) + bias / M) * (M / s_out)) + zp_out, M = s_in * s_w (float32)
# each product and sum rounded to float32 in the order written, "/ s_out" a multiplication by
# float32(1 / s_out); round half to even, then the clamp to the output range (and to zp_out after
# a fused ReLU).
ONEDNN, ONEDNN_DEPTHWISE, FBGEMM = "onednn", "onednn_depthwise", "fbgemm"


def conv_kernel(module: nn.Module, vnni: bool | None = None) -> str:
    """Which kernel runs ``module`` (a conv or linear) in the x86 engine on this CPU: ``ONEDNN``,
    ``ONEDNN_DEPTHWISE`` or ``FBGEMM``."""
    if vnni is None:
        vnni = kernel_capability()["vnni"]
    if isinstance(module, nn.modules.conv._ConvNd) and vnni and module.groups < FBGEMM_MIN_GROUPS:
        depthwise = 1 < module.groups == module.in_channels == module.out_channels
        return ONEDNN_DEPTHWISE if depthwise else ONEDNN
    return FBGEMM


class IntegerKernelLayer(nn.Module):
    """A reference conv or linear of a w8a8 twin (with an optional fused ReLU) that computes its
    output levels as the x86 integer kernel does: exact integer accumulation, the kernel's
    float32 requantization, and the output grid of the quantizer that follows it."""

    def __init__(self, layer: nn.Module, relu: bool, in_scale: float, out_scale: float,
                 out_zero_point: int, out_min: int, out_max: int, kernel: str):
        super().__init__()
        self.layer, self.relu, self.kernel = layer, relu, kernel
        self.in_scale, self.out_scale = float(in_scale), float(out_scale)
        self.out_zero_point, self.out_min, self.out_max = int(out_zero_point), out_min, out_max

    def _integer_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        layer = self.layer
        weight = layer.weight.detach().float()
        scales = layer.weight_scale.detach().float()
        if layer.weight_qscheme in (torch.per_channel_affine, torch.per_channel_symmetric):
            axis = int(layer.weight_axis)
            levels = torch.quantize_per_channel(weight, scales, layer.weight_zero_point.long(),
                                                axis, torch.qint8).int_repr()
            shape = [1] * weight.dim()
            shape[axis] = -1
            scales = scales.view(shape)
        else:
            levels = torch.quantize_per_tensor(weight, float(scales), int(layer.weight_zero_point),
                                               torch.qint8).int_repr()
        return levels.double(), scales.flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        levels = torch.round(x.double() / self.in_scale)  # input level - its zero point, exact
        weight, scales = self._integer_weight()
        if isinstance(layer, nn.Linear):
            acc = nn.functional.linear(levels, weight)
            view = (1,) * (acc.dim() - 1) + (-1,)
        else:
            conv = getattr(nn.functional, f"conv{weight.dim() - 2}d")
            acc = conv(levels, weight, None, layer.stride, layer.padding, layer.dilation,
                       layer.groups)
            view = (1, -1) + (1,) * (acc.dim() - 2)
        out = self._requantize(acc.float(), scales.view(view), self._bias(view))
        out = out.clamp_(self.out_min, self.out_max)
        if self.relu:
            out = out.clamp_(min=self.out_zero_point)
        out = out.sub_(self.out_zero_point).mul_(self.out_scale)
        if out.dim() == 4:  # the kernels' outputs are channels-last: float ops after them
            out = out.contiguous(memory_format=torch.channels_last)  # sum in the same order
        return out

    def _bias(self, view: tuple) -> torch.Tensor:
        bias = self.layer.bias
        return torch.zeros(()) if bias is None else bias.detach().float().view(view)

    def _requantize(self, acc: torch.Tensor, weight_scales: torch.Tensor,
                    bias: torch.Tensor) -> torch.Tensor:
        """Output levels from the float32 accumulator, in the kernel's own float32 order."""
        in_scale = torch.tensor(self.in_scale, dtype=torch.float32)
        out_scale = torch.tensor(self.out_scale, dtype=torch.float32)
        if self.kernel == FBGEMM:  # adds bias / M to the accumulator, multiplies by M / s_out
            multiplier = in_scale * weight_scales
            return torch.round((acc + bias / multiplier) * (multiplier / out_scale)) + (
                self.out_zero_point)
        # torch hands oneDNN 1 / s_in (computed in double), which oneDNN inverts in float32
        in_scale = 1 / torch.tensor(1 / self.in_scale, dtype=torch.float32)
        if self.kernel == ONEDNN_DEPTHWISE:  # applies the two scales one after the other
            scaled = acc * in_scale * weight_scales
        else:  # applies their product
            scaled = acc * (in_scale * weight_scales)
        return torch.round((scaled + bias) * (1 / out_scale) + self.out_zero_point)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, relu={self.relu}"


def integer_kernel_layers(model: torch.fx.GraphModule, fake_quantize) -> list[str]:
    """In a w8a8 twin (reference model with ``fake_quantize`` calls), replace every reference
    conv or linear whose input and output pass through ``fake_quantize`` by an
    ``IntegerKernelLayer``. Returns the names of the layers replaced. Shared:
    ``quantization.convert_quantized`` calls it."""
    from torch.ao.nn.quantized.reference.modules.utils import ReferenceQuantizedModule
    vnni, changed = kernel_capability()["vnni"], []
    for node in list(model.graph.nodes):
        if node.op != "call_module" or not node.args:
            continue
        module = model.get_submodule(node.target)
        relu = isinstance(module, _FusedModule) and len(module) == 2 and isinstance(
            module[1], nn.ReLU)
        layer = module[0] if relu else module
        if not (isinstance(layer, ReferenceQuantizedModule)
                and isinstance(layer, _FLOAT_WEIGHT_OPS)):
            continue
        if isinstance(module, _FusedModule) and not relu:
            continue
        source, users = node.args[0], list(node.users)
        while (isinstance(source, torch.fx.Node) and source.target is not fake_quantize
               and _is_pass_through(model, source) and source.args):
            source = source.args[0]
        if not (isinstance(source, torch.fx.Node) and source.target is fake_quantize
                and len(users) == 1 and users[0].target is fake_quantize):
            continue
        _, out_scale, out_zero_point, out_min, out_max = users[0].args[:5]
        name = f"{node.name}_integer"
        model.add_submodule(name, IntegerKernelLayer(layer, relu, source.args[1], out_scale,
                                                     out_zero_point, out_min, out_max,
                                                     conv_kernel(layer, vnni)))
        node.target = name
        changed.append(str(node.name))
    if changed:
        model.graph.lint()
        model.recompile()
    return changed
