"""A quantized model read back from itself: bit widths and levels per layer, what stays float,
true sizes, agreement between two models and CPU latency against the fastest FP32."""
from __future__ import annotations

import logging
import math
import warnings
from typing import Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.ao.nn import quantized as nnq
from torch.ao.nn.intrinsic import _FusedModule
from torch.ao.nn.quantized import dynamic as nnqd
from torch.ao.quantization.fake_quantize import FakeQuantizeBase
from torch.ao.quantization.observer import ObserverBase

import evaluation
from int8_kernels import isolated_torch_state

logger = logging.getLogger(__name__)

FLOAT_BITS = 32
QPARAM_BYTES_PER_CHANNEL = 8  # one float32 scale + one int32 zero point per output channel
_WEIGHT_LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_INT_WEIGHT_LAYER_TYPES = (nnq.Conv1d, nnq.Conv2d, nnq.Conv3d, nnq.Linear, nnqd.Linear)
_INT_WEIGHT_BITS = {torch.qint8: 8, torch.quint8: 8}


def batch_images(batch) -> torch.Tensor:
    """The images of a loader's batch (a tensor, or a tuple with the images first). Shared:
    ``quantization`` reads calibration batches with it."""
    if isinstance(batch, (list, tuple)) and batch:
        batch = batch[0]
    if not isinstance(batch, torch.Tensor):
        raise ValueError(f"a batch must be an image tensor or a tuple with the images first, got "
                         f"{type(batch).__name__}; use datasets.make_loader or a DataLoader of "
                         "tensors")
    return batch


def _weight_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, module) of every conv/linear layer; a fused module counts once, under its name."""
    fused_prefix = None
    for name, module in model.named_modules():
        if fused_prefix is not None and name.startswith(fused_prefix):
            continue
        if isinstance(module, _FusedModule):
            fused_prefix, module = name + ".", module[0]
        if isinstance(module, _WEIGHT_LAYER_TYPES + _INT_WEIGHT_LAYER_TYPES):
            yield name, module


def quantizable_layers(model: nn.Module) -> list[str]:
    """Names of the conv and linear modules, in definition order (keys for ``layer_bits`` and
    ``fp32_layers``)."""
    return [name for name, _ in _weight_layers(model)]


def check_layer_names(model: nn.Module, names: Iterable[str], option: str) -> None:
    """A ValueError naming the ``names`` that are not ``quantizable_layers(model)``. Shared:
    ``quantization`` checks ``layer_bits`` and ``fp32_layers`` with it."""
    valid = quantizable_layers(model)
    unknown = [name for name in names if name not in valid]
    if unknown:
        raise ValueError(f"{option} names unknown layers {unknown}; valid names (conv/linear "
                         f"modules from quantizable_layers(model)): {valid}")


def _module_bits(module: nn.Module) -> int:
    """Weight bit width of one layer: read from its quantized weight or its quantizer."""
    if isinstance(module, _INT_WEIGHT_LAYER_TYPES):
        return _INT_WEIGHT_BITS[module.weight().dtype]
    quant_range = None
    if getattr(module, "weight_quant_min", None) is not None:  # reference (simulated) module
        quant_range = module.weight_quant_max - module.weight_quant_min + 1
    elif isinstance(getattr(module, "weight_fake_quant", None), FakeQuantizeBase):  # QAT module
        quant_range = module.weight_fake_quant.quant_max - module.weight_fake_quant.quant_min + 1
    return FLOAT_BITS if quant_range is None else int(math.log2(quant_range))


def layer_bit_widths(model: nn.Module) -> dict[str, int]:
    """Weight bit width of every conv/linear layer of ``model`` (32 for float layers)."""
    return {name: _module_bits(module) for name, module in _weight_layers(model)}


def weight_levels(model: nn.Module) -> dict[str, int]:
    """For each quantized layer, the largest number of distinct weight values in one output
    channel (real INT8: of the stored integers; simulated: of the fake-quantized weights)."""
    levels = {}
    for name, module in _weight_layers(model):
        if isinstance(module, _INT_WEIGHT_LAYER_TYPES):
            weight = module.weight().int_repr()
        elif hasattr(module, "get_weight"):  # reference module: quantize-dequantize on the fly
            weight = module.get_weight()
        else:
            continue
        levels[name] = max(channel.unique().numel() for channel in weight.flatten(1))
    return levels


def _float_ops(model: nn.Module) -> list[str]:
    """Ops of a converted FX graph that run in float on dequantized inputs (first use each)."""
    graph = getattr(model, "graph", None)
    if graph is None:
        return []
    ops = []
    for node in graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method"):
            continue
        label = node.target if isinstance(node.target, str) else node.target.__name__
        fed_by_dequantize = any(arg.op == "call_method" and arg.target == "dequantize"
                                for arg in node.all_input_nodes)
        if fed_by_dequantize and "quantize" not in label and label not in ops:
            ops.append(label)
    return ops


def describe_quantized(model: nn.Module, execution: str | None = None) -> dict:
    """``execution``, ``fp32_layers``, ``layer_bits`` and ``float_ops`` of a quantized model,
    read from the model itself. ``execution`` defaults to ``real_int8`` when integer modules are
    present, else ``simulated``."""
    bits = layer_bit_widths(model)
    if execution is None:
        is_int = any(isinstance(m, _INT_WEIGHT_LAYER_TYPES) for _, m in _weight_layers(model))
        execution = "real_int8" if is_int else "simulated"
    return {"execution": execution,
            "fp32_layers": [name for name, b in bits.items() if b == FLOAT_BITS],
            "layer_bits": {name: b for name, b in bits.items() if b != FLOAT_BITS},
            "float_ops": _float_ops(model) if execution == "real_int8" else None}


def _quantizer_tensor_ids(model: nn.Module) -> set[int]:
    """Tensors that belong to quantizers (observers, fake-quant, reference weight qparams)."""
    ids = set()
    for module in model.modules():
        if isinstance(module, (ObserverBase, FakeQuantizeBase)):
            ids.update(id(t) for t in [*module.parameters(), *module.buffers()])
        ids.update(id(getattr(module, key)) for key in ("weight_scale", "weight_zero_point",
                                                         "weight_axis") if hasattr(module, key))
    return ids


def packed_size_mib(model: nn.Module, weight_bits: int = 8,
                    layer_bits: Mapping[str, int] | None = None,
                    fp32_layers: Iterable[str] = ()) -> float:
    """Size in MiB (2**20 bytes) that the bit widths imply.

    Each conv/linear weight is stored at ``layer_bits.get(name, weight_bits)`` bits (32 or a
    name in ``fp32_layers``: float32) plus one float32 scale and one int32 zero point per output
    channel when quantized; every other parameter and buffer counts at its own element size
    (4 bytes for float32). Quantizer bookkeeping (observers, reference-module qparam buffers) is
    not counted twice; per-tensor activation qparams (8 bytes each) are left out.
    """
    if any(isinstance(m, _INT_WEIGHT_LAYER_TYPES) for _, m in _weight_layers(model)):
        raise ValueError("packed_size_mib is for float or simulated models; the size of a model "
                         "with integer modules is its serialized bytes: "
                         "evaluation.model_size_mib(model)")
    layer_bits, fp32_layers = dict(layer_bits or {}), set(fp32_layers)
    check_layer_names(model, [*layer_bits, *fp32_layers], "packed_size_mib")
    skip = _quantizer_tensor_ids(model)
    total_bytes = 0.0
    for name, module in _weight_layers(model):
        bits = FLOAT_BITS if name in fp32_layers else layer_bits.get(name, weight_bits)
        if bits < FLOAT_BITS:
            total_bytes += math.ceil(module.weight.numel() * bits / 8)
            total_bytes += module.weight.shape[0] * QPARAM_BYTES_PER_CHANNEL
            skip.add(id(module.weight))
    for tensor in {id(t): t for t in [*model.parameters(), *model.buffers()]}.values():
        if id(tensor) not in skip:
            total_bytes += tensor.numel() * tensor.element_size()
    return total_bytes / 2**20


# --------------------------------------------------------------------------- measurements

@torch.no_grad()
def prediction_agreement(model_a: nn.Module, model_b: nn.Module, loader) -> float:
    """Fraction of samples on which the two models' argmax predictions agree. Both models are
    moved to the CPU (integer kernels run there) and put in eval mode."""
    model_a, model_b = model_a.cpu().eval(), model_b.cpu().eval()
    agree = total = 0
    for batch in loader:
        images = batch_images(batch).cpu()
        agree += (model_a(images).argmax(1) == model_b(images).argmax(1)).sum().item()
        total += len(images)
    if total == 0:
        raise ValueError("loader yielded no samples; prediction_agreement needs at least one")
    return agree / total


def latency_report(fp32_model: nn.Module, int8_model: nn.Module, image_size: int,
                   batch_sizes: Sequence[int] = (1, 32), threads: int = 2, *,
                   fp32_models: Mapping[str, nn.Module] | None = None,
                   reference: Mapping[int, tuple[float, str]] | None = None, **options) -> dict:
    """Quantized CPU latency against the fastest FP32 on this machine, same process and threads.

    The FP32 candidates are ``fp32_model`` in both eager layouts plus ``fp32_models`` (e.g. the
    ONNX Runtime and OpenVINO FP32 models of ``runtimes``); ``reference`` ({batch size: (ms,
    name)}) gives measurements already made, so FP32 is timed once per architecture. A torch
    integer model is also timed traced and frozen when that form gives identical logits.

    Per batch size ``n``: ``fp32_latency_ms_b{n}``, ``fp32_reference_b{n}`` (which FP32 was
    fastest), ``latency_ms_b{n}``, ``int8_form_b{n}`` (``eager`` or ``traced_frozen``) and
    ``speedup_b{n}`` (FP32 ms / quantized ms). ``options`` (warmup, repeats) go to
    ``evaluation.measure_latency``. Only meaningful for integer models: a simulated model runs
    fake quantization in float.
    """
    execution = getattr(int8_model, "quant_info", {}).get("execution")
    if execution == "simulated":
        logger.warning("latency_report on a simulated model measures fake quantization in "
                       "float, not a deployed integer model")
    forms = {"eager": int8_model}
    if execution == "real_int8":
        frozen = traced_and_frozen(int8_model, image_size)
        if frozen is not None:
            forms["traced_frozen"] = frozen
    missing = [n for n in batch_sizes if n not in (reference or {})]
    reference = {**fastest_fp32(fp32_model, image_size, missing, threads, fp32_models=fp32_models,
                                **options), **(reference or {})}
    report = {"threads": threads, "image_size": image_size, "execution": execution}
    with isolated_torch_state():
        for n in batch_sizes:
            fp32_ms, fp32_name = reference[n]
            quantized_ms, form = evaluation.fastest_latency(forms, image_size, n,
                                                            threads=threads, **options)
            report.update({f"fp32_latency_ms_b{n}": fp32_ms, f"fp32_reference_b{n}": fp32_name,
                           f"latency_ms_b{n}": quantized_ms,
                           f"int8_form_b{n}": form.removesuffix("_contiguous"),
                           f"speedup_b{n}": fp32_ms / quantized_ms})
    return report


def fastest_fp32(fp32_model: nn.Module, image_size: int, batch_sizes: Sequence[int] = (1, 32),
                 threads: int = 2, *, fp32_models: Mapping[str, nn.Module] | None = None,
                 **options) -> dict[int, tuple[float, str]]:
    """{batch size: (ms, name)} of the fastest FP32 on this machine: ``fp32_model`` in both eager
    layouts and ``fp32_models`` (other runtimes' FP32 models); ``latency_report``'s reference."""
    candidates = {"torch": fp32_model, **(fp32_models or {})}
    with isolated_torch_state():
        return {n: evaluation.fastest_latency(candidates, image_size, n, threads=threads, **options)
                for n in batch_sizes}


@torch.no_grad()
def traced_and_frozen(model: nn.Module, image_size: int) -> torch.jit.ScriptModule | None:
    """``model`` traced and frozen (TorchScript), or None when tracing fails or the frozen
    module's logits differ in any bit from the eager model's on a random batch."""
    generator = torch.Generator().manual_seed(0)
    example, check = (torch.randn(n, 3, image_size, image_size, generator=generator)
                      for n in (2, 4))
    try:
        with isolated_torch_state(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frozen = torch.jit.freeze(torch.jit.trace(model.cpu().eval(), example).eval())
            exact = torch.equal(frozen(check), model(check))
    except (RuntimeError, TypeError, ValueError) as error:
        logger.info("traced and frozen form unavailable (%s); timing eager only", error)
        return None
    return frozen if exact else None
