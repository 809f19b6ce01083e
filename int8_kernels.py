"""What this CPU's x86 integer kernels compute exactly, and the activation ranges that keep them
exact (see ``quantization``'s docstring, "Activation ranges follow the CPU").

``kernel_capability`` reads the CPU; ``_narrow_integer_inputs`` sets 7-bit ranges along the input
chain of every integer conv and linear that would saturate; ``_clamp_inputs`` makes the real
integer model clamp there as its simulated twin does; ``_isolated_torch_state`` runs code on the
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
def _isolated_torch_state(threads: int | None = None):
    """Run with the x86 engine (and ``threads``), restoring engine and thread count after."""
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


def _share_dropout_quantizers(prepared: torch.fx.GraphModule) -> None:
    """Give each dropout's output the quantizer of its input.

    The backend observes a dropout's output separately, but the integer model runs eval-mode
    dropout as the identity and keeps its input's scale; after pooling the two ranges differ
    (MobileNet's and EfficientNet's heads), and the twin would quantize on a finer grid than the
    deployed model. Sharing the quantizer makes both use the input's."""
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
NARROW_QUANT_MAX = 127  # 7-bit u8 inputs: 2 * 127 * 128 <= 32767, so int16 pair sums cannot saturate
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


def _narrow_integer_inputs(prepared: torch.fx.GraphModule, activation_range: str) -> list[str]:
    """Give the input of every conv/linear that ``activation_range`` names (see
    ``_takes_narrow_input``) the range 0..127; returns those layers' names.

    fbgemm's depthwise kernels add pairs of u8 x s8 products in int16 (``vpmaddubsw``) on every
    CPU; without VNNI so do oneDNN's convs and fbgemm's GEMM. 2 * 255 * 127 > 32767 saturates;
    2 * 127 * 128 cannot. Every quantizer on the input's chain back to its producer is narrowed
    (the integer model keeps the producer's scale through dropout, pooling, reshapes), so both
    executions, which come from this prepared graph, use the same levels; a shared quantizer
    narrows that tensor for every consumer, as ``convert_quantized``'s clamp does.
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


def _clamp_inputs(model: torch.fx.GraphModule, layers: Iterable[str]) -> list[str]:
    """In a ``convert_fx`` model, clamp the quantized input of each of ``layers`` (the names
    ``_narrow_integer_inputs`` returned) to 0..127. The clamp follows the op that produced the
    tensor (before any pass-through op) and replaces all its uses, as the twin's narrowed
    quantizers do for every consumer.
    Returns the names of the inserted clamps."""
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
