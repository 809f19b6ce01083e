"""Statistics over repeated units: calibration draws, seeds, configurations, architectures.

A *unit* is one paired comparison (say balanced minus random calibration, draw 3) with its own
change ``d_i``. Units of one run are scored on the same test samples, so their test-sampling
errors are correlated: averaging more draws shrinks the draw-to-draw spread but not the error
they share. ``pooled_interval`` accounts for both. With d_i = mu + u + e_i (u the test-sample
error all units share, variance c; e_i a unit's own part, its true difference from the others
plus its unshared test noise, variance lambda):

    Var(mean d) = c + lambda / k,   estimated by  V = c + s_d^2 / k,

c from bootstrap replicates that resample the *same* test samples for every unit
(``shared_paired_replicates``), s_d^2 the spread of the k changes ((k - 1) df). The interval is
mean d +- t(nu) sqrt(V) with Welch-Satterthwaite's effective df for that sum, nu = V'^2 /
((lambda'/k)^2 / (k - 1) + c^2 / (B - 1)), where lambda' is an upper (75%) confidence bound of
lambda, not s_d^2 itself (see ``effective_df``). Units sharing a cluster (an architecture)
are averaged first: the unit of inference is the cluster.

Also here: exact permutation tests over architectures (``permutation_spearman``,
``permutation_family_difference``), whose smallest attainable p is reported, and Cohen's h.
Pure numpy / scipy, no pandas tables.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from scipy import sparse, stats

import fairness_metrics as fm

EXACT_PERMUTATION_LIMIT = 200_000
"""Permutation tests enumerate every ordering up to this many; beyond it they sample n_resamples."""
REPLICATE_BLOCK = 256
"""Bootstrap replicates drawn per block in ``shared_paired_replicates`` (bounds the memory)."""

UNEQUAL_UNITS = ("units cover different samples: unit {index} has {got} samples, unit 0 has "
                 "{expected}; units pooled together must be scored on the same test samples "
                 "in the same order.")
BAD_REPLICATES = ("replicates must be a (B, k) array with one column per unit; got shape "
                  "{shape} for {k} units.")


@dataclass(frozen=True)
class Evidence:
    """A change with its interval and the p-values a verdict needs.

    ``p_difference``: two-sided test of "no change". ``p_equivalent``: TOST p of |change| <
    margin (NaN when no margin applies). ``kind`` names how they were obtained; ``n`` counts
    the units (or 1 for a single paired comparison).
    """

    estimate: float
    low: float
    high: float
    p_difference: float
    p_equivalent: float
    n: int
    kind: str
    note: str = ""


def _nan_evidence(n: int, kind: str, note: str) -> Evidence:
    return Evidence(math.nan, math.nan, math.nan, math.nan, math.nan, n, kind, note)


def cluster_means(values, replicates=None, clusters=None):
    """Average units within each cluster (columns of ``replicates`` likewise); clusters in order
    of first appearance. Returns (values, replicates, labels)."""
    values = np.asarray(values, dtype=float)
    if clusters is None:
        return values, replicates, None
    clusters = np.asarray(clusters, dtype=object)
    labels = list(dict.fromkeys(clusters.tolist()))
    members = [clusters == label for label in labels]
    means = np.array([values[m].mean() for m in members])
    if replicates is not None:
        replicates = np.column_stack([replicates[:, m].mean(axis=1) for m in members])
    return means, replicates, labels


def pooled_interval(values, replicates=None, *, ci=0.95, clusters=None, margin=None) -> Evidence:
    """Mean change over units with an interval that keeps its coverage from 3 units up.

    values: one change per unit. replicates: optional (B, k) bootstrap changes of the same units
    under shared test-sample resamples (``shared_paired_replicates``); their mean off-diagonal
    covariance is the error the units share, c (clipped at 0). Without them units count as
    independent and the interval is the t-interval on the unit changes. clusters: a label per
    unit (e.g. its architecture); units of a cluster are averaged first. margin: adds the TOST p
    for |mean change| < margin.

    The mean's variance c + lambda / k is estimated by V = c + s_d^2 / k and the interval is
    mean +- t(nu) sqrt(V), nu from ``effective_df``. With c = 0 it is exactly the t(k - 1)
    interval; with units that tie, the normal interval of the shared error. A spread too small
    for the units' own unshared test noise to give (below its ``TIE_QUANTILE``) is a tie of
    discrete predictions and is raised to that quantile, so tied units still get an interval.

    One unit, or units that agree with no test-sampling error to show, give NaN bounds: there is
    no spread to make an interval from, and a verdict must not come from a tie.
    """
    values = np.asarray(values, dtype=float)
    if replicates is not None:
        replicates = np.asarray(replicates, dtype=float)
        if replicates.ndim != 2 or replicates.shape[1] != values.size:
            raise ValueError(BAD_REPLICATES.format(shape=replicates.shape, k=values.size))
    finite = np.isfinite(values)
    if replicates is not None:
        replicates = replicates[:, finite]
    units = values[finite]
    if clusters is not None:
        clusters = np.asarray(clusters, dtype=object)[finite]
    units, replicates, _ = cluster_means(units, replicates, clusters)
    k, kind = units.size, "units' spread + shared test-sample error (Welch-Satterthwaite df)"
    if k == 0:
        return _nan_evidence(0, kind, "no unit with a finite change")
    estimate = float(units.mean())
    if k == 1:
        return Evidence(estimate, math.nan, math.nan, math.nan, math.nan, 1, kind,
                        "one unit: no spread between units to build an interval from")
    spread = units.var(ddof=1)
    if math.sqrt(spread) <= 1e-12 * max(1.0, abs(estimate)):  # a tie, up to rounding
        spread = 0.0
    shared, own, n_replicates = _covariances(replicates)
    # the units' unshared test-sampling noise alone gives a spread sigma_v^2 chi2(k-1)/(k-1);
    # one below its TIE_QUANTILE is a tie (discrete predictions), not evidence of no spread
    tie_floor = max(own - shared, 0.0) * stats.chi2.ppf(TIE_QUANTILE, k - 1) / (k - 1)
    raised = spread < tie_floor
    spread = max(spread, tie_floor)
    variance = shared + spread / k
    if not variance > 0:
        return Evidence(estimate, math.nan, math.nan, math.nan, math.nan, k, kind,
                        "units agree and show no test-sampling error: no interval, no verdict")
    df = effective_df(spread, shared, k, n_replicates)
    scale = math.sqrt(variance)
    half = float(stats.t.ppf((1 + ci) / 2, df) * scale)
    p_difference = float(min(1.0, 2 * stats.t.sf(abs(estimate) / scale, df)))
    p_equivalent = math.nan
    if margin is not None and np.isfinite(margin):
        p_equivalent = float(stats.t.sf((margin - abs(estimate)) / scale, df))
    note = (f"k = {k} units, spread var {spread:.3g}{' (tie floor)' if raised else ''}, "
            f"shared var {shared:.3g}, df {df:.3g}")
    return Evidence(estimate, estimate - half, estimate + half, p_difference, p_equivalent, k,
                    kind, note)


TIE_QUANTILE = 0.025
"""A spread of unit changes below this quantile of what the units' independent test-sampling
noise alone would give is treated as a tie and raised to it."""
DF_QUANTILE = 0.25
"""``effective_df`` evaluates the df at lambda's upper confidence bound (k - 1) s_d^2 /
chi2(DF_QUANTILE; k - 1): 1 - DF_QUANTILE = 75% confidence."""


def effective_df(spread: float, shared: float, k: int, n_replicates: int) -> float:
    """Welch-Satterthwaite df of V = c + s_d^2 / k (``spread`` = s_d^2 with k - 1 df, ``shared``
    = c from ``n_replicates`` bootstrap rows, B - 1 df):

        nu = (c + lambda'/k)^2 / ((lambda'/k)^2 / (k - 1) + c^2 / (B - 1)).

    Satterthwaite's df needs lambda, the true unit variance. Plugging in s_d^2 fails with few
    units: with k = 3, s_d^2 is below lambda / 10 one time in ten, nu then jumps towards the
    normal and the interval is too narrow exactly when the spread looked small by chance (92-93%
    coverage for normal units). lambda' = (k - 1) s_d^2 / chi2(DF_QUANTILE; k - 1), the upper
    75% confidence bound of lambda, keeps nu near k - 1 unless c clearly dominates. c = 0 gives
    k - 1 (the t-interval); s_d^2 = 0 gives B - 1 (the normal interval of c)."""
    own = (k - 1) * spread / stats.chi2.ppf(DF_QUANTILE, k - 1) / k
    shared_term = shared ** 2 / (n_replicates - 1) if n_replicates > 1 else 0.0
    return float((shared + own) ** 2 / (own ** 2 / (k - 1) + shared_term))


def _covariances(replicates) -> tuple[float, float, int]:
    """(mean covariance between two different units' replicates, clipped at 0; mean variance of
    one unit's replicates; the number of replicate rows used): (0, 0, 0) without replicates."""
    if replicates is None:
        return 0.0, 0.0, 0
    usable = replicates[np.isfinite(replicates).all(axis=1)]
    if len(usable) < 3:
        return 0.0, 0.0, 0
    cov = np.atleast_2d(np.cov(usable, rowvar=False))
    k = cov.shape[0]
    own = float(np.trace(cov) / k)
    if k < 2:
        return 0.0, own, len(usable)
    shared = max(float((cov.sum() - np.trace(cov)) / (k * (k - 1))), 0.0)
    return shared, own, len(usable)


def shared_paired_replicates(y_true, units, sensitive_features, metric, *, n_resamples=400,
                             seed=0, group=fm.OVERALL) -> np.ndarray:
    """Bootstrap changes of ``metric`` for several paired units on the same test samples.

    ``units``: a list of (y_pred, y_pred_reference) arrays, all in the row order of ``y_true``.
    Every replicate draws one group x label stratified resample of the test samples (as
    multiplicities) and scores every unit on it, so the columns share the test-sampling error
    the way the real units do. Returns (n_resamples, k) changes (model - reference) of the
    overall ``metric``, or with ``group`` (a group label) of that group's ``metric`` (accuracy).
    """
    y_true = fm.binary_array("y_true", y_true)
    labels = fm.intersectional_labels(sensitive_features)
    names, codes = np.unique(labels, return_inverse=True)
    for index, (pred, ref) in enumerate(units):
        if len(pred) != y_true.size or len(ref) != y_true.size:
            raise ValueError(UNEQUAL_UNITS.format(index=index, got=len(pred),
                                                  expected=y_true.size))
    n_groups, key, k = len(names), (group, metric), len(units)
    # samples in stratum (group x label) order: a resample draws each position uniformly from
    # its own stratum's positions, so every replicate keeps the strata's sizes
    strata = codes * 2 + y_true
    order = np.argsort(strata, kind="stable")
    sorted_strata = strata[order]
    starts = np.searchsorted(sorted_strata, sorted_strata, side="left")
    sizes = np.searchsorted(sorted_strata, sorted_strata, side="right") - starts
    cells = []  # unit u's (group, y, reference, prediction) cell, in rows u * G * 8 + ...
    for u, (pred, ref) in enumerate(units):
        pred = fm.binary_array("y_pred", pred, y_true.size)
        ref = fm.binary_array("y_pred_reference", ref, y_true.size)
        cells.append(((u * n_groups + codes) * 8 + y_true * 4 + ref * 2 + pred)[order])
    n = y_true.size
    indicator = sparse.csr_matrix((np.ones(k * n), (np.concatenate(cells), np.tile(np.arange(n),
                                                                                   k))),
                                  shape=(k * n_groups * 8, n))  # (cells, samples), 0/1
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, n_resamples, REPLICATE_BLOCK):
        block = min(REPLICATE_BLOCK, n_resamples - start)
        draws = (rng.random((block, n)) * sizes).astype(np.int64) + starts
        draws += n * np.arange(block)[:, None]
        weights = np.bincount(draws.ravel(), minlength=block * n).reshape(block, n)
        joint = (indicator @ weights.T).T.reshape(block, k, n_groups, 8)  # cell counts
        keys, deltas = fm.paired_deltas(joint, names)
        out.append(deltas[..., keys.index(key)])
    return np.vstack(out)


# ----------------------------------------------------------------------------- across architectures

def cohens_h(p, p_reference):
    """Cohen's h, the effect size of a change between two proportions."""
    clip = lambda x: np.clip(np.asarray(x, dtype=float), 0.0, 1.0)  # noqa: E731
    return 2 * np.arcsin(np.sqrt(clip(p))) - 2 * np.arcsin(np.sqrt(clip(p_reference)))


def permutation_spearman(x, y_rows, *, n_resamples: int = 2000, seed: int = 0) -> dict:
    """Mean Spearman correlation of ``x`` with each row of ``y_rows``, and its two-sided
    permutation p-value.

    ``x`` describes the columns (e.g. each architecture's log parameter count), so one ordering
    of ``x`` is applied to every row: the rows are not treated as independent evidence. Exact
    over all n! orderings up to ``EXACT_PERMUTATION_LIMIT``, else ``n_resamples`` random ones.
    Returns statistic, p_value, per_row, n_orderings, exact, min_p, min_p_fraction.
    """
    x_ranks = _standardized_ranks(np.asarray(x, dtype=float)[None, :])[0]
    y_ranks = _standardized_ranks(np.asarray(y_rows, dtype=float))
    y_ranks = y_ranks[np.isfinite(y_ranks).all(axis=1)]  # a constant row has no ranking
    n = x_ranks.size
    orderings = _orderings(math.factorial(n), n_resamples, seed,
                           lambda: itertools.permutations(range(n)),
                           lambda rng: rng.permutation(n))
    null = (x_ranks[orderings] @ y_ranks.T / n).mean(axis=1) if len(y_ranks) else np.array([])
    per_row = x_ranks @ y_ranks.T / n
    return {"per_row": per_row.tolist(),
            **_permutation_p(float(per_row.mean()) if per_row.size else math.nan, null,
                             math.factorial(n))}


def permutation_family_difference(values, is_member, *, n_resamples: int = 2000,
                                  seed: int = 0) -> dict:
    """Mean over rows of (mean of the member columns - mean of the others), and its two-sided
    permutation p-value over relabellings of which columns are members (one relabelling for all
    rows). Exact over all C(n, k) labellings up to ``EXACT_PERMUTATION_LIMIT``."""
    values, is_member = np.asarray(values, dtype=float), np.asarray(is_member, dtype=bool)
    n, k = is_member.size, int(is_member.sum())
    total = math.comb(n, k)
    labellings = _orderings(total, n_resamples, seed,
                            lambda: itertools.combinations(range(n), k),
                            lambda rng: rng.choice(n, size=k, replace=False))
    weights = np.full((len(labellings), n), -1.0 / (n - k))
    np.put_along_axis(weights, labellings[:, :k], 1.0 / k, axis=1)
    observed_weights = np.where(is_member, 1.0 / k, -1.0 / (n - k))
    null = (values @ weights.T).mean(axis=0)
    return _permutation_p(float((values @ observed_weights).mean()), null, total)


def _orderings(total: int, n_resamples: int, seed: int, enumerate_all, draw) -> np.ndarray:
    """Every permutation (or labelling) when there are at most EXACT_PERMUTATION_LIMIT, else
    ``n_resamples`` random ones, as an integer array."""
    if total <= EXACT_PERMUTATION_LIMIT:
        return np.array(list(enumerate_all()), dtype=int).reshape(total, -1)
    rng = np.random.default_rng(seed)
    return np.array([draw(rng) for _ in range(n_resamples)], dtype=int)


def _permutation_p(observed: float, null: np.ndarray, total: int) -> dict:
    """Two-sided p = share of the null at least as extreme as observed (sampled nulls count the
    observed arrangement too), and the smallest p these data could give (the p-floor)."""
    exact = null.size == total
    if np.isnan(observed) or null.size == 0:
        return {"statistic": observed, "p_value": math.nan, "n_orderings": total, "exact": exact,
                "min_p": math.nan, "min_p_fraction": ""}
    tol = 1e-12
    hits = int(np.sum(np.abs(null) >= abs(observed) - tol))
    most_extreme = int(np.sum(np.abs(null) >= np.abs(null).max() - tol))
    if exact:
        p, min_p = Fraction(hits, total), Fraction(most_extreme, total)
    else:
        p, min_p = Fraction(hits + 1, null.size + 1), Fraction(1, null.size + 1)
    return {"statistic": observed, "p_value": float(p), "n_orderings": total, "exact": exact,
            "min_p": float(min_p), "min_p_fraction": str(min_p)}


def _standardized_ranks(rows: np.ndarray) -> np.ndarray:
    """Ranks within each row, centred and scaled to unit (population) variance; NaN if constant."""
    ranks = stats.rankdata(rows, axis=1)
    spread = ranks.std(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (ranks - ranks.mean(axis=1, keepdims=True)) / np.where(spread > 0, spread, np.nan)
