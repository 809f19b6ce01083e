"""The notebook comparison: quantize one model several ways and compare accuracy, fairness, size
and cost on a test loader, in one tidy table (``compare_quantization_methods``)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd
from torch import nn
from tqdm.auto import tqdm

import evaluation
from fairness_metrics import PREDICTION_COLUMNS, intersectional_labels, summarize_predictions
from quantization import (
    FLOAT_BITS,
    SHORT_NAMES,
    apply_quantization,
    context_keys,
    method_config,
    method_traits,
    resolve_method,
)

__all__ = ["QuantizationComparison", "compare_quantization_methods"]

INFO_COLUMNS = ("method", "weight_bits", "act_bits", "execution", "observer", "size_mib",
                "fp32_size_mib", "compression", "cost_s", "calibration", "calibration_group_counts")
"""What a comparison row takes from each quantized model's ``quant_info`` (when it has it)."""


@dataclass
class QuantizationComparison:
    """Result of ``compare_quantization_methods``: ``table`` (one row per method, FP32 first),
    ``group_metrics`` (long: label, group, metric, value) and the prediction tables."""
    table: pd.DataFrame
    group_metrics: pd.DataFrame
    predictions: dict = field(repr=False, default_factory=dict)

    def save_to_csv(self, path: str | Path) -> Path:
        """Write ``table`` as CSV; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.table.to_csv(path, index=False)
        return path

    def plot_comparison(self, path: str | Path | None = None) -> Path:
        """Accuracy and DP gap per method with their bootstrap intervals, saved as a PNG
        (default ``quantization_comparison.png``); returns the path."""
        import visualizations

        return visualizations.plot_method_comparison(self.table,
                                                     path or "quantization_comparison.png")


MISSING_INPUT = ("compare_quantization_methods: {methods} cannot run without {key}, which was not "
                 "given: pass {key}=... to the call (e.g. {example}). Every method was checked "
                 "before any ran, so nothing was run")
UNTAKEN_CONTEXT = ("compare_quantization_methods: {key}= is taken by none of the methods "
                   "{methods}; they take {accepted}. Drop it or fix its name; nothing was run")
INPUT_EXAMPLES = {"calibration_data": "calibration_data=datasets.make_loader(splits.train, 64)",
                  "train_loader": "train_loader=datasets.make_loader(splits.train, 64, "
                                  "shuffle=True)"}
BAD_SPEC = ("cannot read method spec {spec!r}; use a name ('PTQ_INT8'), a (name, options) tuple or "
            "a dict with 'method' (and optional 'label')")


@dataclass(frozen=True)
class _Run:
    """One method of a comparison, checked: its label, registry name, options and context."""
    label: str
    name: str
    options: dict
    context: dict


def _method_spec(spec) -> tuple[str | None, str, dict]:
    """(label or None, method, options) from ``'PTQ_INT4'``, ``('ptq_static', {...})`` or
    ``{'method': ..., 'label': ..., **options}``."""
    if isinstance(spec, str):
        return spec, spec, {}
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], Mapping):
        spec = {**spec[1], "method": spec[0]}
    if not (isinstance(spec, Mapping) and "method" in spec):
        raise ValueError(BAD_SPEC.format(spec=spec))
    options = {key: value for key, value in spec.items() if key not in ("method", "label")}
    return spec.get("label"), spec["method"], options


def _readable_label(method: str, config) -> str:
    """The short name or ``<method> <bits>``, then the options set besides bits:
    ``PTQ_INT8 observer=minmax``, ``ptq_static w4a8``."""
    default = type(config)()
    rest = [f"{item.name}={getattr(config, item.name)}" for item in dataclasses.fields(config)
            if item.name not in ("weight_bits", "act_bits")
            and getattr(config, item.name) != getattr(default, item.name)]
    head = method if method in SHORT_NAMES else f"{method} {config.bits}"
    return " ".join([head, *rest])


def _plan(methods: Sequence, calibration_data, context: Mapping) -> list[_Run]:
    """Every method checked (name, options, the inputs it needs) before any of them runs; each
    context item goes to the methods that take it."""
    runs, taken = [], set()
    for spec in methods:
        label, method, options = _method_spec(spec)
        name, options = resolve_method(method, options)
        accepted = context_keys(name)
        config = method_config(name, **options)
        given = {key: value for key, value in context.items() if key in accepted}
        taken |= given.keys()
        runs.append(_Run(label or _readable_label(method, config), name, options, given))
    for key in context.keys() - taken:
        accepted = sorted(set().union(*(context_keys(r.name) for r in runs)))
        raise ValueError(UNTAKEN_CONTEXT.format(key=key, methods=[run.name for run in runs],
                                                accepted=accepted))
    inputs = {"calibration_data": calibration_data, **context}
    for key in ("calibration_data",
                *sorted({k for r in runs for k in method_traits(r.name).needs})):
        lacking = [run.label for run in runs
                   if key in method_traits(run.name).required_inputs() and inputs.get(key) is None]
        if lacking:
            raise ValueError(MISSING_INPUT.format(methods=lacking, key=key,
                                                  example=INPUT_EXAMPLES.get(key, f"{key}=...")))
    return _unique_labels(runs)


def _unique_labels(runs: list[_Run]) -> list[_Run]:
    """Repeated labels get ``#2``, ``#3``… so every row stays identifiable."""
    seen: dict[str, int] = {}
    unique = []
    for run in runs:
        seen[run.label] = seen.get(run.label, 0) + 1
        label = run.label if seen[run.label] == 1 else f"{run.label} #{seen[run.label]}"
        unique.append(dataclasses.replace(run, label=label))
    return unique


def _check_sensitive_attrs(test_loader, sensitive_attrs: Sequence[str] | None) -> None:
    """Before anything runs: the attributes must be metadata columns of the test set."""
    metadata = getattr(getattr(test_loader, "dataset", None), "metadata", None)
    if not sensitive_attrs or metadata is None:
        return
    missing = [attr for attr in sensitive_attrs if attr not in metadata.columns]
    if missing:
        available = [c for c in metadata.columns
                     if c not in (*PREDICTION_COLUMNS, "split", "target")]
        raise ValueError(f"sensitive_attrs {missing} are not columns of the test set's metadata; "
                         f"it has {available}. Pass some of those; nothing was run")


def _regroup(table: pd.DataFrame, sensitive_attrs: Sequence[str] | None) -> pd.DataFrame:
    """Rebuild ``group`` from ``sensitive_attrs`` (in that order) when they are given."""
    if not sensitive_attrs:
        return table
    missing = [attr for attr in sensitive_attrs if attr not in table.columns]
    if missing:
        available = [c for c in table.columns if c not in PREDICTION_COLUMNS]
        raise ValueError(f"sensitive_attrs {missing} are not columns of the predictions; the "
                         f"test set has {available}")
    table = table.copy()
    table["group"] = intersectional_labels(table[list(sensitive_attrs)])
    return table


def compare_quantization_methods(model: nn.Module, methods: Sequence, test_loader, *,
                                 sensitive_attrs: Sequence[str] | None = None,
                                 calibration_data=None, n_resamples: int = 1000, seed: int = 0,
                                 device="cpu", **context) -> QuantizationComparison:
    """Quantize ``model`` with each method and compare accuracy and fairness on ``test_loader``.

    ``methods`` items: a short or registry name, a ``(name, options)`` tuple, or a dict with
    ``method`` (and ``label``); rows are labelled by the short name, the ``label``, or method and
    bits (``ptq_static w4a8``). ``sensitive_attrs`` picks the attributes whose combination
    defines the groups (default: the dataset's ``group``). ``calibration_data`` goes to every
    method that calibrates; other keyword arguments (``context``, e.g. ``train_loader`` for
    ``QAT_INT8``) go to each method that takes them (``quantization.context_keys``). Every
    method name, option and needed input is checked before any method runs. The table has one
    row per method, FP32 first, with every metric of ``fairness_metrics.summarize_predictions``
    (with ``_low/_high`` bootstrap bounds and deltas against FP32) plus execution, bits, sizes,
    cost and, for methods that draw their own calibration set, its group counts.
    """
    if not methods:
        raise ValueError("methods is empty; pass e.g. ['PTQ_INT8', 'PTQ_INT4', 'dynamic']")
    runs = _plan(methods, calibration_data, context)
    _check_sensitive_attrs(test_loader, sensitive_attrs)
    reference = _regroup(evaluation.predict(model, test_loader, device, progress=False),
                         sensitive_attrs)
    fp32_size = evaluation.model_size_mib(model)
    results = [("fp32", {"method": "fp32", "weight_bits": FLOAT_BITS, "act_bits": FLOAT_BITS,
                         "execution": "fp32", "size_mib": fp32_size, "fp32_size_mib": fp32_size,
                         "compression": 1.0, "cost_s": 0.0}, reference)]
    for run in tqdm(runs, desc="methods", leave=False):
        quantized = apply_quantization(model, run.name, calibration_data=calibration_data,
                                       device=device, seed=seed, **{**run.context, **run.options})
        info = {key: quantized.quant_info.get(key) for key in INFO_COLUMNS
                if quantized.quant_info.get(key) is not None}
        predictions = _regroup(evaluation.predict(quantized, test_loader, device,
                                                  progress=False), sensitive_attrs)
        results.append((run.label, info, predictions))
    rows, groups = [], []
    for label, info, predictions in results:
        record, per_group = summarize_predictions(predictions, reference=None if label == "fp32"
                                      else reference, n_resamples=n_resamples, seed=seed)
        rows.append({"label": label, **info, **record})
        groups.append(per_group.assign(label=label))
    return QuantizationComparison(pd.DataFrame(rows), pd.concat(groups, ignore_index=True),
                                  {label: predictions for label, _, predictions in results})
