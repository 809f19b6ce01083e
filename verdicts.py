"""The verdict rules, in one place: four verdicts on a change, Holm across criteria, and how
criteria and per-architecture results add up to a hypothesis's verdict.

A change (configuration minus reference, e.g. quantized minus FP32) gets one of four verdicts,
each from a test, never from a point estimate:

- EQUIVALENT: two one-sided tests (TOST) show |change| < margin at level alpha (equivalently,
  the 1 - 2 alpha interval lies inside +-margin). It wins when both tests reject: a change shown
  to be smaller than the margin is too small to matter, even when it is detectably not zero.
- WORSE / BETTER: otherwise, when the two-sided test of "no change" rejects at alpha; which of
  the two follows the sign and the metric's direction (a higher DP gap is worse, a higher
  accuracy better).
- INCONCLUSIVE: neither test rejects, or the evidence is missing.

The margins are set before the run (``analysis.margins`` in the config). Within one hypothesis
the p-values of its criteria are Holm-adjusted, the difference tests and the equivalence tests
each as one family. Nothing here reads a table: the functions take numbers, so other analyses
(e.g. calibration kinds) reuse them as they are.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

import fairness_metrics as fm
from config import DEFAULT_MARGINS, DEFAULT_MIN_BALANCED_ACCURACY  # noqa: F401  (re-exported)

WORSE, BETTER, EQUIVALENT, INCONCLUSIVE = "WORSE", "BETTER", "EQUIVALENT", "INCONCLUSIVE"
VERDICTS = (WORSE, BETTER, EQUIVALENT, INCONCLUSIVE)
SUPPORTED, REJECTED = "SUPPORTED", "REJECTED"
"""What a hypothesis comes to: its criteria all reach their claimed verdicts (SUPPORTED), one
reaches a decisive verdict other than the claimed ones (REJECTED), or neither (INCONCLUSIVE)."""

HIGHER_IS_BETTER = {"accuracy": True, "balanced_accuracy": True, "worst_group_accuracy": True,
                    "disparate_impact": True, "dp_gap": False, "eo_gap": False,
                    "eop_gap": False, "pe_gap": False, "accuracy_gap": False}

VERDICT_RULES = {
    EQUIVALENT: "TOST shows |change| < margin at alpha: the 1 - 2 alpha interval lies inside "
                "+-margin (wins when the difference test also rejects: too small to matter)",
    BETTER: "not EQUIVALENT, and the two-sided test of no change rejects at alpha with the "
            "change in the metric's good direction",
    WORSE: "not EQUIVALENT, and the two-sided test of no change rejects at alpha with the "
           "change in the metric's bad direction",
    INCONCLUSIVE: "neither test rejects, or no evidence (one unit, a tie with no "
                  "test-sampling spread, the FP32 model at chance, a test whose p-floor is "
                  "above alpha)",
    "holm": "within one hypothesis the difference p-values of its criteria are Holm-adjusted "
            "together, and the equivalence p-values together",
    "hypothesis": "SUPPORTED when every criterion reaches a claimed verdict, REJECTED when one "
                  "reaches a decisive verdict that is not claimed, INCONCLUSIVE otherwise",
}

UNKNOWN_METRIC = ("metric {metric!r} has no direction: expected one of {known}. Add it to "
                  "verdicts.HIGHER_IS_BETTER (is a higher value better?).")
BAD_MARGIN = ("margin for {name!r} is {value!r}: expected a number in (0, 1] (probability "
              "units), e.g. 0.02 for a DP gap.")
AT_CHANCE = ("no verdict: the FP32 model is not clearly above chance (balanced accuracy lower "
             "bound {low} <= {threshold})")
P_FLOOR = ("no general verdict: with these architectures the {test} cannot give p below "
           "{floor} (= {floor_value}), above alpha = {alpha}; the per-architecture verdicts "
           "stand, the general claim is INCONCLUSIVE for that reason")


def check_margins(margins: dict) -> dict:
    """The margins, each checked to lie in (0, 1]; raises ValueError naming a bad one."""
    for name, value in margins.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise ValueError(BAD_MARGIN.format(name=name, value=value))
    return {**DEFAULT_MARGINS, **{k: float(v) for k, v in margins.items()}}


def higher_is_better(metric: str) -> bool:
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(UNKNOWN_METRIC.format(metric=metric, known=sorted(HIGHER_IS_BETTER)))
    return HIGHER_IS_BETTER[metric]


def verdict(estimate: float, p_difference: float, p_equivalent: float, *, alpha: float,
            better_when_higher: bool) -> str:
    """The four-way verdict of one change (see the module docstring); NaN p-values never reject."""
    if _rejects(p_equivalent, alpha):
        return EQUIVALENT
    if _rejects(p_difference, alpha) and np.isfinite(estimate) and estimate != 0:
        return BETTER if (estimate > 0) == better_when_higher else WORSE
    return INCONCLUSIVE


def _rejects(p: float, alpha: float) -> bool:
    return p is not None and np.isfinite(p) and p <= alpha


def holm_verdicts(estimates: Sequence[float], p_difference: Sequence[float],
                  p_equivalent: Sequence[float], better_when_higher: Sequence[bool], *,
                  alpha: float) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``verdict`` for each criterion of one hypothesis after Holm-adjusting the difference
    p-values together and the equivalence p-values together. Returns (verdicts, adjusted
    difference p, adjusted equivalence p)."""
    adjusted_difference = fm.holm(np.asarray(p_difference, dtype=float))
    adjusted_equivalent = fm.holm(np.asarray(p_equivalent, dtype=float))
    verdicts = [verdict(e, d, q, alpha=alpha, better_when_higher=h) for e, d, q, h in
                zip(estimates, adjusted_difference, adjusted_equivalent, better_when_higher)]
    return verdicts, adjusted_difference, adjusted_equivalent


def combine(verdicts: Sequence[str], claims: Sequence[Sequence[str]]) -> str:
    """SUPPORTED when every criterion's verdict is one of its claimed ones; REJECTED when one is
    decisive (not INCONCLUSIVE) and not claimed; INCONCLUSIVE otherwise (or with no criteria)."""
    verdicts = list(verdicts)
    if not verdicts:
        return INCONCLUSIVE
    if any(v != INCONCLUSIVE and v not in claim for v, claim in zip(verdicts, claims)):
        return REJECTED
    return SUPPORTED if all(v in claim for v, claim in zip(verdicts, claims)) else INCONCLUSIVE


def permutation_verdict(statistic: float, p_value: float, min_p: float, *, alpha: float,
                        claimed_sign: int | None) -> str:
    """A general claim from an exact permutation test over architectures: INCONCLUSIVE whenever
    the test's p-floor ``min_p`` is above alpha (it could never reject); else SUPPORTED when
    p <= alpha with the claimed sign (any sign when None), REJECTED when p <= alpha with the
    other sign, INCONCLUSIVE when p > alpha."""
    if not (np.isfinite(min_p) and min_p <= alpha) or not np.isfinite(p_value):
        return INCONCLUSIVE
    if p_value > alpha:
        return INCONCLUSIVE
    if claimed_sign is None or np.sign(statistic) == claimed_sign:
        return SUPPORTED
    return REJECTED


def holds_count(per_unit_verdicts: Sequence[str]) -> str:
    """'holds for k of n' over per-architecture hypothesis verdicts (SUPPORTED counts)."""
    verdicts = list(per_unit_verdicts)
    return f"holds for {sum(v == SUPPORTED for v in verdicts)} of {len(verdicts)}"


# ----------------------------------------------------------------------------- generated text

@dataclass(frozen=True)
class Rule:
    """What one criterion claims, from which its rule text is generated."""

    metric: str
    margin_key: str
    claims: tuple[str, ...]

    def text(self, margins: dict, alpha: float, fmt=str) -> str:
        margin = fmt(margins[self.margin_key])
        direction = "higher" if higher_is_better(self.metric) else "lower"
        claimed = " or ".join(self.claims)
        return (f"{claimed} claimed. EQUIVALENT if TOST shows |change| < {self.margin_key} "
                f"margin {margin} at alpha {fmt(alpha)} (the {fmt(100 * (1 - 2 * alpha))}% "
                f"interval inside ±{margin}); else BETTER / WORSE if the two-sided test of no "
                f"change rejects at alpha ({direction} {self.metric} is better); else "
                "INCONCLUSIVE. Holm across the hypothesis's criteria")


def at_chance_reason(low: float, threshold: float, fmt=str) -> str:
    return AT_CHANCE.format(low=fmt(low), threshold=fmt(threshold))


def p_floor_reason(test: str, floor: str, floor_value: float, alpha: float, fmt=str) -> str:
    return P_FLOOR.format(test=test, floor=floor, floor_value=fmt(floor_value), alpha=fmt(alpha))


def is_above_chance(balanced_accuracy_low: float, threshold: float) -> bool:
    return bool(np.isfinite(balanced_accuracy_low) and balanced_accuracy_low > threshold)


def nan_safe(value) -> float:
    return math.nan if value is None else float(value)
