"""Mitigation methods: how much of the fairness that quantization costs can be won back, and at what price.

Differentiable fairness penalties (``dp_penalty``, ``eo_penalty``) and the loss hook that adds
them to training; per-layer sensitivity ranking and budgeted bit allocation.
"""
from __future__ import annotations

import logging
from typing import Callable, Mapping, Sequence

import pandas as pd
import torch

logger = logging.getLogger(__name__)

__all__ = [
    "PENALTIES",
    "SENSITIVITY_CRITERIA",
    "allocate_bits",
    "dp_penalty",
    "eo_penalty",
    "fairness_loss_hook",
    "positive_probability",
    "rank_layers",
    "weight_size_mib",
]


# --------------------------------------------------------------------------- fairness penalties

def positive_probability(logits: torch.Tensor) -> torch.Tensor:
    """P(y=1) per sample from logits shaped [N, 2] (softmax) or [N] / [N, 1] (sigmoid)."""
    if logits.ndim == 2 and logits.shape[1] == 2:
        return logits.softmax(dim=1)[:, 1]
    if logits.ndim == 1 or (logits.ndim == 2 and logits.shape[1] == 1):
        return torch.sigmoid(logits.reshape(-1))
    raise ValueError(
        f"logits of shape {tuple(logits.shape)} are not binary; expected [N, 2], [N, 1] or [N]. "
        "The fairness penalties are defined for a binary target only."
    )


def _spread_of_group_means(values: torch.Tensor, group_codes: torch.Tensor) -> torch.Tensor:
    """max - min over the groups present of the mean of `values`; 0 (still differentiable) below 2 groups."""
    means = [values[group_codes == g].mean() for g in torch.unique(group_codes)]
    if len(means) < 2:
        return values.sum() * 0.0
    stacked = torch.stack(means)
    return stacked.max() - stacked.min()


def dp_penalty(logits: torch.Tensor, group_codes: torch.Tensor) -> torch.Tensor:
    """Demographic-parity surrogate: spread (max - min) of the mean predicted positive probability
    across the groups present in the batch. Soft version of the DP gap (max - min selection rate)."""
    return _spread_of_group_means(positive_probability(logits), group_codes)


def eo_penalty(logits: torch.Tensor, targets: torch.Tensor, group_codes: torch.Tensor) -> torch.Tensor:
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
    if penalty not in PENALTIES:
        raise ValueError(
            f"unknown fairness penalty {penalty!r}; expected one of {sorted(PENALTIES)}."
        )
    if lam < 0:
        raise ValueError(f"fairness penalty weight lam={lam} is negative; use lam >= 0 (0 disables it).")
    surrogate = PENALTIES[penalty]

    def hook(logits, targets, group_codes, base_loss):
        if lam == 0:
            return base_loss
        return base_loss + lam * surrogate(logits, targets, group_codes)

    return hook


# --------------------------------------------------------------------------- sensitivity ranking, bit allocation

# criterion -> column of the layer_sensitivity table that scores it (higher = more sensitive)
SENSITIVITY_CRITERIA = {
    "overall": "delta_loss",
    "worst_group": "delta_worst_group_loss",
    "dp_gap": "delta_dp_gap",
}


def _sensitivity_scores(sensitivity: pd.DataFrame, criterion: str) -> pd.Series:
    """One score per layer for `criterion`; the largest over bit widths when several were measured."""
    if criterion not in SENSITIVITY_CRITERIA:
        raise ValueError(
            f"unknown sensitivity criterion {criterion!r}; expected one of {sorted(SENSITIVITY_CRITERIA)}."
        )
    column = SENSITIVITY_CRITERIA[criterion]
    missing = {"layer", column} - set(sensitivity.columns)
    if missing:
        raise ValueError(
            f"sensitivity table lacks columns {sorted(missing)}; expected the output of layer_sensitivity()."
        )
    return sensitivity.groupby("layer", sort=False)[column].max()


def rank_layers(sensitivity: pd.DataFrame, criterion: str = "overall") -> list[str]:
    """Layer names, most sensitive under `criterion` first (ties keep table order)."""
    scores = _sensitivity_scores(sensitivity, criterion)
    return list(scores.sort_values(ascending=False, kind="stable").index)


def weight_size_mib(layer_bits: Mapping[str, int], layer_sizes: Mapping[str, int]) -> float:
    """Packed weight size in MiB (params * bits / 8 / 2**20) of the layers in `layer_bits`, scales ignored."""
    return sum(layer_sizes[layer] * bits for layer, bits in layer_bits.items()) / 8 / 2**20


def _average_bits(layer_bits: Mapping[str, int], layer_sizes: Mapping[str, int]) -> float:
    total = sum(layer_sizes[layer] for layer in layer_bits)
    return sum(layer_sizes[layer] * bits for layer, bits in layer_bits.items()) / total


BUDGET_UNITS = {"avg_bits": _average_bits, "mib": weight_size_mib}


def allocate_bits(
    sensitivity: pd.DataFrame,
    layer_sizes: Mapping[str, int],
    budget: float,
    criterion: str = "overall",
    choices: Sequence[int] = (8, 4),
    *,
    unit: str = "avg_bits",
) -> dict[str, int]:
    """Per-layer weight bits meeting a size `budget` while protecting the most sensitive layers.

    `budget` is the parameter-weighted average weight bit width (`unit='avg_bits'`) or the packed
    weight size in MiB of the ranked layers (`unit='mib'`). Greedy: every layer starts at the highest
    of `choices`; layers are then lowered one level at a time, the lowest sensitivity per parameter
    first (a big, robust layer saves most for least harm), and no layer drops to a second lower level
    before every layer has reached the first. It stops as soon as the budget is met, so the most
    sensitive layers keep the most bits.
    """
    if unit not in BUDGET_UNITS:
        raise ValueError(f"unknown budget unit {unit!r}; expected one of {sorted(BUDGET_UNITS)}.")
    levels = sorted({int(b) for b in choices}, reverse=True)
    if not levels or levels[-1] < 1:
        raise ValueError(f"bit choices {tuple(choices)} are invalid; expected positive integers such as (8, 4).")
    scores = _sensitivity_scores(sensitivity, criterion)
    unknown = [layer for layer in scores.index if layer not in layer_sizes]
    if unknown:
        raise ValueError(f"layers {unknown} have no size in layer_sizes; pass the parameter count of every ranked layer.")
    size_of = BUDGET_UNITS[unit]
    smallest = size_of({layer: levels[-1] for layer in scores.index}, layer_sizes)
    if smallest > budget + 1e-12:
        raise ValueError(
            f"size budget {budget} {unit} cannot be met: every layer at {levels[-1]} bits already needs "
            f"{smallest:.6g} {unit}. Raise the budget or add a lower bit width to choices."
        )
    order = sorted(scores.index, key=lambda layer: (scores[layer] / max(layer_sizes[layer], 1), -layer_sizes[layer]))
    bits = {layer: levels[0] for layer in scores.index}
    for level in levels[1:]:
        for layer in order:
            if size_of(bits, layer_sizes) <= budget + 1e-12:
                return bits
            bits[layer] = level
    return bits
