"""From a layer-sensitivity table (``mitigation.layer_sensitivity``) to layer choices: the
layers ranked by a criterion, per-layer weight bits under a size budget, the layers kept FP32.
Tables in, names and bit widths out; ``mitigation``'s methods and a notebook use them."""
from __future__ import annotations

from typing import Mapping, Sequence

import pandas as pd

from checks import check_choice
from quant_inspect import FLOAT_BITS

# criterion -> column of the layer_sensitivity table that scores it (higher = more sensitive)
SENSITIVITY_CRITERIA = {
    "overall": "delta_loss",
    "worst_group": "delta_worst_group_loss",
    "dp_gap": "delta_dp_gap",
}


def _sensitivity_scores(sensitivity: pd.DataFrame, criterion: str) -> pd.Series:
    """One score per layer for `criterion`; the largest over bit widths when several were
    measured."""
    check_choice("criterion", criterion, SENSITIVITY_CRITERIA)
    column = SENSITIVITY_CRITERIA[criterion]
    missing = {"layer", column} - set(sensitivity.columns)
    if missing:
        raise ValueError(f"sensitivity table lacks columns {sorted(missing)}; expected the "
                         "output of layer_sensitivity().")
    return sensitivity.groupby("layer", sort=False)[column].max()


def rank_layers(sensitivity: pd.DataFrame, criterion: str = "overall") -> list[str]:
    """Layer names, most sensitive under `criterion` first (ties keep table order)."""
    scores = _sensitivity_scores(sensitivity, criterion)
    return list(scores.sort_values(ascending=False, kind="stable").index)


def weight_size_mib(layer_bits: Mapping[str, int], layer_sizes: Mapping[str, int]) -> float:
    """Packed weight size in MiB (params * bits / 8 / 2**20) of the layers in `layer_bits`,
    scales ignored."""
    return sum(layer_sizes[layer] * bits for layer, bits in layer_bits.items()) / 8 / 2**20


def _average_bits(layer_bits: Mapping[str, int], layer_sizes: Mapping[str, int]) -> float:
    total = sum(layer_sizes[layer] for layer in layer_bits)
    return sum(layer_sizes[layer] * bits for layer, bits in layer_bits.items()) / total


BUDGET_UNITS = {"avg_bits": _average_bits, "mib": weight_size_mib}


def allocate_bits(
    sensitivity: pd.DataFrame,
    layer_sizes: Mapping[str, int] | None,
    budget: float,
    criterion: str = "overall",
    choices: Sequence[int] = (8, 4),
    *,
    unit: str = "avg_bits",
) -> dict[str, int]:
    """Per-layer weight bits meeting a size `budget` while protecting the most sensitive layers.

    `layer_sizes` maps layer -> weight elements (None: the `params` column of `sensitivity`).
    `budget` is the parameter-weighted average weight bit width (`unit='avg_bits'`) or the
    packed weight size in MiB of the ranked layers (`unit='mib'`). Greedy: every layer starts at
    the highest of `choices`; layers are then lowered one level at a time, the lowest sensitivity
    per parameter first (a big, robust layer saves most for least harm), and no layer drops to a
    second lower level before every layer has reached the first. It stops as soon as the budget
    is met, so the most sensitive layers keep the most bits.
    """
    check_choice("budget_unit", unit, BUDGET_UNITS)
    levels = sorted({int(b) for b in choices}, reverse=True)
    if not levels or levels[-1] < 1:
        raise ValueError(f"bit choices {tuple(choices)} are invalid; expected positive integers "
                         "such as (8, 4).")
    scores = _sensitivity_scores(sensitivity, criterion)
    if layer_sizes is None:
        layer_sizes = sensitivity.groupby("layer")["params"].first().to_dict()
    unknown = [layer for layer in scores.index if layer not in layer_sizes]
    if unknown:
        raise ValueError(f"layers {unknown} have no size in layer_sizes; pass the parameter "
                         "count of every ranked layer.")
    size_of = BUDGET_UNITS[unit]
    smallest = size_of({layer: levels[-1] for layer in scores.index}, layer_sizes)
    if smallest > budget + 1e-12:
        raise ValueError(
            f"size budget {budget} {unit} cannot be met: every layer at {levels[-1]} bits "
            f"already needs {smallest:.6g} {unit}. Raise the budget or add a lower bit width to "
            "choices."
        )
    order = sorted(scores.index, key=lambda layer: (scores[layer] / max(layer_sizes[layer], 1),
                                                    -layer_sizes[layer]))
    bits = {layer: levels[0] for layer in scores.index}
    for level in levels[1:]:
        for layer in order:
            if size_of(bits, layer_sizes) <= budget + 1e-12:
                return bits
            bits[layer] = level
    return bits


def choose_preserved_layers(sensitivity: pd.DataFrame, criterion: str = "worst_group",
                            count: int | None = 2, budget_mib: float | None = None,
                            bits: int = 8) -> list[str]:
    """The layers to keep FP32: most sensitive first, only layers whose quantization hurts
    (score > 0), at most `count` of them and, with `budget_mib`, within that many extra MiB over
    `bits`-bit weights (a layer that does not fit is skipped for a smaller one further down)."""
    scores = _sensitivity_scores(sensitivity, criterion)
    sizes = sensitivity.groupby("layer")["params"].first()
    chosen, extra_mib = [], 0.0
    for layer in rank_layers(sensitivity, criterion):
        if scores[layer] <= 0 or (count is not None and len(chosen) >= count):
            break
        cost_mib = sizes[layer] * (FLOAT_BITS - bits) / 8 / 2**20
        if budget_mib is None or extra_mib + cost_mib <= budget_mib:
            chosen.append(layer)
            extra_mib += cost_mib
    return chosen
