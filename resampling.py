"""Array statistics behind the intervals and tests of ``fairness_metrics``: resampling of
per-group confusion counts, percentile intervals and TOST read off the resamples, the swap
permutation p-value, effect sizes over repeated runs and multiple-testing adjustments.

Pure numpy/scipy over count arrays and resample matrices: it knows nothing of metrics or prediction
tables, so ``fairness_metrics`` (which re-exports the public names) builds on it, never the reverse.
"""
from __future__ import annotations

import numpy as np
from scipy import special, stats

BAD_P_VALUES = "p-values must lie in [0, 1] (NaN allowed); got {values}."
TOO_FEW_RUNS = ("{name} has {n} finite values; effect sizes need at least 2 runs per side "
                "(e.g. one metric value per seed).")


# ---------------------------------------------------------------- resampling counts

def resample_counts(counts, n_resamples, rng):
    """Stratified bootstrap of per-group cell counts (G, C) -> (B, G, C).

    Drawing a group's n rows with replacement and counting cells is exactly one multinomial draw
    of size n over the group's cell frequencies, so resamples need no per-sample index arrays.
    Shared: ``fairness_metrics.bootstrap_ci`` draws with it.
    """
    sizes = counts.sum(axis=1)
    return np.stack([rng.multinomial(n, row / n, size=n_resamples)
                     for n, row in zip(sizes, counts)], axis=1)


def resample_by_label(joint, n_resamples, rng):
    """Bootstrap of joint counts (G, 8) stratified by group x label: each resample keeps every
    group's numbers of positives and of negatives. -> (B, G, 8). Shared: the resamples of
    ``fairness_metrics.paired_bootstrap``."""
    strata = joint.reshape(-1, 4)  # rows: (group, y_true); cells: (reference, model)
    sizes = strata.sum(axis=1)
    draws = [rng.multinomial(n, row / n, size=n_resamples) if n else
             np.zeros((n_resamples, 4), dtype=np.int64) for n, row in zip(sizes, strata)]
    return np.stack(draws, axis=1).reshape(n_resamples, *joint.shape)


DISCORDANT_CELLS = (1, 2)  # within a (group, label) stratum: (ref 0, model 1), (ref 1, model 0)


def swap_discordant(joint, n_permutations, rng):
    """Within-pair swap permutations of joint counts (G, 8) -> (P, G, 8).

    Swapping the two models' predictions on a sample only matters where they disagree, and a
    random swap of every sample of a (group, label) stratum leaves (ref 0, model 1) with a
    Binomial(d, 1/2) share of its d discordant samples: the whole permutation is one binomial
    draw per stratum, exact in distribution, with no per-sample arrays. Shared: the null of
    ``fairness_metrics.paired_bootstrap``.
    """
    strata = joint.reshape(-1, 4)
    discordant = strata[:, DISCORDANT_CELLS[0]] + strata[:, DISCORDANT_CELLS[1]]
    up = rng.binomial(discordant, 0.5, size=(n_permutations, discordant.size))
    permuted = np.broadcast_to(strata, (n_permutations, *strata.shape)).copy()
    permuted[..., DISCORDANT_CELLS[0]] = up
    permuted[..., DISCORDANT_CELLS[1]] = discordant - up
    return permuted.reshape(n_permutations, *joint.shape)


# --------------------------------------------------------------- intervals and permutation p-values

def swap_p(null, observed):
    """Two-sided Monte Carlo permutation p = (1 + #{|d*| >= |d|}) / (1 + P) per column, over the
    finite permuted deltas d* (the swap distribution is symmetric about 0); NaN when d is."""
    null, observed = np.asarray(null, dtype=float), np.asarray(observed, dtype=float)
    tolerance = 1e-12 * np.maximum(1.0, np.abs(observed))
    with np.errstate(invalid="ignore"):
        hits = (np.abs(null) >= np.abs(observed) - tolerance).sum(axis=0)
    used = np.isfinite(null).sum(axis=0)
    p = (1 + hits) / (1 + used)
    return np.where(np.isfinite(observed) & (used > 0), np.minimum(p, 1.0), np.nan)


def _mid_cdf(samples, values):
    """Share of the finite samples below ``values`` plus half the share equal, per column."""
    with np.errstate(invalid="ignore"):
        below = (samples < values).sum(axis=0) + 0.5 * (samples == values).sum(axis=0)
    used = np.isfinite(samples).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return below / used, used


def _bias(samples, estimate, bias_corrected):
    """z0 = Phi^-1(mid-share of resamples below the estimate) for a BC interval, else 0."""
    if not bias_corrected:
        return np.zeros(np.shape(estimate))
    share, used = _mid_cdf(samples, estimate)
    floor = 0.5 / np.maximum(used, 1)
    return stats.norm.ppf(np.clip(share, floor, 1 - floor))


def _column_quantiles(samples, q):
    """Linear-interpolated quantile q[j] of column j over its finite values (NaN if none)."""
    ordered = np.sort(samples, axis=0)  # NaN sort last
    used = np.isfinite(samples).sum(axis=0)
    position = np.clip(np.nan_to_num(q), 0, 1) * np.maximum(used - 1, 0)
    below = np.floor(position).astype(int)
    above = np.minimum(below + 1, np.maximum(used - 1, 0))
    lower = np.take_along_axis(ordered, below[None], axis=0)[0]
    upper = np.take_along_axis(ordered, above[None], axis=0)[0]
    value = lower + (position - below) * (upper - lower)
    return np.where((used > 0) & np.isfinite(q), value, np.nan)


def bootstrap_interval(samples, estimate, ci, *, bias_corrected=False):
    """Percentile bootstrap interval per column of ``samples`` (B, K); NaN where the estimate is.

    ``bias_corrected``: the BC variant, percentile levels Phi(2 z0 -+ z) with z0 = Phi^-1(share
    of resamples below the estimate). benchmarks/bench_stats.py measures both for the DP-gap
    change; the plain percentile interval is the default because it held its coverage there
    (BC under-covered near a zero change, where max - min is least regular).
    """
    z0, z = _bias(samples, estimate, bias_corrected), stats.norm.ppf((1 + ci) / 2)
    low = _column_quantiles(samples, stats.norm.cdf(z0 * 2 - z))
    high = _column_quantiles(samples, stats.norm.cdf(z0 * 2 + z))
    bad = ~np.isfinite(np.asarray(estimate, dtype=float))
    return np.where(bad, np.nan, low), np.where(bad, np.nan, high)


def bootstrap_tost(samples, estimate, margin, *, bias_corrected=False):
    """TOST p-value for |change| < ``margin`` read off the same bootstrap: the larger of the
    one-sided p-values of H0 change >= margin and H0 change <= -margin, i.e. the smallest a at
    which the (1 - 2a) interval of ``bootstrap_interval`` lies inside (-margin, margin).
    Percentile: p = max(G(-margin), 1 - G(margin)), G the resamples' mid-CDF."""
    z0 = _bias(samples, estimate, bias_corrected)
    margin = np.broadcast_to(np.asarray(margin, dtype=float), np.shape(estimate))

    def confidence(t):
        share, used = _mid_cdf(samples, t)
        floor = 0.5 / np.maximum(used, 1)
        return stats.norm.cdf(stats.norm.ppf(np.clip(share, floor, 1 - floor)) - 2 * z0)

    p = np.maximum(confidence(-margin), 1 - confidence(margin))
    return np.where(np.isfinite(np.asarray(estimate, dtype=float)) & np.isfinite(margin), p,
                    np.nan)


# ---------------------------------------------------------------- effect sizes and multiplicity

def _runs(name, values):
    array = np.asarray(values, dtype=float).ravel()
    array = array[np.isfinite(array)]
    if array.size < 2:
        raise ValueError(TOO_FEW_RUNS.format(name=name, n=array.size))
    return array


def cohens_d(a, b) -> float:
    """Cohen's d = (mean(a) - mean(b)) / pooled SD (ddof=1) across repeated runs (seeds, draws).

    Positive when `a` (e.g. the quantized runs) is larger; +-inf when both sides are constant
    and differ, NaN when they are constant and equal.
    """
    a, b = _runs("a", a), _runs("b", b)
    dof = a.size + b.size - 2
    pooled = np.sqrt(((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / dof)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(a.mean() - b.mean()) / pooled)


def hedges_g(a, b) -> float:
    """Hedges' g: Cohen's d times the exact small-sample correction
    J = Gamma(df/2) / (sqrt(df/2) Gamma((df-1)/2)), df = len(a) + len(b) - 2."""
    half_dof = (_runs("a", a).size + _runs("b", b).size - 2) / 2
    correction = np.exp(special.gammaln(half_dof) - special.gammaln(half_dof - 0.5)) / np.sqrt(
        half_dof)
    return float(cohens_d(a, b) * correction)


def _adjust(p_values, step):
    p = np.asarray(p_values, dtype=float).ravel()
    if np.any((p < 0) | (p > 1)):
        raise ValueError(BAD_P_VALUES.format(values=p[(p < 0) | (p > 1)][:5].tolist()))
    adjusted = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    ranks = np.arange(1, order.size + 1)
    adjusted[order] = np.minimum(1.0, step(p[order], ranks, order.size))
    return adjusted


def holm(p_values) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error); NaN entries pass through uncounted."""
    return _adjust(p_values, lambda p, rank, m: np.maximum.accumulate((m - rank + 1) * p))


def benjamini_hochberg(p_values) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate); NaN entries pass through."""
    return _adjust(p_values,
                   lambda p, rank, m: np.minimum.accumulate((m / rank * p)[::-1])[::-1])
