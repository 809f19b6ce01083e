"""Mitigation methods: how much of the fairness that quantization costs can be won back, and at what
price.

Every method answers one question against plain quantization at the same bit width; the answer
may be "none". Methods registered into the ``quantization`` registry at import (so
``quantization.apply_quantization(model, name, ...)`` resolves them):

==============================  ===================================================================
method                          what it does
==============================  ===================================================================
bias_aware_calibration          static PTQ calibrated on a group-balanced subset of the calibration
                                dataset (``calibration='random'``: same size, uniform draw, the
                                control)
mixed_precision                 per-layer bits from ``layer_sensitivity`` + ``allocate_bits`` under
                                an average-bit (or MiB) budget; ``criterion`` 'worst_group' or
                                'dp_gap' is the fairness-aware variant; ``fp32_head=True`` keeps
                                the classifier in FP32 over the quantized backbone
fairness_finetune               short QAT whose loss adds ``lam`` x a DP or EO surrogate
sensitive_layer_preservation    the layers whose quantization hurts the worst group most stay FP32
==============================  ===================================================================

``FairnessAwareQuantizer`` searches for the cheapest precision that keeps the DP gap under a
constraint. The phase helpers are ``calibration_draws`` (paired balanced/random draws),
``layer_sensitivity``, ``allocate_bits`` and ``evaluate_groups``; the table-to-layers choices
(``rank_layers``, ``allocate_bits``, ``choose_preserved_layers``) live in ``bit_allocation``.
"""
from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass, fields
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import datasets
import evaluation
import fairness_metrics
import profiling
import quantization
from bit_allocation import (
    BUDGET_UNITS,
    SENSITIVITY_CRITERIA,
    allocate_bits,
    choose_preserved_layers,
    rank_layers,
    weight_size_mib,
)
from checks import check_choice
from quantization import (
    PTQStaticConfig,
    QATConfig,
    apply_quantization,
    quantizable_layers,
    register_method,
)

logger = logging.getLogger(__name__)

__all__ = [
    "BiasAwareCalibrationConfig",
    "CALIBRATION_KINDS",
    "FairnessAwareConfig",
    "FairnessAwareQuantizer",
    "FairnessFinetuneConfig",
    "MixedPrecisionConfig",
    "PENALTIES",
    "SENSITIVITY_CRITERIA",
    "SensitiveLayerPreservationConfig",
    "allocate_bits",
    "calibration_draws",
    "choose_preserved_layers",
    "dp_penalty",
    "eo_penalty",
    "evaluate_groups",
    "fairness_loss_hook",
    "group_report",
    "layer_sensitivity",
    "positive_probability",
    "rank_layers",
    "weight_size_mib",
]


def positive_probability(logits: torch.Tensor) -> torch.Tensor:
    """P(y=1) per sample from logits shaped [N, 2] (softmax) or [N] / [N, 1] (sigmoid)."""
    if logits.ndim == 2 and logits.shape[1] == 2:
        return logits.float().softmax(dim=1)[:, 1]
    if logits.ndim == 1 or (logits.ndim == 2 and logits.shape[1] == 1):
        return torch.sigmoid(logits.float().reshape(-1))
    raise ValueError(
        f"logits of shape {tuple(logits.shape)} are not binary; expected [N, 2], [N, 1] or [N]. "
        "The fairness penalties are defined for a binary target only."
    )


def _spread_of_group_means(values: torch.Tensor, group_codes: torch.Tensor) -> torch.Tensor:
    """max - min over the groups present of the mean of `values`; 0 (still differentiable) below 2
    groups."""
    means = [values[group_codes == g].mean() for g in torch.unique(group_codes)]
    if len(means) < 2:
        return values.sum() * 0.0
    stacked = torch.stack(means)
    return stacked.max() - stacked.min()


def dp_penalty(logits: torch.Tensor, group_codes: torch.Tensor) -> torch.Tensor:
    """Demographic-parity surrogate: spread (max - min) of the mean predicted positive probability
    across the groups present in the batch. Soft version of the DP gap (max - min selection
    rate)."""
    return _spread_of_group_means(positive_probability(logits), group_codes)


def eo_penalty(logits: torch.Tensor, targets: torch.Tensor,
               group_codes: torch.Tensor) -> torch.Tensor:
    """Equalized-odds surrogate: the DP surrogate computed separately among positives (soft TPR gap)
    and negatives (soft FPR gap); the larger of the two, like the EO gap = max(TPR gap, FPR gap)."""
    probs = positive_probability(logits)
    spreads = [
        _spread_of_group_means(probs[targets == label], group_codes[targets == label])
        for label in (0, 1)
    ]
    return torch.stack(spreads).max()


PENALTIES = {
    "dp": lambda logits, targets, groups: dp_penalty(logits, groups),
    "eo": eo_penalty,
}


def fairness_loss_hook(penalty: str = "dp", lam: float = 1.0) -> Callable:
    """`training.fit` loss hook: base loss + lam * penalty(logits, targets, group_codes)."""
    check_choice("penalty", penalty, PENALTIES)
    if lam < 0:
        raise ValueError(f"fairness penalty weight lam={lam} is negative; use lam >= 0 (0 disables "
                         "it).")
    surrogate = PENALTIES[penalty]

    def hook(logits, targets, group_codes, base_loss):
        if lam == 0:
            return base_loss
        return base_loss + lam * surrogate(logits, targets, group_codes)

    return hook


# --------------------------------------------------------------------------- data and group metrics



def _as_loader(data, what: str, batch_size: int = 64) -> DataLoader:
    """A DataLoader is used as is; a group dataset (docs/datasets.md) is wrapped in an unshuffled
    one."""
    if isinstance(data, DataLoader):
        return data
    return datasets.make_loader(datasets.group_dataset(data, what), batch_size)


def _check_attributes(sensitive_attributes: Sequence[str] | None, available: Sequence[str]) -> None:
    missing = [attr for attr in sensitive_attributes or () if attr not in available]
    if missing:
        raise ValueError(
            f"sensitive attributes {missing} are not in the dataset; it has {list(available)}. "
            "Pass some of those (their intersection defines the groups), or None for the dataset's "
            "groups."
        )


def group_report(predictions: pd.DataFrame,
                 sensitive_attributes: Sequence[str] | None = None) -> dict:
    """Accuracy, mean loss, worst group (by loss) and its loss and accuracy, and the DP gap of a
    prediction table.

    Groups are the intersection of `sensitive_attributes` (columns of the table, joined in that
    order, e.g. 'Female/Old'), or the table's `group` column when None. The loss is the per-sample
    cross-entropy -log P(y_true), with P(y=1) = `score`. The DP gap (max - min selection rate over
    the groups) and worst-group accuracy come from fairness_metrics.
    """
    if sensitive_attributes:
        _check_attributes(sensitive_attributes,
                          [c for c in predictions.columns
                           if c not in fairness_metrics.PREDICTION_COLUMNS])
        labels = fairness_metrics.intersectional_labels(predictions[list(sensitive_attributes)])
    else:
        labels = predictions["group"].to_numpy(dtype=str)
    y_true, y_pred = predictions["y_true"].to_numpy(), predictions["y_pred"].to_numpy()
    score = predictions["score"].to_numpy(dtype=float)
    loss = pd.Series(-np.log(np.clip(np.where(y_true == 1, score, 1 - score), 1e-12, 1.0)))
    group_loss = loss.groupby(labels).mean()
    with warnings.catch_warnings():  # undefined TPR/FPR of a group do not enter these metrics
        warnings.simplefilter("ignore", fairness_metrics.UndefinedRateWarning)
        table = fairness_metrics.group_table(y_true, y_pred, sensitive_features=labels,
                                             min_group_size=0)
    gaps = fairness_metrics.fairness_gaps(table)
    return {
        "accuracy": float((y_true == y_pred).mean()),
        "loss": float(loss.mean()),
        "worst_group": str(group_loss.idxmax()),
        "worst_group_loss": float(group_loss.max()),
        "worst_group_accuracy": gaps["worst_group_accuracy"],
        "dp_gap": gaps["dp_gap"],
    }


def evaluate_groups(model: nn.Module, data, sensitive_attributes: Sequence[str] | None = None, *,
                    device="auto") -> dict:
    """`group_report` of `model`'s predictions on `data` (a group dataset or a DataLoader over
    one)."""
    predictions = evaluation.predict(model, _as_loader(data, "evaluation data"), device,
                                     progress=False)
    return group_report(predictions, sensitive_attributes)


# --------------------------------------------------------------------------- calibration sets

CALIBRATION_KINDS = datasets.CALIBRATION_KINDS
"""The calibration kinds (random, balanced, balanced_by_label, minority_enriched): one source,
``datasets.CALIBRATION_KINDS``."""


def calibration_draws(dataset, n: int, kind: str = "balanced", draws: int = 5,
                      seed: int = 0) -> list:
    """`draws` calibration subsets of `n` samples of `dataset` of one kind (`CALIBRATION_KINDS`).

    Draw i uses `datasets.calibration_seed(seed, i)`, the seed every kind's draw i uses, so
    balanced and random draws with the same i are paired by seed.
    """
    check_choice("calibration", kind, CALIBRATION_KINDS)
    if not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws={draws!r} must be a positive integer (the number of calibration "
                         "draws), e.g. 5.")
    dataset = datasets.group_dataset(dataset, "the calibration dataset")
    return [datasets.calibration_subset(dataset, kind, n, datasets.calibration_seed(seed, i))
            for i in range(draws)]


DEFAULT_CALIBRATION_SIZE = 512
"""The most samples drawn for calibration when no `calibration_size` is given."""
CALIBRATION_SIZE_TOO_LARGE = ("calibration_size={n} is larger than the {available} samples of "
                              "calibration_data: pass calibration_size= at most {available}, or "
                              "leave it unset to draw the largest {kind} set (at most {default})")
CALIBRATION_NOT_FAITHFUL = ("a {kind} calibration set of {n} cannot be drawn from "
                            "calibration_data: its group counts {available} allow at most "
                            "{largest}, so the set drawn ({counts}) is not {kind}. Pass "
                            "calibration_size={largest} or less, or calibration data with more "
                            "samples of the small groups")


class CalibrationWarning(UserWarning):
    """A calibration set could not be drawn as its kind asks (e.g. not balanced)."""


def largest_calibration_size(dataset, kind: str) -> int:
    """The most samples a `kind` subset of `dataset` can hold while keeping its composition:
    balanced: groups x the smallest group; balanced_by_label: group-label cells x the smallest
    cell; minority_enriched: the largest n whose enriched shares every group can fill; random:
    every sample. 0 when a group (or cell) is empty."""
    codes = np.asarray(dataset.group_codes)
    groups = len(dataset.group_names)
    if kind == "random":
        return len(dataset)
    if kind == "balanced":
        return datasets.largest_balanced_size(dataset)
    if kind == "balanced_by_label":
        cells = codes * 2 + np.asarray(dataset.targets)
        return 2 * groups * int(np.bincount(cells, minlength=2 * groups).min())
    available = np.bincount(codes, minlength=groups)
    shares = datasets.minority_enriched_shares(available)
    return int(np.floor(np.min(available / shares) + 1e-9)) if available.min() > 0 else 0


def calibration_set(calibration_data, kind: str, n: int | None, seed: int):
    """The `kind` subset of `n` samples of the calibration dataset. `n=None`: the largest set of
    that kind it holds (`largest_calibration_size`), at most DEFAULT_CALIBRATION_SIZE. A set that
    cannot keep its kind's composition is still drawn (as close as availability allows) with a
    `CalibrationWarning`, which a notebook shows; an `n` larger than the data is a ValueError."""
    dataset = datasets.group_dataset(calibration_data, "calibration_data")
    largest = largest_calibration_size(dataset, kind)
    if n is None:
        n = min(DEFAULT_CALIBRATION_SIZE, largest or len(dataset))
    elif isinstance(n, int) and not isinstance(n, bool) and n > len(dataset):
        raise ValueError(CALIBRATION_SIZE_TOO_LARGE.format(n=n, available=len(dataset), kind=kind,
                                                           default=DEFAULT_CALIBRATION_SIZE))
    subset = datasets.calibration_subset(dataset, kind, n, seed)
    if n > largest:
        message = CALIBRATION_NOT_FAITHFUL.format(kind=kind, n=n, available=dataset.group_counts(),
                                                  largest=largest, counts=subset.group_counts())
        warnings.warn(message, CalibrationWarning, stacklevel=3)
        logger.warning(message)
    logger.info("%s calibration set of %d: %s", kind, len(subset), subset.group_counts())
    return subset


def _calibration_loader(calibration_data, kind: str, n: int | None, seed: int,
                        batch_size: int) -> DataLoader:
    """A loader over `calibration_set(...)` (the batch size of a given loader wins)."""
    subset = calibration_set(calibration_data, kind, n, seed)
    return datasets.make_loader(subset, getattr(calibration_data, "batch_size", None) or batch_size)


def calibration_facts(loader: DataLoader, kind: str) -> dict:
    """The `quant_info` facts of a calibration set: kind and size, and its group counts."""
    return {"calibration": f"{kind}-{len(loader.dataset)}",
            "calibration_group_counts": loader.dataset.group_counts()}


# --------------------------------------------------------------------------- per-layer sensitivity

DELTA_METRICS = ("accuracy", "loss", "worst_group_loss", "worst_group_accuracy", "dp_gap")
QuantizeLayers = Callable[[nn.Module, dict, object], nn.Module]


def _probe_quantizer(act_bits: int, observer: str, device) -> QuantizeLayers:
    """quantize(model, layer_bits, calibration_data): static PTQ of the layers in `layer_bits` only,
    every other conv/linear layer kept FP32 (simulated execution)."""
    def quantize(model, layer_bits, calibration_data):
        others = [name for name in quantizable_layers(model) if name not in layer_bits]
        return apply_quantization(
            model, "ptq_static", calibration_data=calibration_data,
            weight_bits=min(layer_bits.values()),
            act_bits=act_bits, observer=observer, layer_bits=layer_bits, fp32_layers=others,
            execution="simulated", device=device, progress=False,
        )

    return quantize


def layer_sensitivity(model: nn.Module, layers: Sequence[str] | None, low_bits: int,
                      calibration_data, eval_data, *,
                      sensitive_attributes: Sequence[str] | None = None, act_bits: int = 8,
                      observer: str = "histogram", quantize: QuantizeLayers | None = None,
                      device="auto", progress: bool = True) -> pd.DataFrame:
    """What quantizing each layer alone to `low_bits` (all others FP32) does, on `eval_data`.

    One row per layer: layer, bits, params (weight elements), the probe's accuracy, loss,
    worst_group, worst_group_loss, worst_group_accuracy, dp_gap (see `group_report`), and
    delta_<metric> = probe minus the FP32 model for each of DELTA_METRICS. The worst group is the
    one with the highest mean loss in each model, so delta_worst_group_loss is the change of the
    worst group's loss. `layers=None` probes every layer of `quantization.quantizable_layers`.
    `quantize(model, layer_bits, calibration_data)` replaces the default probe (static PTQ with
    `act_bits` activations). The FP32 reference metrics are in `table.attrs['reference']`.
    """
    valid = quantizable_layers(model)
    layers = list(valid if layers is None else layers)
    unknown = [layer for layer in layers if layer not in valid]
    if unknown:
        raise ValueError(f"layers {unknown} are not quantizable layers of the model; valid: "
                         f"{valid}.")
    loader = _as_loader(eval_data, "eval_data")
    key = None if quantize else _sensitivity_key(model, layers, low_bits, act_bits, observer,
                                                 calibration_data, loader, sensitive_attributes)
    if key is not None and key in _SENSITIVITY_CACHE:
        logger.info("layer sensitivity w%d: reusing the pass already made on these data", low_bits)
        return _copy_table(_SENSITIVITY_CACHE[key])
    quantize = quantize or _probe_quantizer(act_bits, observer, device)
    reference = evaluate_groups(model, loader, sensitive_attributes, device=device)
    modules = dict(model.named_modules())
    rows = []
    for layer in tqdm(layers, desc=f"sensitivity w{low_bits}", disable=not progress, leave=False):
        with profiling.step("sensitivity_probe"):
            probe = evaluate_groups(quantize(model, {layer: low_bits}, calibration_data), loader,
                                    sensitive_attributes, device=device)
        deltas = {f"delta_{metric}": probe[metric] - reference[metric] for metric in DELTA_METRICS}
        rows.append({"layer": layer, "bits": low_bits, "params": modules[layer].weight.numel(),
                     **probe, **deltas})
    table = pd.DataFrame(rows)
    table.attrs["reference"] = reference
    if key is not None:
        if len(_SENSITIVITY_CACHE) >= 8:  # the oldest goes; a run needs a few at a time
            _SENSITIVITY_CACHE.pop(next(iter(_SENSITIVITY_CACHE)))
        _SENSITIVITY_CACHE[key] = _copy_table(table)
    return table


_SENSITIVITY_CACHE: dict[tuple, pd.DataFrame] = {}
"""Sensitivity passes made in this process, keyed by everything they depend on, so that mixed
precision and sensitive-layer preservation on the same model, bits and data share one pass."""


def _sensitivity_key(model, layers, low_bits, act_bits, observer, calibration_data, loader,
                     sensitive_attributes) -> tuple | None:
    """What a default-probe sensitivity pass depends on, or None when the data have no sample
    ids."""
    ids = [_sample_ids(data) for data in (calibration_data, loader)]
    if None in ids:
        return None
    return (quantization.model_digest(model), tuple(layers), low_bits, act_bits, observer, *ids,
            tuple(sensitive_attributes or ()))


def _sample_ids(data) -> tuple | None:
    dataset = getattr(data, "dataset", data)
    metadata = getattr(dataset, "metadata", None)
    return None if metadata is None else tuple(metadata["sample_id"])


def _copy_table(table: pd.DataFrame) -> pd.DataFrame:
    copied = table.copy()
    copied.attrs["reference"] = dict(table.attrs["reference"])
    return copied


# --------------------------------------------------------------------------- registered methods

def _base_options(config, base_cls: type, **overrides) -> dict:
    """The fields of `config` that `base_cls` knows (for a nested engine call), with overrides."""
    known = {item.name for item in fields(base_cls)}
    return {**{key: value for key, value in config.to_dict().items() if key in known}, **overrides}


def _plain_ptq(model, config, calibration_data, device, progress: bool, **overrides) -> nn.Module:
    """Static PTQ of `model` (the handler's own copy) with the PTQ fields of `config` and
    `overrides`, on the engine's one prepared path (no second copy or state guard)."""
    base = PTQStaticConfig(**_base_options(config, PTQStaticConfig, **overrides))
    return quantization.quantize_in_place(model, base, calibration_data, device=device,
                                          progress=progress)


@dataclass(frozen=True)
class BiasAwareCalibrationConfig(PTQStaticConfig):
    """Static PTQ calibrated on `calibration_size` samples drawn from the calibration dataset as
    `calibration` says ('balanced', 'balanced_by_label' or the control 'random'); `batch_size` is
    used when a dataset rather than a loader is given. `calibration_size=None`: the largest set of
    that kind the calibration data hold, at most 512 (`calibration_set`). `quant_info` records the
    set's `calibration` (kind-size) and `calibration_group_counts`."""
    calibration_size: int | None = None
    calibration: str = "balanced"
    batch_size: int = 64

    def __post_init__(self):
        super().__post_init__()
        check_choice("calibration", self.calibration, CALIBRATION_KINDS)


@register_method("bias_aware_calibration", BiasAwareCalibrationConfig,
                 traits=quantization.MethodTraits(calibration="dataset", deployable=True,
                                                  control="ptq_static", paired_draws=True))
def _bias_aware_calibration(model, config, calibration_data, *, device="cpu", seed=0,
                            progress=False, **_):
    loader = _calibration_loader(calibration_data, config.calibration, config.calibration_size,
                                 seed, config.batch_size)
    quantized = _plain_ptq(model, config, loader, device, progress)
    facts = calibration_facts(loader, config.calibration)
    quantized.quant_info = quantized.quant_info.replace(**facts)
    return quantized


def _probe_config_layers(model, config, layers, bits, calibration_data, eval_data, device,
                         progress) -> pd.DataFrame:
    """`layer_sensitivity` with the config's activation bits, observer and groups; eval_data
    defaults to the calibration data."""
    if eval_data is None:
        logger.info("no eval_data given: layer sensitivity is measured on the calibration data")
        eval_data = calibration_data
    return layer_sensitivity(model, layers, bits, calibration_data, eval_data,
                             sensitive_attributes=config.sensitive_attributes or None,
                             act_bits=config.act_bits,
                             observer=config.observer, device=device, progress=progress)


@dataclass(frozen=True)
class MixedPrecisionConfig(PTQStaticConfig):
    """Per-layer weight bits from a sensitivity ranking under a size budget.

    `choices`: the bit widths a layer may get (default: 8 and `weight_bits`); `budget`: the average
    weight bits (`budget_unit='avg_bits'`) or packed weight MiB ('mib') of the allocated layers
    (default: midway between the highest and lowest choice); `criterion`: 'overall' (loss),
    'worst_group' (worst group's loss) or 'dp_gap' - the last two are the fairness-aware variant.
    `fp32_head`: keep the last conv/linear layer (the classifier of every registered architecture)
    FP32. With a single choice no sensitivity is measured: every layer gets that width.
    """
    budget: float | None = None
    budget_unit: str = "avg_bits"
    criterion: str = "overall"
    choices: tuple = ()
    fp32_head: bool = False
    sensitive_attributes: tuple = ()

    def __post_init__(self):
        super().__post_init__()
        check_choice("criterion", self.criterion, SENSITIVITY_CRITERIA)
        check_choice("budget_unit", self.budget_unit, BUDGET_UNITS)
        for bits in self.bit_choices:
            check_choice("choices", bits, self.WEIGHT_BITS)
        if self.layer_bits:
            raise ValueError("mixed_precision allocates layer_bits itself; use ptq_static with "
                             "layer_bits for a fixed allocation, or fp32_layers to exclude layers.")

    @property
    def bit_choices(self) -> tuple[int, ...]:
        """The allowed widths, highest first."""
        return tuple(sorted(set(self.choices or (8, self.weight_bits)), reverse=True))

    @property
    def resolved_budget(self) -> float:
        if self.budget is not None:
            return self.budget
        return (self.bit_choices[0] + self.bit_choices[-1]) / 2


@register_method("mixed_precision", MixedPrecisionConfig, context_keys=("eval_data",),
                 traits=quantization.MethodTraits(layer_search=True, deployable=True,
                                                  control="ptq_static"))
def _mixed_precision(model, config, calibration_data, *, eval_data=None, device="cpu", seed=0,
                     progress=False, **_):
    layers = quantizable_layers(model)
    fp32_layers = [*config.fp32_layers, *(layers[-1:] if config.fp32_head else [])]
    allocated = [layer for layer in layers if layer not in fp32_layers]
    choices = config.bit_choices
    if len(choices) == 1 or not allocated:
        layer_bits = {layer: choices[0] for layer in allocated}
    else:
        sensitivity = _probe_config_layers(model, config, allocated, choices[-1], calibration_data,
                                           eval_data, device, progress)
        layer_bits = allocate_bits(sensitivity, None, config.resolved_budget, config.criterion,
                                   choices, unit=config.budget_unit)
    logger.info("mixed_precision allocation: %s (fp32: %s)", layer_bits, fp32_layers)
    return _plain_ptq(model, config, calibration_data, device, progress, layer_bits=layer_bits,
                      fp32_layers=fp32_layers)


@dataclass(frozen=True)
class SensitiveLayerPreservationConfig(PTQStaticConfig):
    """Static PTQ at `weight_bits` except for the layers whose quantization hurts `criterion` most
    (default the worst group's loss), kept FP32: at most `preserve_count` of them and, with
    `preserve_budget_mib`, within that many extra MiB (see `choose_preserved_layers`)."""
    preserve_count: int | None = 2
    preserve_budget_mib: float | None = None
    criterion: str = "worst_group"
    sensitive_attributes: tuple = ()

    def __post_init__(self):
        super().__post_init__()
        check_choice("criterion", self.criterion, SENSITIVITY_CRITERIA)
        if self.preserve_count is None and self.preserve_budget_mib is None:
            raise ValueError("sensitive_layer_preservation needs preserve_count or "
                             "preserve_budget_mib (how many layers, or how many extra MiB, may "
                             "stay FP32), e.g. preserve_count=2.")
        if self.preserve_count is not None and self.preserve_count < 0:
            raise ValueError(f"preserve_count={self.preserve_count} must be >= 0.")


@register_method("sensitive_layer_preservation", SensitiveLayerPreservationConfig,
                 context_keys=("eval_data",),
                 traits=quantization.MethodTraits(layer_search=True, deployable=True,
                                                  control="ptq_static"))
def _sensitive_layer_preservation(model, config, calibration_data, *, eval_data=None, device="cpu",
                                  seed=0, progress=False, **_):
    candidates = [layer for layer in quantizable_layers(model)
                  if layer not in config.fp32_layers and layer not in dict(config.layer_bits)]
    sensitivity = _probe_config_layers(model, config, candidates, config.weight_bits,
                                       calibration_data, eval_data, device, progress)
    preserved = choose_preserved_layers(sensitivity, config.criterion, config.preserve_count,
                                        config.preserve_budget_mib, config.weight_bits)
    logger.info("sensitive_layer_preservation keeps FP32: %s",
                preserved or "nothing (no layer hurts)")
    return _plain_ptq(model, config, calibration_data, device, progress,
                      fp32_layers=[*config.fp32_layers, *preserved])


@dataclass(frozen=True)
class FairnessFinetuneConfig(QATConfig):
    """QAT whose loss is cross-entropy + `lam` x `penalty` ('dp' or 'eo', see
    `dp_penalty`/`eo_penalty`)."""
    penalty: str = "dp"
    lam: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        fairness_loss_hook(self.penalty, self.lam)  # validates both


@register_method("fairness_finetune", FairnessFinetuneConfig,
                 context_keys=("train_loader", "val_loader"),
                 traits=quantization.MethodTraits(calibration="none", deployable=True,
                                                  control="ptq_static", needs=("train_loader",)))
def _fairness_finetune(model, config, calibration_data, *, train_loader=None, val_loader=None,
                       device="auto", seed=0, progress=True, **_):
    qat = QATConfig(**_base_options(config, QATConfig))
    return quantization.quantize_in_place(
        model, qat, calibration_data, train_loader=train_loader, val_loader=val_loader,
        loss_hook=fairness_loss_hook(config.penalty, config.lam), device=device, seed=seed,
        progress=progress)


# --------------------------------------------------------------------------- FairnessAwareQuantizer

def _precision_ladder(ranked: Sequence[str], bit_width: int):
    """(change, layer_bits, fp32_layers) after each step: the layers, most sensitive first, are
    raised to 8 bits, then (again most sensitive first) to FP32."""
    bits = {layer: bit_width for layer in ranked}
    for level in [8, quantization.FLOAT_BITS] if bit_width < 8 else [quantization.FLOAT_BITS]:
        for layer in ranked:
            previous, bits[layer] = bits[layer], level
            label = "fp32" if level == quantization.FLOAT_BITS else f"{level} bits"
            yield (f"{layer}: {previous} bits -> {label}",
                   {name: b for name, b in bits.items() if b < quantization.FLOAT_BITS},
                   [name for name, b in bits.items() if b == quantization.FLOAT_BITS])


@dataclass(frozen=True)
class FairnessAwareConfig(PTQStaticConfig):
    """Static PTQ with `calibration` calibration ('balanced' by default) that raises precision until
    the DP gap (max - min selection rate over the intersectional groups of `sensitive_attributes`;
    empty: the dataset's) is at most `max_dp_gap` on the validation data: the layers ranked by
    `layer_sensitivity` under `criterion` are raised one step at a time, most sensitive first, to
    8 bits, then to FP32, until the constraint holds or every layer is FP32 (then the lowest-gap
    model is returned and `constraint_met` is False). `fairness_constraint=False` only
    calibrates."""
    max_dp_gap: float = 0.01
    criterion: str = "dp_gap"
    calibration: str = "balanced"
    calibration_size: int | None = None
    sensitive_attributes: tuple = ()
    fairness_constraint: bool = True

    def __post_init__(self):
        super().__post_init__()
        check_choice("calibration", self.calibration, CALIBRATION_KINDS)
        check_choice("criterion", self.criterion, SENSITIVITY_CRITERIA)
        if not (isinstance(self.max_dp_gap, (int, float)) and 0 <= self.max_dp_gap <= 1):
            raise ValueError(f"max_dp_gap={self.max_dp_gap!r} must be a number in [0, 1] (a DP "
                             "gap), e.g. 0.05.")


@register_method("fairness_aware_quantizer", FairnessAwareConfig, context_keys=("val_loader",),
                 traits=quantization.MethodTraits(calibration="dataset", layer_search=True,
                                                  deployable=True, control="ptq_static"))
def _fairness_aware(model, config, calibration_data, *, val_loader=None, device="cpu", seed=0,
                    progress=False, **_):
    return _FairnessSearch(config, device, seed, progress).run(model, calibration_data, val_loader)


class _FairnessSearch:
    """One run of the fairness-aware precision search (see `FairnessAwareConfig`)."""

    def __init__(self, config: FairnessAwareConfig, device, seed: int, progress: bool):
        self.config, self.device, self.seed, self.progress = config, device, seed, progress
        self.history: list[dict] = []

    def run(self, model: nn.Module, calibration_data, validation_data) -> nn.Module:
        config = self.config
        dataset = datasets.group_dataset(calibration_data, "calibration_data")
        self.attributes = list(config.sensitive_attributes or dataset.sensitive_attrs)
        _check_attributes(self.attributes, dataset.sensitive_attrs)
        if validation_data is None:
            logger.warning("FairnessAwareQuantizer: no validation_data; the DP gap constraint is "
                           "checked on the calibration data (optimistic). Pass validation_data for "
                           "an honest check.")
        measured_on = "calibration" if validation_data is None else "validation"
        check_loader = _as_loader(calibration_data if validation_data is None else validation_data,
                                  "validation_data")
        calibration_loader = _calibration_loader(calibration_data, config.calibration,
                                                 config.calibration_size, self.seed, batch_size=64)
        fp32_metrics = evaluate_groups(model, check_loader, self.attributes, device=self.device)
        best = current = self._step(model, calibration_loader, check_loader,
                                    f"initial: {config.calibration} calibration",
                                    {}, [])
        if config.fairness_constraint and not self._meets(current):
            ranked = rank_layers(self._sensitivity(model, calibration_loader, check_loader),
                                 config.criterion)
            for change, layer_bits, fp32_layers in _precision_ladder(ranked, config.weight_bits):
                current = self._step(model, calibration_loader, check_loader, change, layer_bits,
                                     fp32_layers)
                best = min(best, current, key=lambda quantized: quantized.quant_info["val_dp_gap"])
                if self._meets(current):
                    break
        met = self._meets(current) if config.fairness_constraint else None
        chosen = current if met is not False else best
        if met is False:
            logger.warning(
                "FairnessAwareQuantizer: DP gap <= %.4f cannot be met on the %s data: every layer "
                "was raised to FP32 (FP32 model gap %.4f); returning the lowest-gap model found "
                "(gap %.4f).", config.max_dp_gap,
                measured_on, fp32_metrics["dp_gap"], chosen.quant_info["val_dp_gap"])
        chosen.quant_info = chosen.quant_info.replace(
            **calibration_facts(calibration_loader, config.calibration),
            max_dp_gap=config.max_dp_gap,
            constraint_met=met, gap_measured_on=measured_on, fp32_dp_gap=fp32_metrics["dp_gap"],
            search_steps=len(self.history), history=self.history)
        return chosen

    def _meets(self, quantized: nn.Module) -> bool:
        return quantized.quant_info["val_dp_gap"] <= self.config.max_dp_gap + 1e-12

    def _sensitivity(self, model, calibration_loader, check_loader) -> pd.DataFrame:
        return layer_sensitivity(model, None, self.config.weight_bits, calibration_loader,
                                 check_loader,
                                 sensitive_attributes=self.attributes,
                                 act_bits=self.config.act_bits,
                                 observer=self.config.observer, device=self.device,
                                 progress=self.progress)

    def _step(self, model, calibration_loader, check_loader, change: str, layer_bits: dict,
              fp32_layers: list):
        """Quantize with this precision, measure it on the check data and append it to `history`."""
        config = self.config
        step = PTQStaticConfig(weight_bits=config.weight_bits, act_bits=config.act_bits,
                               observer=config.observer, layer_bits=layer_bits,
                               fp32_layers=fp32_layers)
        quantized = quantization.quantize_in_place(copy.deepcopy(model), step, calibration_loader,
                                                   device=self.device, progress=False)
        metrics = evaluate_groups(quantized, check_loader, self.attributes, device=self.device)
        quantized.quant_info = quantized.quant_info.replace(val_dp_gap=metrics["dp_gap"])
        self.history.append({"step": len(self.history), "change": change,
                             "dp_gap": metrics["dp_gap"],
                             "accuracy": metrics["accuracy"],
                             "worst_group_loss": metrics["worst_group_loss"],
                             "size_mib": quantized.quant_info["size_mib"],
                             "layer_bits": dict(layer_bits), "fp32_layers": list(fp32_layers)})
        logger.info("FairnessAwareQuantizer step %d (%s): DP gap %.4f, accuracy %.4f, %.3f MiB",
                    len(self.history) - 1, change, metrics["dp_gap"], metrics["accuracy"],
                    quantized.quant_info["size_mib"])
        return quantized


class FairnessAwareQuantizer:
    """Notebook wrapper of the registered method ``fairness_aware_quantizer``
    (``FairnessAwareConfig``).

    `quantize` calibrates on a `calibration` (default group-balanced) subset of `calibration_data`
    (`calibration_size` samples; None: the largest such set, at most 512) at `bit_width` weights
    (`act_bits` activations) and raises precision until the DP gap on `validation_data` (without it,
    on the calibration data, which `gap_measured_on` records) is at most `max_dp_gap`. After
    `quantize`: `history` (one dict per step: change, dp_gap, accuracy, worst_group_loss, size_mib,
    layer_bits, fp32_layers), `final_dp_gap`, `constraint_met` (False comes with a logged warning;
    the lowest-gap model is then returned), `fp32_metrics` (the FP32 model on the same data) and
    `model`. Report on test data with `evaluate(test_data)`. Groups: the intersection of
    `sensitive_attributes` (None: the dataset's own sensitive attributes).
    """

    def __init__(self, bit_width: int = 8, max_dp_gap: float = 0.01,
                 sensitive_attributes: Sequence[str] | None = None, *, act_bits: int = 8,
                 calibration_size: int | None = None, calibration: str = "balanced",
                 criterion: str = "dp_gap",
                 observer: str = "histogram", device="auto", seed: int = 0, progress: bool = True):
        self.config = FairnessAwareConfig(
            weight_bits=bit_width, act_bits=act_bits, observer=observer, max_dp_gap=max_dp_gap,
            criterion=criterion, calibration=calibration, calibration_size=calibration_size,
            sensitive_attributes=tuple(sensitive_attributes or ()))
        self.max_dp_gap = float(max_dp_gap)
        self.sensitive_attributes = list(sensitive_attributes or [])
        self.device, self.seed, self.progress = device, seed, progress
        self.history: list[dict] = []
        self.final_dp_gap = self.constraint_met = self.model = None
        self.fp32_metrics = self.gap_measured_on = None

    def quantize(self, model: nn.Module, calibration_data, fairness_constraint: bool = True,
                 validation_data=None) -> nn.Module:
        """The quantized model (see the class docstring); the weights of `model` are not
        modified."""
        self.model = apply_quantization(model, self.config, calibration_data=calibration_data,
                                        fairness_constraint=fairness_constraint,
                                        val_loader=validation_data,
                                        device=self.device, seed=self.seed, progress=self.progress)
        info = self.model.quant_info
        self.history, self.constraint_met = info["history"], info["constraint_met"]
        self.final_dp_gap, self.gap_measured_on = info["val_dp_gap"], info["gap_measured_on"]
        check = calibration_data if validation_data is None else validation_data
        self.fp32_metrics = evaluate_groups(model, check, self.sensitive_attributes,
                                            device=self.device)
        return self.model

    def evaluate(self, test_data) -> dict:
        """`evaluate_groups` of the quantized model on `test_data`, with its size_mib and
        constraint_met."""
        if self.model is None:
            raise ValueError("FairnessAwareQuantizer.evaluate needs a model: call quantize(...) "
                             "first.")
        metrics = evaluate_groups(self.model, test_data, self.sensitive_attributes,
                                  device=self.device)
        return {**metrics, "size_mib": self.model.quant_info["size_mib"],
                "constraint_met": self.constraint_met}
