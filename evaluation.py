"""Run a model over a loader into the per-sample prediction table; latency; size.

The prediction table (``sample_id, y_true, y_pred, score, <sensitive attrs>, group``) is the
contract between running models and judging them: every fairness metric is recomputed from it.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import os
import statistics
import time

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

import profiling
from fairness_metrics import intersectional_labels
from training import resolve_device

logger = logging.getLogger(__name__)

LAYOUTS = ("contiguous", "channels_last")
MIN_REPEATS = 6      # the fewest runs that give a distribution-free 95% interval of the median
TOLERANCE = 0.03     # latency timing stops when that interval is within 3% of the median
SHARED_CORES = 0.5   # other processes using this much of a core make the CPU "shared"
# Converted (integer-kernel) modules live here; they only have CPU kernels.
_QUANTIZED_MODULE_PREFIXES = ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized",
                              "torch.nn.quantized", "torch.nn.intrinsic.quantized")


def is_quantized(model: nn.Module) -> bool:
    """True when ``model`` holds converted quantized modules or quantized tensors."""
    if any(type(module).__module__.startswith(_QUANTIZED_MODULE_PREFIXES)
           for module in model.modules()):
        return True
    return any(isinstance(value, torch.Tensor) and value.is_quantized
               for value in model.state_dict().values())


def _inference_device(model: nn.Module, device: str | torch.device) -> torch.device:
    """The requested device, except CPU for quantized models (they have no CUDA kernels)."""
    device = resolve_device(device)
    if device.type != "cpu" and is_quantized(model):
        logger.info("model holds quantized modules: running it on CPU instead of %s", device)
        return torch.device("cpu")
    return device


def _sensitive_metadata(loader) -> tuple[pd.DataFrame, list[str]]:
    """``loader.dataset.metadata`` indexed by sample_id, and the sensitive attribute names."""
    dataset = getattr(loader, "dataset", None)
    metadata = getattr(dataset, "metadata", None)
    sensitive = getattr(dataset, "sensitive_attrs", None)
    if not isinstance(metadata, pd.DataFrame) or sensitive is None:
        raise ValueError(
            f"predict needs loader.dataset.metadata (a DataFrame) and .sensitive_attrs; "
            f"{type(dataset).__name__} has no such attributes. Use a dataset that meets the group-"
            "dataset protocol (docs/datasets.md), e.g. one from datasets.load_dataset")
    if "group" not in metadata.columns and set(sensitive) <= set(metadata.columns):
        metadata = metadata.assign(group=intersectional_labels(metadata[list(sensitive)]))
    columns = ["sample_id", *sensitive, "group"]
    absent = [column for column in columns if column not in metadata.columns]
    if absent:
        raise ValueError(f"dataset metadata lacks columns {absent}; expected {columns} "
                         "(see docs/contracts.md)")
    indexed = metadata[columns].set_index("sample_id")
    if not indexed.index.is_unique:
        duplicated = indexed.index[indexed.index.duplicated()].unique()[:5].tolist()
        raise ValueError(f"dataset metadata has duplicated sample_id values {duplicated}; "
                         "sample ids must be unique")
    return indexed, list(sensitive)


def predict(model: nn.Module, loader, device: str | torch.device = "cpu", *,
            progress: bool = True) -> pd.DataFrame:
    """Per-sample predictions of ``model`` over ``loader`` joined with the sensitive attributes.

    Columns: ``sample_id, y_true, y_pred, score, <each sensitive attribute>, group``, where
    ``y_pred`` is the argmax class and ``score`` the softmax probability of class 1. Runs in eval
    mode under ``torch.inference_mode``; the model is moved to ``device`` (CPU for quantized
    models, whatever was asked).
    """
    metadata, sensitive = _sensitive_metadata(loader)
    device = _inference_device(model, device)
    table = _model_outputs(model.to(device).eval(), loader, device, progress)
    unknown = pd.Index(table["sample_id"]).difference(metadata.index)
    if len(unknown):
        raise ValueError(f"sample ids {unknown[:5].tolist()} are not in the dataset metadata; "
                         "the loader must come from the dataset whose metadata it carries")
    attributes = metadata.loc[table["sample_id"], [*sensitive, "group"]].reset_index(drop=True)
    return pd.concat([table, attributes], axis=1)


@torch.inference_mode()
def _model_outputs(model: nn.Module, loader, device: torch.device, progress: bool) -> pd.DataFrame:
    """``sample_id, y_true, y_pred, score`` for every sample of ``loader``, in loader order."""
    sample_ids, y_true, y_pred, score = [], [], [], []
    for images, targets, _, ids in tqdm(loader, desc="predict", disable=not progress,
                                        leave=False):
        logits = model(images.to(device)).float()
        if logits.ndim != 2 or logits.shape[1] < 2:
            raise ValueError(f"model must output (batch, classes >= 2) logits, got shape "
                             f"{tuple(logits.shape)}")
        sample_ids += list(ids)
        y_true += torch.as_tensor(targets).tolist()
        y_pred += logits.argmax(1).tolist()
        score += torch.softmax(logits, 1)[:, 1].tolist()
    return pd.DataFrame({"sample_id": sample_ids, "y_true": y_true, "y_pred": y_pred,
                         "score": score})


@contextlib.contextmanager
def torch_threads(threads: int):
    """Run the block with ``torch.set_num_threads(threads)``, restoring the old count after."""
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def measure_latency(model: nn.Module, image_size: int, batch_size: int = 1, *, threads: int = 2,
                    warmup: int = 5, repeats: int = 20, channels_last: bool = False,
                    min_repeats: int = MIN_REPEATS, tolerance: float = TOLERANCE) -> float:
    """Median CPU milliseconds per forward pass of a random ``(batch_size, 3, size, size)`` batch.

    ``latency_stats``'s ``latency_ms``; see there for the arguments.
    """
    return latency_stats(model, image_size, batch_size, threads=threads, warmup=warmup,
                         repeats=repeats, channels_last=channels_last, min_repeats=min_repeats,
                         tolerance=tolerance)["latency_ms"]


def latency_stats(model: nn.Module, image_size: int, batch_size: int = 1, *, threads: int = 2,
                  warmup: int = 5, repeats: int = 20, channels_last: bool = False,
                  min_repeats: int = MIN_REPEATS, tolerance: float = TOLERANCE) -> dict:
    """Median milliseconds per forward pass, timed until it is stable, and how it was timed.

    Works on a copy of the model (eval mode, CPU, optionally channels_last), after ``warmup``
    untimed runs, with ``threads`` intra-op threads; the caller's thread count is restored.
    Timing stops as soon as at least ``min_repeats`` runs give a distribution-free 95% interval
    of the median within ``tolerance`` (relative) of it on both sides, and after ``repeats`` runs
    at the latest. Returns ``latency_ms, repeats`` (runs timed), ``ci_low_ms, ci_high_ms`` (NaN
    when too few runs for a 95% interval), ``stable`` (the rule stopped it) and ``other_cores``
    (CPU other processes used meanwhile, in cores; NaN where /proc/stat is missing).
    """
    for label, value, minimum in (("image_size", image_size, 1), ("batch_size", batch_size, 1),
                                  ("warmup", warmup, 0), ("repeats", repeats, 1),
                                  ("min_repeats", min_repeats, 1)):
        if not isinstance(value, int) or value < minimum:
            raise ValueError(f"{label} must be an int >= {minimum}, got {value!r}")
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must be a fraction in (0, 1), got {tolerance!r}")
    model = copy.deepcopy(model).cpu().eval()
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    timings, interval = [], None
    with profiling.step("latency"), torch_threads(threads), torch.inference_mode():
        for _ in range(warmup):
            model(inputs)
        before = _cpu_seconds()
        while len(timings) < repeats:
            start = time.perf_counter()
            model(inputs)
            timings.append(time.perf_counter() - start)
            interval = median_interval(timings)
            if len(timings) >= min_repeats and _within(interval, statistics.median(timings),
                                                       tolerance):
                break
        other_cores = _other_cores(before, _cpu_seconds())
    median = statistics.median(timings)
    low, high = interval or (math.nan, math.nan)
    return {"latency_ms": median * 1000, "repeats": len(timings), "ci_low_ms": low * 1000,
            "ci_high_ms": high * 1000, "stable": _within(interval, median, tolerance),
            "other_cores": other_cores}


def median_interval(values, level: float = 0.95) -> tuple[float, float] | None:
    """Distribution-free ``level`` interval of the median from order statistics, or None when
    there are too few values for one (fewer than 6 at 95%)."""
    ordered, n = sorted(values), len(values)
    tail, k = 0.0, 0  # P(Binomial(n, 1/2) < k + 1), the mass below each interval end
    while k < n // 2:
        tail += math.comb(n, k) / 2**n
        if tail > (1 - level) / 2:
            break
        k += 1
    return None if k == 0 else (ordered[k - 1], ordered[n - k])


def _within(interval, median: float, tolerance: float) -> bool:
    return interval is not None and interval[1] - median <= tolerance * median \
        and median - interval[0] <= tolerance * median


def _cpu_seconds() -> tuple[float, float, float] | None:
    """(wall, this process's CPU seconds, all CPUs' busy seconds) now; None without /proc/stat."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(value) for value in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(fields[:3]) + sum(fields[5:8])  # user nice system, irq softirq steal
    return time.perf_counter(), time.process_time(), busy / os.sysconf("SC_CLK_TCK")


def _other_cores(before, after) -> float:
    """Cores' worth of CPU that other processes used between two ``_cpu_seconds`` readings."""
    if before is None or after is None or after[0] <= before[0]:
        return math.nan
    wall, own, busy = (a - b for a, b in zip(after, before))
    return max(0.0, (busy - own) / wall)


def cpu_load(sample_s: float = 0.25) -> dict:
    """How busy the CPU is with other work now, for result rows next to a latency.

    ``load_avg_1m`` (the OS's 1-minute load average, this process's own recent work included),
    ``other_cores`` (CPU other processes used over a ``sample_s`` sample while this one sleeps;
    NaN without /proc/stat) and ``cpu_shared``: other processes used at least
    ``SHARED_CORES`` of a core (without /proc/stat: the load average exceeded it).
    """
    before = _cpu_seconds()
    time.sleep(sample_s)
    other_cores = _other_cores(before, _cpu_seconds())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    shared = other_cores >= SHARED_CORES if not math.isnan(other_cores) else load >= SHARED_CORES
    return {"load_avg_1m": load, "other_cores": other_cores, "cpu_shared": bool(shared)}


def fp32_reference_latency(model: nn.Module, image_size: int, batch_size: int = 1,
                           **options) -> tuple[float, str]:
    """The faster of the default and channels_last layouts: ``(median ms, layout name)``.

    Speedup claims must compare against the strongest eager FP32 setting, not a convenient one.
    ``options`` go to ``measure_latency`` (threads, warmup, repeats).
    """
    timings = {layout: measure_latency(model, image_size, batch_size,
                                       channels_last=layout == "channels_last", **options)
               for layout in LAYOUTS}
    best = min(timings, key=timings.get)
    logger.info("FP32 reference latency (batch %d): %s", batch_size,
                ", ".join(f"{name} {ms:.2f} ms" for name, ms in timings.items()))
    return timings[best], best


def fastest_latency(models, image_size: int, batch_size: int = 1, **options) -> tuple[float, str]:
    """The fastest of ``models`` (a mapping name -> model): ``(median ms, name)``.

    A torch model with parameters is tried in both layouts (``<name>_contiguous``,
    ``<name>_channels_last``); another runtime's model (no parameters) as it is. ``options`` go
    to ``measure_latency`` (threads, warmup, repeats).
    """
    timings = {}
    for name, model in models.items():
        layouts = LAYOUTS if any(True for _ in model.parameters()) else (None,)
        for layout in layouts:
            label = name if layout is None else f"{name}_{layout}"
            timings[label] = measure_latency(model, image_size, batch_size,
                                             channels_last=layout == "channels_last", **options)
    best = min(timings, key=timings.get)
    logger.info("latency (batch %d): %s", batch_size,
                ", ".join(f"{name} {ms:.2f} ms" for name, ms in timings.items()))
    return timings[best], best


def model_size_mib(model: nn.Module) -> float:
    """Serialized size of ``model.state_dict()`` in MiB (2**20 bytes); works for quantized
    models."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes / 2**20
