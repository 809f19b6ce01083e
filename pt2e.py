"""torch real INT8 on the supported path: PT2E export quantization (torchao) lowered by Inductor.

``torch.export`` captures a deep copy of the model, torchao's ``X86InductorQuantizer`` annotates
it (per-channel symmetric s8 weights, per-tensor affine u8 activations with a histogram
observer), ``prepare_pt2e`` inserts observers, the calibration images run through it and
``convert_pt2e`` gives a program of quantize/dequantize ops around float ops. Run as it is, that
program is the *PT2E twin* (its quantize/dequantize computed in float); ``torch.compile`` with
Inductor freezing fuses each dequantize -> conv/linear -> quantize into oneDNN's integer kernels,
which is the deployed model (``execution = torch_pt2e_int8``).

The activation range follows the CPU as the FX path's does (``quantization``'s
``activation_range``: ``'auto'``, ``'full'``, ``'reduced'``): ``'reduced'`` (0..127,
``reduce_range=True``) where the integer kernels add u8 x s8 pairs in int16 (no VNNI),
``'full'`` (0..255) on VNNI CPUs. ``cpu_flags`` reads ``avx512_vnni`` and ``avx_vnni`` from
/proc/cpuinfo (torch's ``_is_vnni_supported`` sees only the first).

torchvision's ResNets call one ``self.relu`` at several places; the quantizer then finds one
partition with several outputs ("Input partition has more than one output node").
``split_shared_activations`` gives each call site its own copy of such a parameter-free module,
on a deep copy (the caller's model is never changed).

Average pools stay float (``FLOAT_POOLS``): the convs around them stay integer.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from torch import nn

from checks import check_choice
from quant_inspect import batch_images
from quantization import ACTIVATION_RANGES, default_activation_range

__all__ = ["CompiledModel", "INDUCTOR_OPTIONS", "RANGES", "compile_model", "cpu_flags",
           "pt2e_fp32", "pt2e_int8", "quantize_pt2e", "quantizer", "resolve_range",
           "split_shared_activations", "twin_of"]

INDUCTOR_OPTIONS = {"freezing": True}
"""Inductor settings in force around every call of a compiled model here, restored after: a
compile happens at the first call of each batch shape. Freezing folds the weights as constants,
which the integer-kernel fusions need. (``torch.compile(options={"freezing": True})`` is not
enough: the quantized convs then fail in Inductor with ``onednn.qconv_prepack``.)"""
RANGES = ACTIVATION_RANGES  # auto, full, reduced: as the FX path spells them
RECOMPILE_LIMIT = 32  # one static-shape compile per batch size seen (test batches, latency)
CPU_FLAGS = ("avx512_vnni", "avx_vnni")
FLOAT_POOLS = (nn.functional.adaptive_avg_pool2d, nn.functional.avg_pool2d)
"""Average pools the quantizer leaves float (their modules and functions alike). Quantized, a pool
keeps its input's scale, so the mean of n integers lands on an exact .5 tie about once in n
values; the twin and Inductor's kernel sum in different orders and round some ties apart.
EfficientNet-B0's squeeze-excitation gates amplify each such step: 74.6% agreement with its twin
with the pools quantized, 98.35% with them float (docs/int8.md)."""


def cpu_flags(path: str = "/proc/cpuinfo") -> dict[str, bool]:
    """Whether the CPU lists ``avx512_vnni`` and ``avx_vnni`` (False where the file is missing)."""
    try:
        with open(path) as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle
                          if line.startswith("flags")), [])
    except OSError:
        flags = []
    return {flag: flag in flags for flag in CPU_FLAGS}


def resolve_range(activation_range: str = "auto") -> str:
    """``'full'`` or ``'reduced'``: ``activation_range``, with ``'auto'`` decided for this CPU as
    the FX path decides it (``default_activation_range``)."""
    check_choice("activation_range", activation_range, RANGES, "torch_pt2e")
    return default_activation_range() if activation_range == "auto" else activation_range


def split_shared_activations(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in which each call of a parameter-free module (e.g. ResNet's shared
    ``self.relu``) goes to its own copy of that module: an FX graph module, or the plain copy when
    nothing is shared or the model cannot be FX-traced. ``model`` is left unchanged."""
    duplicate = copy.deepcopy(model).eval()
    try:
        traced = torch.fx.symbolic_trace(duplicate)
    except Exception:  # noqa: BLE001 - any tracing failure: export the plain copy
        return duplicate
    calls: dict[str, list[torch.fx.Node]] = {}
    for node in traced.graph.nodes:
        if node.op == "call_module":
            calls.setdefault(str(node.target), []).append(node)
    shared = {target: nodes for target, nodes in calls.items() if len(nodes) > 1
              and not any(True for _ in traced.get_submodule(target).parameters())}
    if not shared:
        return duplicate
    for target, nodes in shared.items():
        for index, node in enumerate(nodes[1:], 1):
            _own_module(traced, node, f"{target}_call{index}")
    traced.recompile()
    return traced


def _own_module(traced: torch.fx.GraphModule, node: torch.fx.Node, name: str) -> None:
    """Point ``node`` at a new copy of its module called ``name`` (its module path too, which
    the quantizer's partitions are keyed on)."""
    parent, _, leaf = name.rpartition(".")
    owner = traced.get_submodule(parent) if parent else traced
    owner.add_module(leaf, copy.deepcopy(traced.get_submodule(str(node.target))))
    node.target = name
    stack = node.meta.get("nn_module_stack")
    if stack:
        _, (_, kind) = stack.popitem()
        stack[name] = (name, kind)


def _export(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1)
    return torch.export.export(model, (example,), dynamic_shapes=({0: batch},))


def quantizer(activation_range: str):
    """torchao's x86 Inductor quantizer with its default config at ``activation_range``
    (``'full'`` or ``'reduced'``: ``reduce_range``)."""
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )
    config = get_default_x86_inductor_quantization_config(
        reduce_range=activation_range == "reduced")
    chosen = X86InductorQuantizer().set_global(config)
    for pool in FLOAT_POOLS:
        chosen.set_function_type_qconfig(pool, None)
    return chosen


@torch.no_grad()
def quantize_pt2e(model: nn.Module, calibration_data, *,
                  activation_range: str = "auto") -> torch.fx.GraphModule:
    """The PT2E-converted program of ``model`` calibrated on the images of ``calibration_data``
    (a loader of contract batches or image tensors): quantize/dequantize ops around float ops,
    the PT2E twin when run as it is. ``model`` is left unchanged; the result is on the CPU."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    activation_range = resolve_range(activation_range)
    batches = [batch_images(batch).cpu().float() for batch in calibration_data]
    if not batches:
        raise ValueError("calibration_data yielded no batches; pass a loader with images")
    source = split_shared_activations(model.cpu())
    program = _export(source, batches[0][:2].clone() if len(batches[0]) > 1
                      else batches[0].repeat(2, 1, 1, 1))
    prepared = prepare_pt2e(program.module(), quantizer(activation_range))
    for images in batches:
        prepared(images)
    converted = _drop_unused(convert_pt2e(prepared))
    converted.activation_range = activation_range
    return converted


def _drop_unused(program: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Remove the tensors no node reads: ``convert_pt2e`` keeps each float weight beside the
    int8 one folded from it, which would double the saved program."""
    used = {str(node.target) for node in program.graph.nodes if node.op == "get_attr"}
    for name in [name for name in program.state_dict() if name not in used]:
        owner, _, leaf = name.rpartition(".")
        delattr(program.get_submodule(owner) if owner else program, leaf)
    program.delete_all_unused_submodules()
    return program


class CompiledModel(nn.Module):
    """A program compiled by Inductor (freezing on, static shapes: one compile per batch size),
    run on the CPU like a runtime's model: images in, logits out. ``compile_s`` sums the seconds
    of the calls that compiled (a new batch shape), kept apart from latency."""

    def __init__(self, program: nn.Module, *, runtime: str, execution: str,
                 files: tuple[Path, ...] = ()):
        super().__init__()
        self.runtime, self.execution, self.files = runtime, execution, files
        # kept out of the module tree: no parameters to move, no eval() into the exported program
        self._compiled = (torch.compile(program, dynamic=False),)
        self._shapes: set[tuple] = set()
        self.compile_s = 0.0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        shape, new = tuple(images.shape), tuple(images.shape) not in self._shapes
        start = time.perf_counter()
        with torch.no_grad(), torch._inductor.config.patch(INDUCTOR_OPTIONS), \
                torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT,
                                           fail_on_recompile_limit_hit=True):
            logits = self._compiled[0](images.detach().cpu().float().contiguous())
        if new:
            self._shapes.add(shape)
            self.compile_s += time.perf_counter() - start
        return logits.to(images.device)

    def __deepcopy__(self, memo):  # compiled code is cached per object: share it
        return self

    def size_mib(self) -> float:
        """Bytes of the saved artifact's files, in MiB."""
        return sum(path.stat().st_size for path in self.files) / 2**20

    def extra_repr(self) -> str:
        return f"runtime={self.runtime}, execution={self.execution}"


def compile_model(program: nn.Module, image_size: int, *, execution: str,
                  files: tuple[Path, ...] = ()) -> CompiledModel:
    """``program`` compiled by Inductor and run once on a batch of 2 (the first compile)."""
    compiled = CompiledModel(program, runtime="torch_pt2e", execution=execution, files=files)
    compiled(torch.zeros(2, 3, image_size, image_size))
    return compiled


def save_program(program: nn.Module, image_size: int, path: Path) -> Path:
    """``program`` exported again and saved with ``torch.export.save`` (``.pt2``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(_export(program, torch.zeros(2, 3, image_size, image_size)), str(path))
    return path


def pt2e_fp32(model: nn.Module, image_size: int, folder: Path, threads: int) -> CompiledModel:
    """``model`` (a copy) compiled in FP32 with the same Inductor settings: the compiled FP32
    candidate of the latency comparison. Its artifact is the exported FP32 program."""
    program = copy.deepcopy(model).cpu().eval()
    files = (save_program(program, image_size, Path(folder) / "fp32.pt2"),)
    return compile_model(program, image_size, execution="torch_pt2e_fp32", files=files)


def pt2e_int8(model: nn.Module, calibration_data, image_size: int, folder: Path, threads: int,
              *, activation_range: str = "auto") -> CompiledModel:
    """``model`` quantized by PT2E and compiled; ``twin`` holds the converted program run
    without Inductor, ``activation_range`` the range it was built with. ``threads`` is the
    caller's setting; Inductor's kernels take the thread count in force when they compile."""
    converted = quantize_pt2e(model, calibration_data, activation_range=activation_range)
    files = (save_program(converted, image_size, Path(folder) / "int8.pt2"),)
    compiled = compile_model(converted, image_size, execution="torch_pt2e_int8", files=files)
    compiled.twin = twin_of(converted)
    compiled.activation_range = converted.activation_range
    return compiled


def twin_of(converted: torch.fx.GraphModule) -> nn.Module:
    """A copy of a converted program run eagerly (quantize/dequantize computed in float)."""
    return _Twin(copy.deepcopy(converted))


class _Twin(nn.Module):
    """An exported program as a model: ``eval()``/``train()`` set the flag only (an exported
    program refuses them; it runs as captured, in eval mode)."""

    def __init__(self, program: nn.Module):
        super().__init__()
        self.program = program

    def train(self, mode: bool = True) -> "_Twin":
        self.training = mode
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.program(images)
