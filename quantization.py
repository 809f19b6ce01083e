"""Quantization engine: a method registry, ``apply_quantization`` and the measurements that keep
its claims honest (bit widths read back from the model, true sizes, real integer kernels).

Methods
-------
A method is a frozen config dataclass (a ``QuantConfig`` subclass) plus one registered handler::

    @register_method("my_method", MyConfig, context_keys=("train_loader",))
    def my_method(model, config, calibration_data, **context) -> nn.Module: ...

``apply_quantization`` resolves the name, builds the config from the caller's options (unknown
options are refused), deep-copies the model and calls the handler inside a guard that restores
``torch.backends.quantized.engine`` and the torch thread count. ``context`` carries ``device``,
``seed``, ``progress`` and the method's own ``context_keys`` (objects that are not configuration,
such as loaders or a loss hook). The handler returns the quantized model with
``model.quant_info = describe_quantized(model)``; ``apply_quantization`` adds method, bit widths,
sizes and cost. Handlers are built from the public blocks ``qconfig_mapping``,
``prepare_quantization``, ``calibrate`` and ``convert_quantized``; a handler that builds on
another method runs it with ``quantize_in_place`` (no second copy or guard).

Bits are spelled ``weight_bits``/``act_bits`` inside the engine. The notebook's spellings
(``bits='w4a8'``, ``bit_width=4``, a short name's preset) resolve in one place,
``resolve_bits``.

=============  ===========================================================================
method         what it does
=============  ===========================================================================
ptq_static     weights (per-channel symmetric) and activations (per-tensor affine) quantized,
               activation ranges from a calibration set; ``bits='w8a8'|'w4a8'|'w4a4'|'w2a8'...``
ptq_dynamic    INT8 weights, activations quantized at run time; Linear layers only
qat            fake-quantized training from the FP32 model (straight-through estimator) with
               ``training.fit``; any bit width 2-8
=============  ===========================================================================

Short names (the notebook API; ``apply_quantization(model, "PTQ_INT4", ...)``):

===========  ========================  ==========================================================
short name   method                    options
===========  ========================  ==========================================================
PTQ_INT8     ptq_static                bits='w8a8' (real INT8 kernels)
PTQ_INT4     ptq_static                bits='w4a8' (4-bit weights, 8-bit activations; simulated)
QAT_INT8     qat                       bits='w8a8' (real INT8 kernels after training)
QAT_INT4     qat                       bits='w4a8' (simulated)
dynamic      ptq_dynamic               (INT8)
bias_aware   bias_aware_calibration    bits='w8a8' (registered by ``mitigation``)
===========  ========================  ==========================================================

Execution
---------
``real_int8``: the calibrated FX graph is converted with ``convert_fx`` for PyTorch's x86 backend
(fbgemm/oneDNN integer kernels); the model runs on CPU. ``simulated``: any other bit width; the
same calibrated graph is converted to PyTorch's reference representation, in which every
quantized tensor passes through quantize/dequantize with the ``quant_min``/``quant_max`` of its
bit width (weights on the fly, activations at the observed ranges, observers gone). Both come
from one prepared graph, in which FX has already folded Conv-BN(-ReLU) as the backend does, so a
simulated INT8 model is the twin of the deployed one (``prediction_agreement``).

Activation ranges follow the CPU (``activation_range``, recorded in ``quant_info`` and every
result row with ``cpu_capability``). Integer u8 x s8 kernels that add pairs of products in int16
(``vpmaddubsw``) saturate on full-range inputs (2 * 255 * 127 > 32767) but not on 7-bit ones
(2 * 127 * 128 <= 32767). fbgemm's depthwise kernel (convs with more than 100 groups) does so on
every CPU; without AVX-512 VNNI oneDNN's convs and fbgemm's GEMM do too. So ``'auto'`` resolves to
``'full'`` on VNNI CPUs (0..255, depthwise-conv inputs 0..127) and to ``'reduced'`` elsewhere
(0..127 at the input of every conv and linear); ``kernel_capability`` says which. The range is
set on every quantizer of the input's chain back to the op that produced it (the integer model
keeps that op's scale through pooling, reshapes and dropout, whose own quantizer is replaced by
its input's), so the simulated twin uses exactly the same levels; the real model clamps that
tensor to 0..127 (``QuantizedRangeClamp``), since ``convert_fx`` keeps only scale and zero point
and would pass values above the calibrated maximum as 128..255.
What stays float: layers named in ``fp32_layers``, squeeze-excitation blocks
(``qconfigs.FLOAT_BLOCKS``: EfficientNet's gates; their convs appear in ``fp32_layers``) and, in
a real INT8 model, ops without integer kernels, run between dequantize and quantize;
``quant_info['float_ops']`` lists the latter. For a timm ViT: the patch-embedding flatten, the
qkv ``unbind``, ``scaled_dot_product_attention``, every MLP GELU and the final LayerNorm (all its
Linear layers, the block LayerNorms and the residual adds are integer; the class-token ``cat``
joins tensors of different scales, which PyTorch warns about at run time and requantizes
correctly). For EfficientNet: SiLU (also inside squeeze-excitation) and stochastic depth.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import importlib
import logging
import time
from dataclasses import dataclass, field, fields
from typing import Callable, ClassVar, Iterable, Iterator, Mapping

import torch
from torch import nn
from torch.ao.quantization import disable_observer, per_channel_dynamic_qconfig, quantize_dynamic
from torch.ao.quantization.quantize_fx import (
    _convert_to_reference_decomposed_fx,
    convert_fx,
    prepare_fx,
    prepare_qat_fx,
)
from tqdm.auto import tqdm

import evaluation
import profiling
import training
from checks import check_choice, parse_bits
from int8_kernels import (
    average_pools_in_levels,
    clamp_inputs,
    default_activation_range,
    integer_kernel_layers,
    isolated_torch_state,
    kernel_capability,
    narrow_integer_inputs,
    share_dropout_quantizers,
)
from qconfigs import (
    PercentileObserver,
    fake_quantize,
    fuse_fake_quantize_pairs,
    qconfig_mapping,
    reuse_fake_quantized_weights,
)
from quant_inspect import (
    FLOAT_BITS,
    batch_images,
    describe_quantized,
    fastest_fp32,
    latency_report,
    layer_bit_widths,
    packed_size_mib,
    prediction_agreement,
    quantizable_layers,
    traced_and_frozen,
    weight_levels,
)

logger = logging.getLogger(__name__)

PLUGINS = {"mitigation": ("FairnessAwareQuantizer",),
           "comparison": ("QuantizationComparison", "compare_quantization_methods")}
"""Modules built on this engine: they import it, so it never imports them at import time (no
cycle). It loads them on first need instead: a method name not registered yet, ``list_methods()``,
or one of the names listed here taken from this module (``from quantization import
FairnessAwareQuantizer``; PEP 562 ``__getattr__``)."""


__all__ = [
    "ACTIVATION_RANGES", "DynamicConfig", "PTQStaticConfig", "PercentileObserver", "QATConfig",
    "MethodTraits", "QuantConfig", "QuantInfo", "SHORT_NAMES", "apply_quantization", "calibrate",
    "SharedGraphs", "context_keys", "convert_quantized", "copy_prepared",
    "default_activation_range", "describe_quantized", "fastest_fp32", "kernel_capability",
    "latency_report", "layer_bit_widths", "list_methods", "method_config", "method_traits",
    "model_digest", "packed_size_mib", "parse_bits", "prediction_agreement",
    "prepare_quantization", "qconfig_mapping", "quantizable_layers", "quantize_in_place",
    "register_method", "resolve_bits", "resolve_method", "sharing", "traced_and_frozen",
    "weight_levels",
    "load_plugins", *(name for names in PLUGINS.values() for name in names),
]

EXECUTIONS = ("auto", "real_int8", "simulated")
ACTIVATION_RANGES = ("auto", "full", "reduced")



# --------------------------------------------------------------------------- configs

BITS_AND_WIDTHS = "give either bits='w<W>a<A>' or weight_bits/act_bits, not both"
BAD_BIT_WIDTH = ("bit_width={value!r}: expected an int from 2 to 8 (weights at that many bits; "
                 "activations too where the method supports it, else 8), or give bits='w4a8'")


def resolve_bits(options: Mapping, *, preset: str | None = None, bit_width: int | None = None,
                 act_choices: Iterable[int] = ()) -> dict:
    """``options`` with bits in the engine's one spelling, ``weight_bits``/``act_bits``: the one
    place the notebook's spellings resolve. By precedence: ``weight_bits``/``act_bits`` or
    ``bits='w4a8'`` as given (both at once: ValueError), else a short name's ``preset`` bits,
    else ``bit_width=k``: weights at ``k`` bits, activations at ``k`` where ``act_choices`` (the
    config's ``ACT_BITS``) has it and at 8 otherwise; else nothing (the config's defaults)."""
    options = dict(options)
    bits, widths = options.pop("bits", None), {"weight_bits", "act_bits"} & options.keys()
    if bits is not None and widths:
        raise ValueError(BITS_AND_WIDTHS)
    bits = preset if bits is None and not widths else bits
    if bits is not None:
        options["weight_bits"], options["act_bits"] = parse_bits(bits)
    elif not widths and bit_width is not None:
        if isinstance(bit_width, bool) or not isinstance(bit_width, int) or not 2 <= bit_width <= 8:
            raise ValueError(BAD_BIT_WIDTH.format(value=bit_width))
        options.update(weight_bits=bit_width, act_bits=bit_width if bit_width in act_choices else 8)
    return options


class _TakesBits(type):
    """Lets every config take ``bits='w4a8'`` in place of ``weight_bits``/``act_bits``."""

    def __call__(cls, *args, bits=None, **options):
        if bits is not None:
            options = resolve_bits({**options, "bits": bits})
        return super().__call__(*args, **options)


@dataclass(frozen=True)
class QuantConfig(metaclass=_TakesBits):
    """Base of every method config: bit widths, validation and a dict/JSON round trip.

    Fields whose metadata has ``mapping=True`` are stored as sorted ``(key, value)`` tuples (so
    configs stay immutable and hashable) and appear as dicts in ``to_dict``; sequences are stored
    as tuples and appear as lists.
    """
    weight_bits: int = 8
    act_bits: int = 8
    WEIGHT_BITS: ClassVar[tuple[int, ...]] = (8,)
    ACT_BITS: ClassVar[tuple[int, ...]] = (8,)

    def __post_init__(self):
        for item in fields(self):
            value = getattr(self, item.name)
            if item.metadata.get("mapping"):
                object.__setattr__(self, item.name, tuple(sorted(dict(value).items())))
            elif isinstance(value, list):
                object.__setattr__(self, item.name, tuple(value))
        owner = type(self).__name__
        check_choice("weight_bits", self.weight_bits, self.WEIGHT_BITS, owner)
        check_choice("act_bits", self.act_bits, self.ACT_BITS, owner)

    @property
    def bits(self) -> str:
        """The ``w<W>a<A>`` label, e.g. ``'w4a8'``."""
        return f"w{self.weight_bits}a{self.act_bits}"

    def to_dict(self) -> dict:
        """Plain, JSON-serialisable dict of every field."""
        out = {}
        for item in fields(self):
            value = getattr(self, item.name)
            out[item.name] = (dict(value) if item.metadata.get("mapping")
                              else list(value) if isinstance(value, tuple) else value)
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> "QuantConfig":
        """Inverse of ``to_dict`` (also accepts ``bits='w4a8'``)."""
        return _build_config(cls, data, cls.__name__)


OBSERVERS = ("minmax", "moving_average", "histogram", "percentile")


@dataclass(frozen=True)
class PTQStaticConfig(QuantConfig):
    """Static post-training quantization.

    ``layer_bits`` overrides the weight bit width of single layers (module names from
    ``quantizable_layers``); ``fp32_layers`` keeps layers in float. ``execution='auto'`` gives
    real INT8 kernels when every quantized layer is w8a8 and simulation otherwise;
    ``'simulated'`` forces fake quantization (the twin of a real INT8 model);
    ``'real_int8'`` refuses anything that cannot run on integer kernels.
    ``percentile`` is used by the ``percentile`` observer only. ``activation_range`` (8-bit
    activations only) is ``'full'`` (0..255; fbgemm's depthwise-conv inputs 0..127 on every CPU),
    ``'reduced'`` (0..127 at the input of every conv and linear) or ``'auto'``: the one this CPU's
    kernels compute exactly (``default_activation_range``). Forcing ``'full'`` on a CPU without
    VNNI gives a model whose integer kernels saturate; its twin shows what it should compute.
    """
    observer: str = "histogram"
    percentile: float = 99.99
    layer_bits: tuple = field(default=(), metadata={"mapping": True})
    fp32_layers: tuple = ()
    execution: str = "auto"
    activation_range: str = "auto"
    WEIGHT_BITS: ClassVar[tuple[int, ...]] = tuple(range(2, 9))
    ACT_BITS: ClassVar[tuple[int, ...]] = tuple(range(4, 9))

    def __post_init__(self):
        super().__post_init__()
        owner = type(self).__name__
        check_choice("observer", self.observer, OBSERVERS, owner)
        check_choice("execution", self.execution, EXECUTIONS, owner)
        check_choice("activation_range", self.activation_range, ACTIVATION_RANGES, owner)
        if not 50 < self.percentile <= 100:
            raise ValueError(f"percentile={self.percentile!r} must be in (50, 100], e.g. 99.99")
        for name, bits in self.layer_bits:
            check_choice(f"layer_bits[{name!r}]", bits, self.WEIGHT_BITS, owner)
        both = sorted(set(dict(self.layer_bits)) & set(self.fp32_layers))
        if both:
            raise ValueError(f"layers {both} are in both layer_bits and fp32_layers; keep each "
                             "layer in one of them")
        if self.execution == "real_int8" and not self.all_int8:
            raise ValueError(f"execution='real_int8' needs 8-bit weights and activations in every "
                             f"quantized layer, got {self.bits} with layer_bits="
                             f"{dict(self.layer_bits)}; the x86 backend has no lower-bit kernels: "
                             "use execution='auto' or 'simulated'")

    @property
    def all_int8(self) -> bool:
        """True when every quantized layer is w8a8 (integer kernels can run it)."""
        return self.bits == "w8a8" and all(bits == 8 for _, bits in self.layer_bits)

    @property
    def resolved_activation_range(self) -> str:
        """``'full'`` or ``'reduced'``: ``activation_range``, ``'auto'`` decided for this CPU."""
        if self.activation_range == "auto":
            return default_activation_range()
        return self.activation_range

    @property
    def resolved_execution(self) -> str:
        """``'real_int8'`` or ``'simulated'``."""
        if self.execution == "auto":
            return "real_int8" if self.all_int8 else "simulated"
        return self.execution


@dataclass(frozen=True)
class QATConfig(PTQStaticConfig):
    """Quantization-aware training: fake quantization at any bit width 2-8 during ``training.fit``
    (``epochs``, ``lr``, ``weight_decay``, ``max_steps`` per epoch), then real INT8 or simulated
    execution exactly as ``PTQStaticConfig`` decides."""
    observer: str = "moving_average"
    epochs: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    max_steps: int | None = None
    WEIGHT_BITS: ClassVar[tuple[int, ...]] = tuple(range(2, 9))
    ACT_BITS: ClassVar[tuple[int, ...]] = tuple(range(2, 9))


@dataclass(frozen=True)
class DynamicConfig(QuantConfig):
    """Dynamic INT8: weights INT8 per channel, activations quantized at run time (Linear only)."""


def _build_config(config_cls: type, options: Mapping, method: str) -> QuantConfig:
    valid = [item.name for item in fields(config_cls)]
    for name in options:
        if name not in valid + ["bits"]:
            raise ValueError(f"unknown option {name!r} for method {method!r}; valid options: "
                             f"{', '.join(valid + ['bits'])}")
    return config_cls(**options)


# --------------------------------------------------------------------------- registry

SHORT_NAMES: dict[str, tuple[str, dict]] = {
    "PTQ_INT8": ("ptq_static", {"bits": "w8a8"}),
    "PTQ_INT4": ("ptq_static", {"bits": "w4a8"}),
    "QAT_INT8": ("qat", {"bits": "w8a8"}),
    "QAT_INT4": ("qat", {"bits": "w4a8"}),
    "dynamic": ("ptq_dynamic", {}),
    "bias_aware": ("bias_aware_calibration", {"bits": "w8a8"}),
}
_BASE_CONTEXT = frozenset({"device", "seed", "progress"})
UNREGISTERED_CONFIG = ("{cls} is not the config of a registered method; registered: {known}. "
                       "Register it with quantization.register_method(name, {cls})")


CALIBRATION_NEEDS = ("none", "loader", "dataset")


@dataclass(frozen=True)
class MethodTraits:
    """What a sweep must know about a method to run it, so that it never branches on names.

    ``calibration``: ``'none'`` (calibration_data unused), ``'loader'`` (the sweep draws a
    subset and passes a loader of it) or ``'dataset'`` (the method draws its own subset of the
    training split, e.g. a balanced one; the config's ``calibration`` field names the kind).
    ``twin``: a real INT8 result can be rebuilt with ``execution='simulated'`` to check that
    the integer kernels compute what the quantizer meant. ``runtime_counterpart``: other
    runtimes (ONNX Runtime, OpenVINO) build their INT8 model beside this method's plain w8a8
    configuration. ``layer_search``: quantizes once per layer (costly). ``deployable``: a real
    INT8 result is saved as TorchScript. ``control``: the method a mitigation is compared with
    (None: it is not a mitigation); ``paired_draws``: compared with its control draw by draw
    over ``calibration_draws`` calibration draws, else on draw 0 only. ``needs``: context keys
    the method cannot run without (e.g. ``train_loader`` for training methods).
    """
    calibration: str = "loader"
    twin: bool = False
    runtime_counterpart: bool = False
    layer_search: bool = False
    deployable: bool = False
    control: str | None = None
    paired_draws: bool = False
    needs: tuple[str, ...] = ()

    def __post_init__(self):
        check_choice("calibration", self.calibration, CALIBRATION_NEEDS, "MethodTraits")

    def required_inputs(self) -> tuple[str, ...]:
        """What a caller must hand over: ``calibration_data`` unless unused, and ``needs``."""
        return (("calibration_data",) if self.calibration != "none" else ()) + tuple(self.needs)


@dataclass(frozen=True)
class _Method:
    config_cls: type
    handler: Callable[..., nn.Module]
    context_keys: frozenset
    traits: MethodTraits


_METHODS: dict[str, _Method] = {}


def register_method(name: str, config_cls: type, handler: Callable | None = None, *,
                    context_keys: Iterable[str] = (), traits: MethodTraits | None = None,
                    overwrite: bool = False):
    """Register ``handler(model, config, calibration_data, **context) -> nn.Module`` as ``name``.

    Use as a decorator (``@register_method(name, Config)``) or call with ``handler``.
    ``context_keys`` are the extra non-config arguments the handler accepts (e.g. loaders; a
    sweep hands over ``train_loader``, ``val_loader`` and ``eval_data``, the validation loader);
    ``traits`` (``MethodTraits``) tell a sweep how to run it.
    """
    if not (isinstance(config_cls, type) and issubclass(config_cls, QuantConfig)):
        raise TypeError(f"config_cls for {name!r} must be a QuantConfig subclass, got "
                        f"{config_cls!r}")

    def register(function: Callable) -> Callable:
        if name in _METHODS and not overwrite:
            raise ValueError(f"quantization method {name!r} is already registered; pick another "
                             "name or pass overwrite=True")
        _METHODS[name] = _Method(config_cls, function, frozenset(context_keys),
                                 traits or MethodTraits())
        return function

    return register if handler is None else register(handler)


def method_traits(method: str) -> MethodTraits:
    """The ``MethodTraits`` of a registered (or short) method name."""
    return _lookup(resolve_method(method)[0]).traits


def config_name(config: QuantConfig) -> str:
    """The registered name of a config instance's method (the first registered for its class)."""
    for name, spec in _METHODS.items():
        if type(config) is spec.config_cls:
            return name
    raise ValueError(UNREGISTERED_CONFIG.format(cls=type(config).__name__,
                                                known=", ".join(sorted(_METHODS))))


def list_methods() -> list[str]:
    """Registered method names, the plugins' methods included (``load_plugins``)."""
    load_plugins()
    return sorted(_METHODS)


UNKNOWN_METHOD = ("quantization method {name!r} is not registered; known methods: {known}; short "
                  "names: {short}. Register new ones with quantization.register_method")

def load_plugins() -> None:
    """Import every module of ``PLUGINS`` (once), which registers their methods."""
    for module in PLUGINS:
        importlib.import_module(module)


def __getattr__(name: str):
    for module, names in PLUGINS.items():
        if name in names:
            return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module 'quantization' has no attribute {name!r}")


def _lookup(name: str) -> _Method:
    if name not in _METHODS:
        load_plugins()
    if name not in _METHODS:
        raise ValueError(UNKNOWN_METHOD.format(name=name, known=", ".join(sorted(_METHODS)),
                                               short=", ".join(SHORT_NAMES)))
    return _METHODS[name]


def context_keys(method: str) -> frozenset:
    """The non-config arguments (loaders, device, …) that method ``method`` accepts."""
    name, _ = resolve_method(method)
    return _BASE_CONTEXT | _lookup(name).context_keys


def resolve_method(method: str, options: Mapping | None = None) -> tuple[str, dict]:
    """Expand a short name (``PTQ_INT4``) into (registry name, options), bits resolved by
    ``resolve_bits``; explicit options win over the short name's."""
    if not isinstance(method, str):
        raise ValueError(f"method must be a string, got {method!r}; see list_methods()")
    name, preset = SHORT_NAMES.get(method, (method, {}))
    options = {**{k: v for k, v in preset.items() if k != "bits"}, **(options or {})}
    return name, resolve_bits(options, preset=preset.get("bits"))


def method_config(name: str, **options) -> QuantConfig:
    """The config of method ``name`` (a registry or short name) built from ``options``."""
    name, options = resolve_method(name, options)
    return _build_config(_lookup(name).config_cls, options, name)


# --------------------------------------------------------------------------- the entry point

def apply_quantization(model: nn.Module, method: str | QuantConfig = "ptq_static",
                       bit_width: int = 8, calibration_data=None, **options) -> nn.Module:
    """Return a quantized copy of ``model``; ``model`` and global torch state are left unchanged.

    ``method`` is a registry name (``list_methods()``), a short name (``SHORT_NAMES``) or a
    method's config instance (``PTQStaticConfig(bits="w4a8")``; other options override it).
    ``bit_width=k`` (an int from 2 to 8) puts weights at ``k`` bits and activations at ``k``
    bits where the method supports them, else at 8 (``ptq_static``: 4-8 bit activations), unless
    ``bits='w4a8'`` or ``weight_bits``/``act_bits`` are given (short names fix their own bits).
    ``calibration_data``
    is a DataLoader of contract batches (images first) or of image tensors. Other options are
    the method's config fields (e.g. ``observer``, ``layer_bits``, ``fp32_layers``) or context
    (``device``, ``seed``, ``progress``, ``threads``, and e.g. ``train_loader`` for ``qat``).

    The result carries ``quant_info``: method, weight_bits, act_bits, execution, observer,
    size_mib, fp32_size_mib, compression, cost_s (calibration/training seconds, including
    conversion), fp32_layers, layer_bits (bit width of every quantized layer, read back from the
    result), float_ops, activation_range (``'full'``/``'reduced'`` at 8-bit activations),
    cpu_capability (the CPU it was built for), config.
    """
    _check_inputs(model, calibration_data)
    name, config, context, threads = _resolve_call(method, bit_width, options)
    with isolated_torch_state(threads), profiling.step("quantize"):
        quantized = quantize_in_place(copy.deepcopy(model), config, calibration_data,
                                      method=name, **context)
    info = quantized.quant_info
    logger.info("%s %s: %s, %.3f MiB (x%.2f), %.1f s", name, config.bits, info.execution,
                info.size_mib, info.compression, info.cost_s)
    return quantized


def _check_inputs(model, calibration_data) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    from fairness_metrics import check_images, check_model  # torch-free at import; no cycle
    check_model(model)  # a meta-device model, named here, not deep in torch
    if calibration_data is not None:
        check_images(model, calibration_data)  # e.g. a 1-channel batch for a 3-channel model


def _resolve_call(method, bit_width, options: dict) -> tuple[str, QuantConfig, dict, int | None]:
    """(registry name, config, context, threads) of one ``apply_quantization`` call."""
    if isinstance(method, QuantConfig):
        method, options = config_name(method), {**method.to_dict(), **options}
    name, options = resolve_method(method, options)
    spec, accepted = _lookup(name), context_keys(name)
    context = {key: options.pop(key) for key in list(options) if key in accepted}
    threads = options.pop("threads", None)
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be None or an int >= 1, got {threads!r}")
    options = resolve_bits(options, bit_width=bit_width, act_choices=spec.config_cls.ACT_BITS)
    return name, _build_config(spec.config_cls, options, name), context, threads


def quantize_in_place(model: nn.Module, config: QuantConfig, calibration_data=None, *,
                      method: str | None = None, **context) -> nn.Module:
    """``model`` itself (the caller's copy, consumed) quantized by the handler of ``config``'s
    method (``method``: its registry name, else the first registered for the config's class),
    with its ``quant_info`` (sizes, cost, bits). No input checks, copy or state guard: the one
    prepared path behind ``apply_quantization``, which does those once. Shared: a handler that
    builds on another method (``mitigation``'s) calls it, inside that guard, on its own copy."""
    name = method or config_name(config)
    fp32_size = evaluation.model_size_mib(model)
    start = time.perf_counter()
    quantized = _lookup(name).handler(model, config, calibration_data, **context)
    cost_s = time.perf_counter() - start
    quantized.quant_info = _full_info(quantized, fp32_size, name, config, cost_s)
    return quantized


def _full_info(quantized: nn.Module, fp32_size: float, name: str, config: QuantConfig,
               cost_s: float) -> "QuantInfo":
    info = getattr(quantized, "quant_info", None) or describe_quantized(quantized)
    if info["execution"] == "real_int8":
        size = evaluation.model_size_mib(quantized)
    else:
        size = packed_size_mib(quantized, weight_bits=FLOAT_BITS, layer_bits=info["layer_bits"])
    return QuantInfo(method=name, weight_bits=config.weight_bits, act_bits=config.act_bits,
                     execution=info["execution"], observer=getattr(config, "observer", None),
                     size_mib=size, fp32_size_mib=fp32_size, compression=fp32_size / size,
                     cost_s=cost_s, fp32_layers=list(info["fp32_layers"]),
                     layer_bits=dict(info["layer_bits"]), float_ops=info.get("float_ops"),
                     activation_range=_activation_range(config), config=config.to_dict(),
                     extra=dict(info.get("extra") or {}), **kernel_capability())


@dataclass(frozen=True)
class QuantInfo:
    """What a quantized model is, read back from it: ``model.quant_info``.

    ``extra`` holds a method's own facts for its result row (e.g. the FairnessAwareQuantizer's
    ``constraint_met``); ``record()`` is the row's quantization columns. Read it as attributes
    or, like the dict it replaces, by key; change it with ``replace``.
    """
    method: str
    weight_bits: int
    act_bits: int
    execution: str
    size_mib: float
    fp32_size_mib: float
    compression: float
    cost_s: float
    observer: str | None = None
    fp32_layers: list = field(default_factory=list)
    layer_bits: dict = field(default_factory=dict)
    float_ops: list | None = None
    activation_range: str | None = None
    cpu_capability: str | None = None
    vnni: bool | None = None
    config: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    RECORD_KEYS: ClassVar[tuple[str, ...]] = (
        "weight_bits", "act_bits", "execution", "observer", "size_mib", "fp32_size_mib",
        "compression", "fp32_layers", "layer_bits", "activation_range", "cpu_capability", "vnni")

    def __getitem__(self, key: str):
        if key in self.extra:
            return self.extra[key]
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def get(self, key: str, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def replace(self, **changes) -> "QuantInfo":
        """A copy with ``changes``; keys that are not fields go to ``extra``."""
        names = {item.name for item in fields(self)}
        extra = {**self.extra, **{k: v for k, v in changes.items() if k not in names}}
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if k in names},
                                   extra=extra)

    def record(self) -> dict:
        """The columns of a result row that come from the quantized model."""
        return {**{key: getattr(self, key) for key in self.RECORD_KEYS},
                "cost_s": round(self.cost_s, 3), **self.extra}


def _activation_range(config: QuantConfig) -> str | None:
    """The 8-bit activation range a model was built with: ``config``'s (resolved for this CPU),
    ``'reduced'`` for ``ptq_dynamic`` (its kernels always quantize to 0..127), else None."""
    if isinstance(config, DynamicConfig):
        return "reduced"
    if isinstance(config, PTQStaticConfig) and config.act_bits == 8:
        return config.resolved_activation_range
    return None


# --------------------------------------------------------------------------- building blocks

def _image_batches(data, name: str, method: str) -> tuple[torch.Tensor, Iterator[torch.Tensor]]:
    """(first image batch, iterator over all image batches) of a loader; refuses empty data."""
    if data is None:
        raise ValueError(f"method {method!r} needs {name}: a DataLoader yielding (images, "
                         "targets, group_codes, sample_ids) batches or image tensors, e.g. "
                         "datasets.make_loader(datasets.random_subset(splits.train, 512, seed), "
                         "64)")
    if isinstance(data, torch.Tensor):
        data = [data]
    if isinstance(data, torch.utils.data.Dataset):
        raise ValueError(NOT_A_LOADER.format(name=name, kind=type(data).__name__))
    batches = (batch_images(batch) for batch in data)
    first = next(batches, None)
    if first is None:
        raise ValueError(f"{name} yielded no batches; pass a DataLoader with at least one batch "
                         "(check the subset size and drop_last)")
    if first.dim() != 4:
        raise ValueError(f"{name} yielded images of shape {tuple(first.shape)}; expected batches "
                         "(N, C, H, W): pass a DataLoader, e.g. datasets.make_loader(data, 64)")
    return first, _chain(first, batches)


NOT_A_LOADER = ("{name} is a {kind} (single samples); expected a DataLoader of batches: wrap it, "
                "e.g. datasets.make_loader(dataset, 64)")


def _chain(first, rest: Iterator) -> Iterator:
    yield first
    yield from rest


def prepare_quantization(model: nn.Module, config: PTQStaticConfig,
                         example_images: torch.Tensor, *, qat: bool = False) -> nn.Module:
    """FX-trace ``model`` (modified: pass a copy), fuse Conv-BN(-ReLU) as the x86 backend does and
    insert observers (PTQ, eval mode) or fake quantizers (QAT, train mode)."""
    model.train(qat)
    prepare = prepare_qat_fx if qat else prepare_fx
    try:
        with profiling.step("prepare"):
            prepared = prepare(model, qconfig_mapping(model, config, qat=qat), (example_images,))
    except torch.fx.proxy.TraceError as error:
        raise ValueError(f"{type(model).__name__} cannot be traced by torch.fx ({error}); static "
                         "PTQ and QAT need an FX-traceable model: use 'ptq_dynamic' or make the "
                         "data-dependent control flow static") from error
    share_dropout_quantizers(prepared)
    prepared.integer_twin = config.all_int8  # its simulated form computes as the kernels do
    if config.act_bits == 8:
        prepared.narrowed_inputs = narrow_integer_inputs(prepared, config.resolved_activation_range)
    return prepared


PREPARED_FACTS = ("integer_twin", "narrowed_inputs")
"""The attributes ``prepare_quantization`` sets on a prepared graph that ``convert_quantized``
reads; a GraphModule's deep copy drops plain attributes, so ``copy_prepared`` carries them."""


def copy_prepared(prepared: nn.Module) -> nn.Module:
    """A deep copy of a prepared (or calibrated) graph, with its ``PREPARED_FACTS``."""
    copied = copy.deepcopy(prepared)
    for name in PREPARED_FACTS:
        if hasattr(prepared, name):
            setattr(copied, name, copy.deepcopy(getattr(prepared, name)))
    return copied


@torch.no_grad()
def calibrate(prepared: nn.Module, batches: Iterable[torch.Tensor], *, device="cpu",
              progress: bool = False) -> nn.Module:
    """Run image ``batches`` through a prepared model so its observers record activation ranges;
    the model is returned in eval mode on the CPU."""
    device = training.resolve_device(device)
    prepared.eval().to(device)
    with profiling.step("calibration"):
        for images in tqdm(batches, desc="calibrate", disable=not progress, leave=False):
            prepared(images.to(device))
    return prepared.cpu()


def convert_quantized(prepared: nn.Module, execution: str) -> nn.Module:
    """Freeze a calibrated/trained prepared model: ``'real_int8'`` -> x86 integer modules
    (``convert_fx``), ``'simulated'`` -> reference quantize/dequantize graph. Returns it with
    ``quant_info`` from ``describe_quantized``."""
    check_choice("execution", execution, EXECUTIONS[1:], "convert_quantized")
    prepared = prepared.cpu().eval()
    prepared.apply(disable_observer)
    narrowed = getattr(prepared, "narrowed_inputs", [])
    convert = convert_fx if execution == "real_int8" else _convert_to_reference_decomposed_fx
    model = convert(prepared).eval()
    if execution == "real_int8":
        clamp_inputs(model, narrowed)
    else:
        fuse_fake_quantize_pairs(model)
        reuse_fake_quantized_weights(model)
        if getattr(prepared, "integer_twin", False):
            average_pools_in_levels(model, fake_quantize)
            integer_kernel_layers(model, fake_quantize)
    model.quant_info = describe_quantized(model, execution)
    return model


# --------------------------------------------------------------------------- work done once

def model_digest(model: nn.Module) -> str:
    """A digest of everything a model computes with: its class, module tree and every tensor of
    its state (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha1(f"{type(model).__qualname__}\n{model!r}".encode())
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _images_digest(images: list[torch.Tensor]) -> str:
    digest = hashlib.sha1()
    for batch in images:
        batch = batch.detach().contiguous()
        digest.update(f"{batch.dtype}:{tuple(batch.shape)}".encode())
        digest.update(batch.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class SharedGraphs:
    """Static PTQ's prepared and calibrated graphs, each made once and handed out as copies
    while ``sharing(graphs)`` is active (one process, one run: ``experiment.Context``).

    A prepared graph is keyed by the model (``model_digest``) and the config without its
    execution (prepare reads neither the execution nor the example images' values); a calibrated
    one also by the calibration images' bytes, the device and the thread count. Converting a copy
    gives the same model, bit for bit, as preparing and calibrating again. Kept, so that a miss
    costs no copy: a prepared graph from the second time its key comes (the calibration study's
    draws), a calibrated one when its simulated twin may follow (w8a8: the twin converts its
    unit's calibration). The newest ``limit`` of each kind are kept.
    """

    def __init__(self, limit: int = 2):
        self.limit = limit
        self._prepared: dict[tuple, nn.Module] = {}
        self._calibrated: dict[tuple, nn.Module] = {}
        self._seen: set[tuple] = set()
        self.reused = {"prepared": 0, "calibrated": 0}

    def calibrated(self, model: nn.Module, config: PTQStaticConfig, images: list[torch.Tensor],
                   *, device="cpu", progress: bool = False) -> nn.Module:
        """``model`` prepared for ``config`` and calibrated on ``images`` (the caller's copy)."""
        base = (model_digest(model), type(config), dataclasses.replace(config, execution="auto"))
        key = (*base, _images_digest(images), str(training.resolve_device(device)),
               torch.get_num_threads())
        if key in self._calibrated:
            self.reused["calibrated"] += 1
            return copy_prepared(self._calibrated[key])
        prepared = calibrate(self._prepared_graph(base, model, config, images[0]), images,
                             device=device, progress=progress)
        if config.all_int8:
            self._keep(self._calibrated, key, copy_prepared(prepared))
        return prepared

    def _prepared_graph(self, key: tuple, model, config, example) -> nn.Module:
        if key in self._prepared:
            self.reused["prepared"] += 1
            return copy_prepared(self._prepared[key])
        prepared = prepare_quantization(model, config, example)
        if key in self._seen:
            self._keep(self._prepared, key, copy_prepared(prepared))
        self._seen.add(key)
        return prepared

    def _keep(self, graphs: dict, key: tuple, graph: nn.Module) -> None:
        while len(graphs) >= self.limit:
            graphs.pop(next(iter(graphs)))
        graphs[key] = graph


_SHARING: list[SharedGraphs] = []


@contextlib.contextmanager
def sharing(graphs: SharedGraphs):
    """Static PTQ inside this block takes its prepared and calibrated graphs from ``graphs``."""
    _SHARING.append(graphs)
    try:
        yield graphs
    finally:
        _SHARING.pop()


# --------------------------------------------------------------------------- built-in methods

@register_method("ptq_static", PTQStaticConfig,
                 traits=MethodTraits(twin=True, runtime_counterpart=True, deployable=True))
def _ptq_static(model: nn.Module, config: PTQStaticConfig, calibration_data, *, device="cpu",
                progress: bool = False, **_) -> nn.Module:
    first, batches = _image_batches(calibration_data, "calibration_data", "ptq_static")
    if _SHARING:
        prepared = _SHARING[-1].calibrated(model.cpu(), config, [b.cpu() for b in batches],
                                           device=device, progress=progress)
    else:
        prepared = prepare_quantization(model.cpu(), config, first.cpu())
        calibrate(prepared, batches, device=device, progress=progress)
    return convert_quantized(prepared, config.resolved_execution)


@register_method("ptq_dynamic", DynamicConfig, traits=MethodTraits(calibration="none"))
def _ptq_dynamic(model: nn.Module, config: DynamicConfig, calibration_data, **_) -> nn.Module:
    if calibration_data is not None:
        logger.info("ptq_dynamic quantizes activations at run time; calibration_data is unused")
    model = quantize_dynamic(model.cpu().eval(), {nn.Linear: per_channel_dynamic_qconfig},
                             dtype=torch.qint8, inplace=True)
    model.quant_info = describe_quantized(model, "real_int8")
    if not model.quant_info["layer_bits"]:
        logger.warning("ptq_dynamic found no Linear layer in %s; the model stays FP32",
                       type(model).__name__)
    return model


@register_method("qat", QATConfig, context_keys=("train_loader", "val_loader", "loss_hook"),
                 traits=MethodTraits(calibration="none", deployable=True, needs=("train_loader",)))
def _qat(model: nn.Module, config: QATConfig, calibration_data, *, train_loader=None,
         val_loader=None, loss_hook=None, device="auto", seed: int = 0, progress: bool = True,
         **_) -> nn.Module:
    first, _batches = _image_batches(train_loader, "train_loader", "qat")
    if calibration_data is not None:
        logger.info("qat calibrates its quantizers while training; calibration_data is unused")
    prepared = prepare_quantization(model.cpu(), config, first.cpu(), qat=True)
    training.fit(prepared, train_loader, val_loader, epochs=config.epochs, lr=config.lr,
        weight_decay=config.weight_decay, device=device, seed=seed, loss_hook=loss_hook,
        max_steps=config.max_steps, progress=progress, desc="qat")
    return convert_quantized(prepared, config.resolved_execution)


