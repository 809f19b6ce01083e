"""Tests of verdicts.py: the four verdicts, Holm across criteria, how criteria add up, the
p-floor and chance rules, and the rule text generated from a criterion's spec."""
import math

import numpy as np
import pytest

import verdicts as vd
from verdicts import (
    BETTER,
    EQUIVALENT,
    INCONCLUSIVE,
    REJECTED,
    SUPPORTED,
    WORSE,
    combine,
    holm_verdicts,
    permutation_verdict,
    verdict,
)


def test_four_verdicts_each_need_a_test():
    dp = dict(alpha=0.05, better_when_higher=False)  # a higher DP gap is worse
    assert verdict(0.03, 0.001, 0.9, **dp) == WORSE
    assert verdict(-0.03, 0.001, 0.9, **dp) == BETTER
    assert verdict(0.03, 0.001, 0.9, alpha=0.05, better_when_higher=True) == BETTER
    assert verdict(0.001, 0.6, 0.01, **dp) == EQUIVALENT
    assert verdict(0.03, 0.2, 0.4, **dp) == INCONCLUSIVE
    # detectably not zero but shown inside the margin: too small to matter
    assert verdict(0.004, 0.001, 0.01, **dp) == EQUIVALENT
    # a large point estimate alone decides nothing
    assert verdict(0.5, math.nan, math.nan, **dp) == INCONCLUSIVE
    assert verdict(0.5, 0.06, 0.99, **dp) == INCONCLUSIVE


def test_holm_runs_across_the_criteria_of_one_hypothesis():
    verdicts, adjusted, _ = holm_verdicts([0.03, 0.03], [0.03, 0.04], [0.9, 0.9], [False, False],
                                          alpha=0.05)
    # alone each would be WORSE; Holm makes them 0.06 and 0.06
    np.testing.assert_allclose(adjusted, [0.06, 0.06])
    assert verdicts == [INCONCLUSIVE, INCONCLUSIVE]
    verdicts, _, equivalent = holm_verdicts([0.0, 0.0], [0.9, 0.9], [0.01, 0.02], [True, True],
                                            alpha=0.05)
    np.testing.assert_allclose(equivalent, [0.02, 0.02])
    assert verdicts == [EQUIVALENT, EQUIVALENT]


def test_criteria_add_up_to_a_hypothesis_that_can_come_out_either_way():
    claims = [(BETTER,), (EQUIVALENT,)]
    assert combine([BETTER, EQUIVALENT], claims) == SUPPORTED
    assert combine([BETTER, INCONCLUSIVE], claims) == INCONCLUSIVE
    assert combine([WORSE, INCONCLUSIVE], claims) == REJECTED
    assert combine([EQUIVALENT, EQUIVALENT], claims) == REJECTED  # no gain worth the margin
    assert combine([BETTER], [(EQUIVALENT, BETTER)]) == SUPPORTED
    assert combine([], []) == INCONCLUSIVE


def test_a_general_claim_needs_a_test_that_can_reach_alpha():
    # one transformer among five architectures: the smallest exact p is 1/5
    assert permutation_verdict(0.2, 0.2, 0.2, alpha=0.05, claimed_sign=None) == INCONCLUSIVE
    assert permutation_verdict(0.2, 0.01, 0.2, alpha=0.05, claimed_sign=None) == INCONCLUSIVE
    assert permutation_verdict(-0.9, 1 / 60, 1 / 60, alpha=0.05, claimed_sign=-1) == SUPPORTED
    assert permutation_verdict(0.9, 1 / 60, 1 / 60, alpha=0.05, claimed_sign=-1) == REJECTED
    assert permutation_verdict(-0.9, 0.3, 1 / 60, alpha=0.05, claimed_sign=-1) == INCONCLUSIVE
    reason = vd.p_floor_reason("exact test", "1/5", 0.2, 0.05)
    assert "cannot give p below 1/5 (= 0.2)" in reason and "INCONCLUSIVE" in reason


def test_no_verdict_at_chance():
    assert not vd.is_above_chance(0.55, 0.6)
    assert not vd.is_above_chance(0.6, 0.6)
    assert not vd.is_above_chance(math.nan, 0.6)
    assert vd.is_above_chance(0.61, 0.6)
    assert vd.at_chance_reason(0.478, 0.6) == vd.AT_CHANCE.format(low=0.478, threshold=0.6)


def test_margins_are_checked_and_rule_text_comes_from_the_spec():
    assert vd.check_margins({"dp_gap": 0.03})["dp_gap"] == 0.03
    assert vd.check_margins({})["accuracy"] == vd.DEFAULT_MARGINS["accuracy"]
    with pytest.raises(ValueError) as error:
        vd.check_margins({"dp_gap": -0.1})
    assert str(error.value) == vd.BAD_MARGIN.format(name="dp_gap", value=-0.1)
    with pytest.raises(ValueError) as error:
        vd.higher_is_better("cost_s")
    assert str(error.value) == vd.UNKNOWN_METRIC.format(metric="cost_s",
                                                        known=sorted(vd.HIGHER_IS_BETTER))
    text = vd.Rule("dp_gap", "dp_gap", (EQUIVALENT,)).text({"dp_gap": 0.03}, 0.05)
    assert "EQUIVALENT claimed" in text and "±0.03" in text and "lower dp_gap is better" in text
    assert "90.0% interval" in text


def test_tost_says_equivalent_for_a_true_zero_on_a_large_sample_and_not_on_a_tiny_one():
    import fairness_metrics as fm

    def accuracy_verdict(n, seed):
        rng = np.random.default_rng(seed)
        groups = rng.choice(["A", "B"], n)
        y = rng.integers(0, 2, n)
        q = np.where(y == 1, 0.8, 0.2)  # both models draw from the same probability: no change
        reference, model = (rng.random((2, n)) < q).astype(int)
        row = fm.paired_bootstrap(y, model, reference, sensitive_features=groups,
                                  n_resamples=400, seed=seed, margins={"accuracy": 0.01}) \
            .set_index(["group", "metric"]).loc[(fm.OVERALL, "accuracy")]
        return verdict(row["delta"], row["p"], row["p_equivalent"], alpha=0.05,
                       better_when_higher=True)
    assert [accuracy_verdict(40_000, seed) for seed in range(3)] == [EQUIVALENT] * 3
    assert [accuracy_verdict(50, seed) for seed in range(3)] == [INCONCLUSIVE] * 3
