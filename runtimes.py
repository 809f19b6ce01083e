"""Deployment runtimes beside torch: the same FP32 checkpoint, quantized to INT8 with the same
calibration images by the runtime a model ships with, saved, and run on the test split.

=============  =====================
================================================================== runtime        execution
how =============  =====================
================================================================== onnxruntime
``onnxruntime_int8``   FP32 ONNX export (``torch.onnx``), static QDQ INT8 from
                                      ``onnxruntime.quantization.quantize_static`` (per-channel
                                      symmetric s8 weights, u8 activations, MinMax calibration;
                                      ``reduce_range`` on CPUs without VNNI, whose u8 x s8 kernels
                                      saturate otherwise); ``models/<config_id>.onnx``
openvino       ``openvino_int8``      ``openvino.convert_model`` of the FP32 model, INT8 from
                                      ``nncf.quantize`` (its default preset; the transformer model
                                      type for attention models); ``models/<config_id>.xml/.bin``
torch_pt2e     ``torch_pt2e_int8``    ``torch.export`` + torchao's PT2E, x86 Inductor quantizer
                                      (``reduce_range`` without VNNI, as the FX path's range),
                                      ``torch.compile`` with Inductor freezing (``pt2e``); FP32:
                                      the compiled FP32 model; ``models/<config_id>/int8.pt2``
=============  =====================
==================================================================

A runtime's model is a ``RuntimeModel``: an ``nn.Module`` whose forward hands images to the
runtime and returns its logits, so ``evaluation.predict``, ``measure_latency`` and
``quantization.prediction_agreement`` treat it like any torch model. Each runtime also gives its
FP32 model, so speedups can be measured against the fastest FP32 on the machine. A runtime whose
package is missing raises a ``ValueError`` that names the package and the pinned install line.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

import pt2e
from evaluation import model_size_mib
from quantization import QuantInfo, kernel_capability

logger = logging.getLogger(__name__)

__all__ = ["RUNTIMES", "RuntimeModel", "available_runtimes", "fp32_runtime_model", "get_runtime",
           "quantize_with_runtime"]

INPUT_NAME = "images"
UNKNOWN_RUNTIME = ("runtime {name!r} is not known; known runtimes: {known} (and 'torch', the "
                   "project's own integer kernels)")
MISSING_PACKAGE = ("runtime {name!r} needs the Python package {package!r}, which is not "
                   "installed: pip install -r requirements.txt (it pins {package}), or leave "
                   "{name} out of runtime.backends")


class RuntimeModel(nn.Module):
    """Images in, logits out, through another runtime's compiled model (CPU, float32 numpy)."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], *, runtime: str, execution: str,
                 files: tuple[Path, ...] = ()):
        super().__init__()
        self._run, self.runtime, self.execution, self.files = run, runtime, execution, files

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(images.detach().cpu().float().numpy())
        logits = torch.from_numpy(np.asarray(self._run(array), dtype=np.float32))
        return logits.to(images.device)  # the runtime runs on the CPU; the caller's device back

    def __deepcopy__(self, memo):  # a compiled artifact is immutable; sessions do not pickle
        return self

    def size_mib(self) -> float:
        """Bytes of the saved artifact's files, in MiB."""
        return sum(path.stat().st_size for path in self.files) / 2**20

    def extra_repr(self) -> str:
        return f"runtime={self.runtime}, execution={self.execution}"


@dataclass(frozen=True)
class Runtime:
    """A deployment runtime: its package and how it builds FP32 and INT8 models."""
    name: str
    package: str
    fp32: Callable[..., RuntimeModel]
    int8: Callable[..., RuntimeModel]
    observer: str = "runtime_default"
    modules: tuple[str, ...] = ()  # other modules it imports (found when installed)

    @property
    def execution(self) -> str:
        return f"{self.name}_int8"

    def check_installed(self) -> None:
        if importlib.util.find_spec(self.package) is None:
            raise ValueError(MISSING_PACKAGE.format(name=self.name, package=self.package))


def _images(loader) -> Iterator[np.ndarray]:
    for batch in loader:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        yield images.detach().cpu().float().numpy()


def _example(image_size: int) -> torch.Tensor:
    return torch.zeros(2, 3, image_size, image_size)


# ----------------------------------------------------------------------------- ONNX Runtime

def export_onnx(model: nn.Module, image_size: int, path: Path) -> Path:
    """FP32 ONNX file of ``model`` with a dynamic batch axis (``torch.onnx``'s exporter)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(model.cpu().eval(), (_example(image_size),), str(path), dynamo=True,
                      input_names=[INPUT_NAME], output_names=["logits"],
                      dynamic_shapes=({0: batch},), verbose=False)
    return path


def _ort_model(path: Path, threads: int, execution: str) -> RuntimeModel:
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options,
                                           providers=["CPUExecutionProvider"])
    return RuntimeModel(lambda array: session.run(None, {INPUT_NAME: array})[0],
                        runtime="onnxruntime", execution=execution,
                        files=tuple(sorted(path.parent.glob(path.name + "*"))))


def _ort_fp32(model, image_size, folder: Path, threads: int) -> RuntimeModel:
    path = export_onnx(model, image_size, folder / "fp32.onnx")
    fp32 = _ort_model(path, threads, "onnxruntime_fp32")
    fp32.source = path
    return fp32


def _copy_export(source: Path, folder: Path) -> Path:
    """The ONNX file ``source`` and its external data copied into ``folder`` under the same
    names (the file refers to its data by name): the bytes a second export would write."""
    folder.mkdir(parents=True, exist_ok=True)
    for file in sorted(source.parent.glob(source.name + "*")):
        shutil.copyfile(file, folder / file.name)
    return folder / source.name


@contextlib.contextmanager
def _quiet_root_logger(fragment: str):
    """Drop root-logger records containing ``fragment`` (onnxruntime advice logged per call)."""
    class Drop(logging.Filter):
        def filter(self, record):
            return fragment not in record.getMessage()

    drop, root = Drop(), logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _ort_int8(model, calibration, image_size, folder: Path, threads: int,
              source: Path | None = None) -> RuntimeModel:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = ({INPUT_NAME: images} for images in _images(calibration))

        def get_next(self):
            return next(self.batches, None)

    fp32 = (_copy_export(source, folder) if source  # always this model's weights
            else export_onnx(model, image_size, folder / "fp32.onnx"))
    target = folder / "int8.onnx"
    with _quiet_root_logger("pre-process"):  # the exporter already folded BN; nothing to add
        quantize_static(str(fp32), str(target), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        reduce_range=not kernel_capability()["vnni"])
    return _ort_model(target, threads, "onnxruntime_int8")


# ----------------------------------------------------------------------------- OpenVINO + NNCF

def _ov_convert(model: nn.Module, image_size: int):
    import openvino
    return openvino.convert_model(model.cpu().eval(), example_input=_example(image_size),
                                  input=[(-1, 3, image_size, image_size)])


def _ov_model(ov_model, threads: int, execution: str, files: tuple[Path, ...]) -> RuntimeModel:
    import openvino
    compiled = openvino.Core().compile_model(ov_model, "CPU", {
        "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32"})
    output = compiled.output(0)
    return RuntimeModel(lambda array: compiled(array)[output], runtime="openvino",
                        execution=execution, files=files)


def _ov_save(ov_model, path: Path) -> tuple[Path, ...]:
    import openvino
    path.parent.mkdir(parents=True, exist_ok=True)
    openvino.save_model(ov_model, str(path))
    return path, path.with_suffix(".bin")


def _ov_fp32(model, image_size, folder: Path, threads: int) -> RuntimeModel:
    ov_model = _ov_convert(model, image_size)
    return _ov_model(ov_model, threads, "openvino_fp32", _ov_save(ov_model, folder / "fp32.xml"))


def _is_transformer(model: nn.Module) -> bool:
    return any("Attention" in type(module).__name__ for module in model.modules())


def _ov_int8(model, calibration, image_size, folder: Path, threads: int) -> RuntimeModel:
    # converted again, not cloned from the FP32 model's conversion: the saved XML names nodes
    # from a process-wide counter, so one conversion fewer would change the artifact's size
    import nncf
    samples = [image[None] for images in _images(calibration) for image in images]
    options = {"model_type": nncf.ModelType.TRANSFORMER} if _is_transformer(model) else {}
    quantized = nncf.quantize(_ov_convert(model, image_size), nncf.Dataset(samples),
                              subset_size=len(samples), **options)
    return _ov_model(quantized, threads, "openvino_int8", _ov_save(quantized, folder / "int8.xml"))


RUNTIMES: dict[str, Runtime] = {
    "onnxruntime": Runtime("onnxruntime", "onnxruntime", _ort_fp32, _ort_int8, "minmax"),
    "openvino": Runtime("openvino", "nncf", _ov_fp32, _ov_int8, "nncf_default", ("openvino",)),
    "torch_pt2e": Runtime("torch_pt2e", "torchao", pt2e.pt2e_fp32, pt2e.pt2e_int8, "histogram"),
}


def get_runtime(name: str) -> Runtime:
    """The runtime called ``name``; an unknown name lists the known ones."""
    if name not in RUNTIMES:
        raise ValueError(UNKNOWN_RUNTIME.format(name=name, known=", ".join(RUNTIMES)))
    return RUNTIMES[name]


def available_runtimes() -> list[str]:
    """The runtimes whose packages are installed."""
    return [name for name, runtime in RUNTIMES.items()
            if all(importlib.util.find_spec(p) for p in (runtime.package, *runtime.modules))]


def fp32_runtime_model(name: str, model: nn.Module, image_size: int, folder: str | Path, *,
                       threads: int = 2) -> RuntimeModel:
    """``model`` exported to runtime ``name`` in FP32 (files under ``folder``)."""
    runtime = get_runtime(name)
    runtime.check_installed()
    return runtime.fp32(model, image_size, Path(folder), threads)


def quantize_with_runtime(name: str, model: nn.Module, calibration_data, image_size: int,
                          folder: str | Path, *, threads: int = 2,
                          fp32: RuntimeModel | None = None) -> RuntimeModel:
    """``model`` quantized to INT8 by runtime ``name`` on the images of ``calibration_data`` (a
    loader of contract batches or image tensors); the artifact is saved under ``folder``. The
    result carries ``quant_info`` with the same keys as ``apply_quantization``'s. ``fp32``: this
    runtime's FP32 model of the same ``model`` (``fp32_runtime_model``), whose export is reused
    rather than made again where the runtime can (ONNX Runtime's ONNX files)."""
    runtime = get_runtime(name)
    runtime.check_installed()
    source = getattr(fp32, "source", None)
    start = time.perf_counter()
    quantized = runtime.int8(model, calibration_data, image_size, Path(folder), threads,
                             **({} if source is None else {"source": source}))
    cost_s = time.perf_counter() - start
    size, fp32_size = quantized.size_mib(), model_size_mib(model)  # FP32 as torch rows count it
    quantized.quant_info = QuantInfo(
        method="ptq_static", weight_bits=8, act_bits=8, execution=runtime.execution,
        observer=runtime.observer, size_mib=size, fp32_size_mib=fp32_size,
        compression=fp32_size / size, cost_s=cost_s, activation_range=_runtime_range(quantized),
        extra=_runtime_facts(quantized), **kernel_capability())
    logger.info("%s INT8: %.3f MiB (x%.2f), %.1f s", name, size, fp32_size / size, cost_s)
    return quantized


def _runtime_range(quantized: RuntimeModel) -> str:
    """The range a runtime's model was built with: PT2E's own, ONNX Runtime's ``reduce_range``
    choice here; OpenVINO picks its own per CPU."""
    if getattr(quantized, "activation_range", None):
        return quantized.activation_range
    if quantized.runtime == "onnxruntime":
        return "full" if kernel_capability()["vnni"] else "reduced"
    return "runtime"


def _runtime_facts(quantized: RuntimeModel) -> dict:
    """Row columns only a compiled torch model has: the CPU flags its range was chosen from
    (/proc/cpuinfo) and the seconds its first compile took (kept apart from cost and latency)."""
    if not hasattr(quantized, "compile_s"):
        return {}
    return {**pt2e.cpu_flags(), "compile_s": round(quantized.compile_s, 3)}
