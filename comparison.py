"""The notebook comparison: quantize one model several ways and compare accuracy, fairness, size
and cost on a test loader, in one tidy table (``compare_quantization_methods``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd
from torch import nn
from tqdm.auto import tqdm

import evaluation
from fairness_metrics import PREDICTION_COLUMNS, summarize_predictions
from quantization import FLOAT_BITS, apply_quantization

__all__ = ["QuantizationComparison", "compare_quantization_methods"]


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
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        path = Path(path or "quantization_comparison.png")
        figure = Figure(figsize=(max(6.0, 1.2 * len(self.table)), 4.0), layout="constrained")
        FigureCanvasAgg(figure)
        positions = range(len(self.table))
        for axes, metric in zip(figure.subplots(1, 2), ("accuracy", "dp_gap")):
            values = self.table[metric]
            errors = [values - self.table[f"{metric}_low"], self.table[f"{metric}_high"] - values]
            axes.bar(positions, values, yerr=errors, capsize=4, color="tab:blue")
            axes.set_xticks(list(positions), self.table["label"], rotation=30, ha="right")
            axes.set_title(metric)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=120)
        return path


def _method_spec(spec) -> tuple[str, str, dict]:
    """(label, method, options) from ``'PTQ_INT4'``, ``('ptq_static', {...})`` or
    ``{'method': ..., 'label': ..., **options}``."""
    if isinstance(spec, str):
        return spec, spec, {}
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], Mapping):
        spec = {**spec[1], "method": spec[0]}
    if not (isinstance(spec, Mapping) and "method" in spec):
        raise ValueError(f"cannot read method spec {spec!r}; use a name ('PTQ_INT8'), a (name, "
                         "options) tuple or a dict with 'method' (and optional 'label')")
    options = {key: value for key, value in spec.items() if key not in ("method", "label")}
    settings = ", ".join(f"{key}={value}" for key, value in options.items())
    return spec.get("label", f"{spec['method']}({settings})"), spec["method"], options


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
    table["group"] = table[list(sensitive_attrs)].astype(str).agg("/".join, axis=1)
    return table


def compare_quantization_methods(model: nn.Module, methods: Sequence, test_loader, *,
                                 sensitive_attrs: Sequence[str] | None = None,
                                 calibration_data=None, n_resamples: int = 1000, seed: int = 0,
                                 device="cpu", **context) -> QuantizationComparison:
    """Quantize ``model`` with each method and compare accuracy and fairness on ``test_loader``.

    ``methods`` items: a short or registry name, a ``(name, options)`` tuple, or a dict with
    ``method`` (and ``label``). ``sensitive_attrs`` picks the attributes whose combination
    defines the groups (default: the dataset's ``group``). ``context`` (e.g. ``train_loader``)
    goes to every ``apply_quantization`` call. The table has one row per method, FP32 first,
    with every metric of ``fairness_metrics.summarize_predictions`` (with ``_low/_high``
    bootstrap bounds and deltas against FP32) plus execution, bits, sizes and cost.
    """
    specs = [_method_spec(spec) for spec in methods]
    if not specs:
        raise ValueError("methods is empty; pass e.g. ['PTQ_INT8', 'PTQ_INT4', 'dynamic']")
    reference = _regroup(evaluation.predict(model, test_loader, device, progress=False),
                         sensitive_attrs)
    fp32_size = evaluation.model_size_mib(model)
    runs = [("fp32", {"method": "fp32", "weight_bits": FLOAT_BITS, "act_bits": FLOAT_BITS,
                      "execution": "fp32", "size_mib": fp32_size, "fp32_size_mib": fp32_size,
                      "compression": 1.0, "cost_s": 0.0}, reference)]
    for label, method, options in tqdm(specs, desc="methods", leave=False):
        quantized = apply_quantization(model, method, calibration_data=calibration_data,
                                       device=device, seed=seed, **{**context, **options})
        info = {key: quantized.quant_info[key]
                for key in ("method", "weight_bits", "act_bits", "execution", "observer",
                            "size_mib", "fp32_size_mib", "compression", "cost_s")}
        predictions = _regroup(evaluation.predict(quantized, test_loader, device,
                                                  progress=False), sensitive_attrs)
        runs.append((label, info, predictions))
    rows, groups = [], []
    for label, info, predictions in runs:
        record, per_group = summarize_predictions(predictions, reference=None if label == "fp32"
                                      else reference, n_resamples=n_resamples, seed=seed)
        rows.append({"label": label, **info, **record})
        groups.append(per_group.assign(label=label))
    return QuantizationComparison(pd.DataFrame(rows), pd.concat(groups, ignore_index=True),
                                  {label: predictions for label, _, predictions in runs})
