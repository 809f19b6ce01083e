"""Tests of unit_stats.py: the pooled interval over units (coverage, ties, clusters, shared
test-sample error) and the exact permutation tests over architectures."""
import math

import numpy as np
import pytest

import fairness_metrics as fm
import unit_stats as us
import verdicts as vd


def test_identical_units_give_no_zero_width_interval_and_no_verdict():
    tied = us.pooled_interval([0.2, 0.2, 0.2])
    assert math.isnan(tied.low) and math.isnan(tied.high)  # nothing to make an interval from
    assert vd.verdict(tied.estimate, tied.p_difference, tied.p_equivalent, alpha=0.05,
                      better_when_higher=False) == vd.INCONCLUSIVE
    # the same tie with the test-sampling error the units share: a real, non-zero width
    shared = np.random.default_rng(0).normal(0.2, 0.03, size=(400, 1)) * np.ones((1, 3))
    with_error = us.pooled_interval([0.2, 0.2, 0.2], shared)
    assert with_error.high - with_error.low == pytest.approx(2 * 1.96 * 0.03, rel=0.15)
    lone = us.pooled_interval([0.3])
    assert lone.estimate == 0.3 and math.isnan(lone.low) and lone.n == 1


def test_pooled_interval_is_the_t_interval_for_independent_units():
    values = np.array([0.01, 0.03, 0.02, 0.05])
    evidence = us.pooled_interval(values)
    half = 3.182446305284263 * values.std(ddof=1) / 2  # t(0.975, 3 df) * sd / sqrt(4)
    assert (evidence.low, evidence.high) == pytest.approx((values.mean() - half,
                                                           values.mean() + half))
    assert evidence.n == 4 and evidence.p_difference < 0.05


def test_pooled_interval_covers_at_its_nominal_rate_from_three_units():
    rng = np.random.default_rng(1)
    for k in (3, 5):
        covered = 0
        for _ in range(400):
            evidence = us.pooled_interval(rng.normal(0.1, 0.05, k))
            covered += evidence.low <= 0.1 <= evidence.high
        assert 0.92 <= covered / 400 <= 0.98, (k, covered)


def test_units_of_one_architecture_count_as_one_cluster():
    values = [0.01, 0.012, 0.011, 0.05]
    clustered = us.pooled_interval(values, clusters=["a", "a", "a", "b"])
    assert clustered.n == 2 and clustered.estimate == pytest.approx((0.011 + 0.05) / 2)
    assert us.pooled_interval(values).n == 4


def test_tost_over_units_needs_the_interval_inside_the_margin():
    rng = np.random.default_rng(2)
    many = us.pooled_interval(rng.normal(0.0, 0.01, 30), margin=0.02)
    few = us.pooled_interval(rng.normal(0.0, 0.01, 3), margin=0.005)
    assert many.p_equivalent <= 0.05 and few.p_equivalent > 0.05


def test_shared_replicates_share_the_test_samples():
    rng = np.random.default_rng(3)
    n = 600
    groups = rng.choice(["A", "B"], n)
    y = rng.integers(0, 2, n)
    reference = rng.integers(0, 2, n)
    model = np.where(rng.random(n) < 0.1, 1 - reference, reference)
    replicates = us.shared_paired_replicates(y, [(model, reference), (model, reference)], groups,
                                             "accuracy", n_resamples=300, seed=0)
    assert replicates.shape == (300, 2)
    np.testing.assert_allclose(replicates[:, 0], replicates[:, 1])  # one unit twice: identical
    single = fm.paired_bootstrap(y, model, reference, sensitive_features=groups, n_resamples=300)
    width = single.set_index(["group", "metric"]).loc[(fm.OVERALL, "accuracy")]
    assert replicates[:, 0].std() == pytest.approx((width["high"] - width["low"]) / 3.92, rel=0.25)
    with pytest.raises(ValueError) as error:
        us.shared_paired_replicates(y, [(model[:10], reference[:10])], groups, "accuracy")
    assert str(error.value) == us.UNEQUAL_UNITS.format(index=0, got=10, expected=n)


def test_permutation_spearman_is_exact_and_knows_its_floor():
    x = np.log([1e5, 1e6, 1e7, 1e8, 1e9])
    perfect = us.permutation_spearman(x, [[5, 4, 3, 2, 1], [0.5, 0.4, 0.3, 0.2, 0.1]])
    assert perfect["statistic"] == pytest.approx(-1.0)
    assert perfect["exact"] and perfect["n_orderings"] == 120
    assert perfect["p_value"] == pytest.approx(1 / 60)  # 2 of 120 orderings are as extreme
    assert perfect["min_p_fraction"] == "1/60"
    four = us.permutation_spearman(x[:4], [[4, 3, 2, 1]])
    assert four["p_value"] == pytest.approx(1 / 12)  # four models can never reach 0.05
    assert vd.permutation_verdict(four["statistic"], four["p_value"], four["min_p"], alpha=0.05,
                                  claimed_sign=-1) == vd.INCONCLUSIVE


def test_permutation_family_difference_counts_labellings():
    values = np.array([[0.30, 0.10, 0.11, 0.12, 0.09], [0.25, 0.05, 0.06, 0.04, 0.05]])
    test = us.permutation_family_difference(values, [True, False, False, False, False])
    assert test["n_orderings"] == 5 and test["exact"]
    assert test["statistic"] == pytest.approx(np.mean([0.30 - 0.105, 0.25 - 0.05]))
    assert test["p_value"] == pytest.approx(1 / 5) and test["min_p_fraction"] == "1/5"


def test_cohens_h_of_a_change_between_proportions():
    assert us.cohens_h(0.5, 0.5) == 0
    assert us.cohens_h(0.6, 0.5) == pytest.approx(2 * np.arcsin(np.sqrt(0.6)) - np.pi / 2)


def _uncorrelated_replicates(k, sd, rows=200, seed=0):
    """(rows, k) replicates whose columns have standard deviation ``sd`` and exactly zero
    covariance: units with their own test noise and none shared."""
    noise = np.random.default_rng(seed).standard_normal((rows, k))
    q, _ = np.linalg.qr(noise - noise.mean(axis=0))  # orthonormal columns with mean 0
    return q * sd * math.sqrt(rows - 1)


def test_units_that_differ_less_than_their_own_noise_keep_the_t_interval():
    # the spread (sd 0.006) is below the units' own test noise (sd 0.01): the old rule floored
    # it there and switched to a z-interval; without shared error it is the t(2) interval
    values = np.array([0.020, 0.026, 0.032])
    replicates = _uncorrelated_replicates(3, 0.01)
    evidence = us.pooled_interval(values, replicates)
    half = 4.302652729749464 * values.std(ddof=1) / math.sqrt(3)
    assert (evidence.low, evidence.high) == pytest.approx((values.mean() - half,
                                                           values.mean() + half), rel=1e-6)


def test_three_units_that_truly_differ_cover_at_the_nominal_rate():
    # unit effects spread twice their own test noise: the old floor-and-z rule covered ~92%
    rng = np.random.default_rng(4)
    replicates = _uncorrelated_replicates(3, 0.01)
    covered = 0
    for _ in range(2000):
        values = 0.05 + rng.normal(0, 0.02, 3) + rng.normal(0, 0.01, 3)
        evidence = us.pooled_interval(values, replicates)
        covered += evidence.low <= 0.05 <= evidence.high
    assert 0.935 <= covered / 2000 <= 0.965, covered


def test_effective_df_is_welch_satterthwaite_at_the_upper_quartile_of_lambda():
    assert us.effective_df(0.03, 0.0, 3, 400) == pytest.approx(2)  # no shared error: t(k - 1)
    assert us.effective_df(0.0, 0.001, 3, 400) == pytest.approx(399)  # a tie: c's own B - 1 df
    # by hand: chi2(0.25; 2) = -2 ln 0.75, lambda' = 2 s^2 / that, nu = V'^2 / sum(v^2 / df)
    upper = 2 * 0.03 / (-2 * math.log(0.75)) / 3
    nu = (0.001 + upper) ** 2 / (upper ** 2 / 2 + 0.001 ** 2 / 399)
    assert us.effective_df(0.03, 0.001, 3, 400) == pytest.approx(nu, rel=1e-12)
    assert 2 < nu < 2 * (1 + 0.001 * 3 / 0.03) ** 2  # below the plug-in Welch df


def test_pooled_interval_is_mean_plus_t_nu_times_the_two_components():
    from scipy import stats
    rng = np.random.default_rng(5)
    values = np.array([0.012, 0.031, 0.020, 0.026])
    replicates = rng.normal(0, 0.01, (300, 1)) + rng.normal(0, 0.008, (300, 4))
    cov = np.cov(replicates, rowvar=False)
    c = (cov.sum() - np.trace(cov)) / 12
    variance = c + values.var(ddof=1) / 4
    df = us.effective_df(values.var(ddof=1), c, 4, 300)
    half = stats.t.ppf(0.975, df) * math.sqrt(variance)
    evidence = us.pooled_interval(values, replicates, margin=0.05)
    assert (evidence.low, evidence.high) == pytest.approx((values.mean() - half,
                                                           values.mean() + half), rel=1e-10)
    assert evidence.p_difference == pytest.approx(
        2 * stats.t.sf(values.mean() / math.sqrt(variance), df))
    assert evidence.p_equivalent == pytest.approx(
        stats.t.sf((0.05 - values.mean()) / math.sqrt(variance), df))


def _coverage(k, sims, tau, shared, own, seed):
    """Share of ``sims`` pooled intervals covering 0 for d_i = u + theta_i + v_i (u ~ N(0,
    shared^2) common, theta_i ~ N(0, tau^2), v_i ~ N(0, own^2)), with 200 replicates that carry
    the same shared and own test noise; also the share a t-only and a z-only interval cover."""
    from scipy import stats
    rng = np.random.default_rng(seed)
    hits = {"pooled": 0, "t only": 0, "z only": 0}
    for _ in range(sims):
        values = rng.normal(0, shared) + rng.normal(0, tau, k) + rng.normal(0, own, k)
        replicates = rng.normal(0, shared, (200, 1)) + rng.normal(0, own, (200, k))
        evidence = us.pooled_interval(values, replicates)
        hits["pooled"] += evidence.low <= 0 <= evidence.high
        mean, spread = values.mean(), values.std(ddof=1)
        hits["t only"] += abs(mean) <= stats.t.ppf(0.975, k - 1) * spread / math.sqrt(k)
        hits["z only"] += abs(mean) <= 1.959964 * math.sqrt(shared ** 2 + own ** 2 / k)
    return {name: count / sims for name, count in hits.items()}


def test_three_units_cover_whether_the_shared_error_or_the_spread_dominates():
    # shared test error three times the units' own variance / k: the t-interval on the unit
    # changes alone misses it
    shared_heavy = _coverage(3, 1500, tau=0.0, shared=0.01, own=0.01, seed=6)
    assert 0.935 <= shared_heavy["pooled"] <= 0.975 and shared_heavy["t only"] < 0.90
    # units truly differ (tau twice their own noise): the test noise alone misses the spread
    spread_heavy = _coverage(3, 1500, tau=0.02, shared=0.003, own=0.01, seed=7)
    assert 0.935 <= spread_heavy["pooled"] <= 0.975 and spread_heavy["z only"] < 0.80


def test_a_small_chance_spread_does_not_shrink_the_interval_to_normal():
    # c about a fifth of lambda / k: Welch's df from s_d^2 itself covers ~92.5% with 3 units
    # (it jumps towards the normal when s_d^2 is small by chance); the upper-quartile df ~95.3%
    covered = _coverage(3, 3000, tau=0.01, shared=0.0025, own=0.005, seed=8)["pooled"]
    assert 0.938 <= covered <= 0.97, covered
