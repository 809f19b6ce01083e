"""Size, power and coverage of the analysis statistics on simulated data with a known truth.

    python -m benchmarks.bench_stats            # the full benchmark
    python -m benchmarks.bench_stats --quick    # fewer simulations (wider Monte Carlo error)

Prints, at alpha = 0.05 (target: 5% +- 2%; coverage 95% +- 2%):

1. size: rejection rate of the paired test (``fairness_metrics.paired_bootstrap``'s p) for the
   DP gap, the EO gap and accuracy under an exact null: two exchangeable models (each sample's
   two predictions drawn independently from the same sample-specific probability), n = 2,000,
   4 groups with CelebA-like shares .09/.49/.13/.29;
2. power on the same design with a planted drop in the smallest group's selection rate, for
   paired_bootstrap's p, a plain per-sample exact swap (sign-flip) test written independently
   here, and the old percentile-bootstrap p (2 min(#d*<=0, #d*>=0) rule) for comparison;
3. coverage of paired_bootstrap's interval for a known population change of the DP gap (and,
   for comparison, of the plain percentile interval on the same resamples);
4. coverage of ``unit_stats.pooled_interval`` over k = 3, 5, 10 units scored on one shared test
   set, for the expected change, on five designs: this file's original one (DP gap, units differ
   less than their own test noise), the two of issue 26 (900 samples in 4 groups .49/.29/.13/.09,
   a reference right on 85%, each unit flipping predictions at its own rate ~ U(0.02, 0.10), 5
   points more in the smallest group: accuracy, and the DP gap with group-dependent selection
   rates), and two of this file's own where units share most of their error (fragile samples
   every unit flips; nested boundary shifts, scored on the smallest group's accuracy). Beside
   each cell, on the same draws: a t-interval on the unit changes alone and a normal interval on
   the test noise alone. 4,000 simulations per cell (Monte Carlo se 0.35 points: a 1,000-draw
   se of 0.7 is too coarse to place a cell in a band of +-2 points), in two processes
   (``--workers``); ``--only pooled`` runs this section alone.

Last, the wall time of paired_bootstrap at 20,000 samples x 2,000 resamples and permutations.
Every number is the Monte Carlo estimate from the seeds below; its standard error is printed.
"""
import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor

os.environ.setdefault("OMP_NUM_THREADS", "1")  # the benchmark should not depend on free cores

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

import fairness_metrics as fm  # noqa: E402
import resampling  # noqa: E402
import unit_stats  # noqa: E402

ALPHA = 0.05
SHARES = {"Female/Old": 0.09, "Female/Young": 0.49, "Male/Old": 0.13, "Male/Young": 0.29}
GROUPS = np.array(list(SHARES))
N = 2000
OFFSETS = np.array([-0.2, 0.1, -0.1, 0.2])  # per-group shift of the log-odds of predicting 1
NULL_METRICS = ("dp_gap", "eo_gap", "accuracy")
# share of the predictions a model re-decides (flips) in the coverage designs
FLIP = 0.03


def draw_groups(rng, n=N):
    codes = rng.choice(len(GROUPS), size=n, p=list(SHARES.values()))
    return codes, GROUPS[codes]


def exchangeable_pair(rng, drop=0.0):
    """y, model, reference, group labels: both models draw their prediction from the same
    sample-specific probability; ``drop`` removes that share of the model's positive
    predictions in the smallest group (the planted change)."""
    codes, labels = draw_groups(rng)
    y = rng.integers(0, 2, N)
    logit = OFFSETS[codes] + 2.0 * (2 * y - 1) + 1.5 * rng.standard_normal(N)
    q = 1 / (1 + np.exp(-logit))
    reference = (rng.random(N) < q).astype(int)
    model = (rng.random(N) < q).astype(int)
    hit = (codes == 0) & (model == 1) & (rng.random(N) < drop)
    model[hit] = 0
    return y, model, reference, labels, codes


def paired_p(y, model, reference, labels, resamples, seed):
    frame = fm.paired_bootstrap(y, model, reference, sensitive_features=labels,
                                n_resamples=resamples, seed=seed)
    return frame[frame["group"] == fm.OVERALL].set_index("metric")["p"]


def plain_swap_p(model, reference, codes, permutations, rng):
    """Exact within-pair swap test of the DP-gap change, one sign flip per sample and
    permutation (no shortcut), two-sided on |change|."""
    onehot = np.eye(len(GROUPS))[codes]
    sizes = onehot.sum(axis=0)

    def dp_change(m, r):
        return np.ptp(m @ onehot / sizes, axis=-1) - np.ptp(r @ onehot / sizes, axis=-1)

    observed = dp_change(model, reference)
    swap = rng.random((permutations, model.size)) < 0.5
    null = dp_change(np.where(swap, reference, model), np.where(swap, model, reference))
    return (1 + np.sum(np.abs(null) >= abs(observed) - 1e-12)) / (1 + permutations)


def percentile_bootstrap_p(y, model, reference, codes, resamples, rng):
    """The old rule: p = 2 min(1 + #{d* <= 0}, 1 + #{d* >= 0}) / (B + 1) over group-stratified
    bootstrap DP-gap changes d*."""
    joint = fm.cell_counts(codes, len(GROUPS), y, reference, model)
    keys, deltas = fm.paired_deltas(resampling.resample_counts(joint, resamples, rng), GROUPS)
    d = deltas[:, keys.index((fm.OVERALL, "dp_gap"))]
    return min(1.0, 2 * (min((d <= 0).sum(), (d >= 0).sum()) + 1) / (resamples + 1))


def rate(hits, n):
    share = np.mean(hits)
    return f"{100 * share:5.1f}% (se {100 * np.sqrt(share * (1 - share) / n):.1f})"


def size_and_power(n_sims, resamples, drop):
    rng = np.random.default_rng(20261201)
    null_hits = {m: [] for m in NULL_METRICS}
    for sim in range(n_sims):
        y, model, reference, labels, _ = exchangeable_pair(rng)
        p = paired_p(y, model, reference, labels, resamples, sim)
        for metric in NULL_METRICS:
            null_hits[metric].append(p[metric] <= ALPHA)
    print(f"1. size under an exact null ({n_sims} simulations, {resamples} permutations each)")
    for metric in NULL_METRICS:
        print(f"   {metric:9s} paired_bootstrap p <= 0.05: {rate(null_hits[metric], n_sims)}")

    power = {"paired_bootstrap": [], "plain exact swap test": [], "old percentile bootstrap": []}
    rng = np.random.default_rng(20261202)
    for sim in range(n_sims):
        y, model, reference, labels, codes = exchangeable_pair(rng, drop=drop)
        power["paired_bootstrap"].append(paired_p(y, model, reference, labels, resamples,
                                                  sim)["dp_gap"] <= ALPHA)
        power["plain exact swap test"].append(
            plain_swap_p(model, reference, codes, resamples, rng) <= ALPHA)
        power["old percentile bootstrap"].append(
            percentile_bootstrap_p(y, model, reference, codes, resamples, rng) <= ALPHA)
    print(f"2. power, DP gap, {100 * drop:.0f}% of the smallest group's positive predictions "
          f"dropped (same {n_sims} draws for every test)")
    for name, hits in power.items():
        print(f"   {name:26s} {rate(hits, n_sims)}")


DESIGNS = {  # population selection rates of the reference model, Female/Old first
    "separated": np.array([0.40, 0.50, 0.47, 0.55]),
    "near-tied": np.array([0.45, 0.50, 0.47, 0.52]),  # Female/Old and Male/Old 0.02 apart
}


def selection_after(selection, drop):
    """Population selection rates after the re-decided predictions (FLIP) and the smallest
    group's drop."""
    drops = np.zeros_like(selection)
    drops[0] = drop
    return selection * (1 - FLIP) * (1 - drops) + (1 - selection) * FLIP


def true_dp_change(selection, drop):
    return np.ptp(selection_after(selection, drop)) - np.ptp(selection)


def flipped_pair(rng, codes, selection, drop_of_unit, reference=None):
    """A reference with population selection rates ``selection`` (drawn unless given) and a
    model that re-decides FLIP of its predictions and drops ``drop_of_unit`` of the smallest
    group's positive predictions."""
    if reference is None:
        reference = (rng.random(codes.size) < selection[codes]).astype(int)
    model = np.where(rng.random(codes.size) < FLIP, 1 - reference, reference)
    dropped = (codes == 0) & (reference == 1) & (rng.random(codes.size) < drop_of_unit)
    return np.where(dropped, 0, model), reference


def paired_coverage(n_sims, resamples, drop):
    print(f"3. coverage of the paired 95% interval of the DP-gap change ({n_sims} simulations, "
          f"{resamples} resamples; paired_bootstrap's percentile interval, and the bias-corrected "
          "(BC) one on the same resamples)")
    cases = {"exchangeable models, true change 0": (None, 0.0)}
    cases.update({f"{name} groups, drop {drop}": (selection, drop)
                  for name, selection in DESIGNS.items()})
    for label, (selection, drop_) in cases.items():
        rng = np.random.default_rng(20261203)
        truth = 0.0 if selection is None else true_dp_change(selection, drop_)
        percentile, corrected = [], []
        for sim in range(n_sims):
            if selection is None:
                y, model, reference, labels, codes = exchangeable_pair(rng)
            else:
                codes, labels = draw_groups(rng)
                y = rng.integers(0, 2, N)
                model, reference = flipped_pair(rng, codes, selection, drop_)
            frame = fm.paired_bootstrap(y, model, reference, sensitive_features=labels,
                                        n_resamples=resamples, seed=sim)
            low, high = frame.set_index(["group", "metric"]).loc[(fm.OVERALL, "dp_gap"),
                                                                 ["low", "high"]]
            percentile.append(low <= truth <= high)
            names, codes = np.unique(labels, return_inverse=True)
            joint = fm.cell_counts(codes, len(names), y, reference, model)
            keys, delta = fm.paired_deltas(joint, names)
            samples = fm.paired_deltas(resampling.resample_by_label(
                joint, resamples, np.random.default_rng(sim)), names)[1]
            column = keys.index((fm.OVERALL, "dp_gap"))
            lo, hi = fm.bootstrap_interval(samples[:, [column]], delta[[column]], 0.95,
                                           bias_corrected=True)
            corrected.append(lo[0] <= truth <= hi[0])
        print(f"   {label:42s} truth {truth:+.4f}: percentile {rate(percentile, n_sims)}, "
              f"BC {rate(corrected, n_sims)}")


# ------------------------------------------------------------------ pooled intervals over units
# Each design draws one shared test set and k units scored on it, and knows the truth: the
# expected change over units and test sets, in closed form (or a 1-D integral over the units'
# effect distribution). A design returns (y, [(model, reference), ...], group labels).

ISSUE_SHARES = np.array([0.49, 0.29, 0.13, 0.09])  # issue 26: the smallest group last
ISSUE_N, ISSUE_CORRECT, ISSUE_RATES, ISSUE_EXTRA = 900, 0.85, (0.02, 0.10), 0.05
ISSUE_SELECTION = np.array([0.30, 0.45, 0.50, 0.70])  # the reference's rates, DP-gap variant


def issue_groups(rng):
    codes = rng.choice(4, size=ISSUE_N, p=ISSUE_SHARES)
    return codes, np.array(["G0", "G1", "G2", "G3"])[codes]


def issue_rates(rng, codes):
    """Each unit's flip rate per sample: uniform on ISSUE_RATES, ISSUE_EXTRA more in the
    smallest group."""
    return rng.uniform(*ISSUE_RATES) + ISSUE_EXTRA * (codes == 3)


def issue_accuracy_units(rng, k):
    """Issue 26: a reference right on 85% of 900 samples; each unit flips each of its
    predictions with its own rate (the smallest group 5 points more)."""
    codes, labels = issue_groups(rng)
    y = rng.integers(0, 2, ISSUE_N)
    reference = np.where(rng.random(ISSUE_N) < ISSUE_CORRECT, y, 1 - y)
    units = [(np.where(rng.random(ISSUE_N) < issue_rates(rng, codes), 1 - reference, reference),
              reference) for _ in range(k)]
    return y, units, labels


# E[change of accuracy] = sum_g share_g E[rate_g] (1 - 2 P(correct))
ISSUE_ACCURACY_TRUTH = float(ISSUE_SHARES @ (np.mean(ISSUE_RATES) + ISSUE_EXTRA * np.eye(4)[3])
                             * (1 - 2 * ISSUE_CORRECT))


def issue_dp_units(rng, k):
    """The same units on a reference whose selection rate differs by group (ISSUE_SELECTION,
    the smallest group highest): flips move every group towards 0.5, the smallest most, so the
    DP gap shrinks by a group-dependent amount."""
    codes, labels = issue_groups(rng)
    y = rng.integers(0, 2, ISSUE_N)
    reference = (rng.random(ISSUE_N) < ISSUE_SELECTION[codes]).astype(int)
    units = [(np.where(rng.random(ISSUE_N) < issue_rates(rng, codes), 1 - reference, reference),
              reference) for _ in range(k)]
    return y, units, labels


def issue_dp_truth() -> float:
    """E over the rate r ~ U(ISSUE_RATES) of the population change of max - min selection rate,
    s_g -> s_g + r_g (1 - 2 s_g) (exact: Gauss-Legendre in r of a piecewise-linear function)."""
    nodes, weights = np.polynomial.legendre.leggauss(200)
    low, high = ISSUE_RATES
    rates = (nodes + 1) / 2 * (high - low) + low
    extra = ISSUE_EXTRA * np.eye(4)[3]
    after = ISSUE_SELECTION + (rates[:, None] + extra) * (1 - 2 * ISSUE_SELECTION)
    return float(weights / 2 @ (np.ptp(after, axis=1) - np.ptp(ISSUE_SELECTION)))


FRAGILE_N, FRAGILE_SHARE, FRAGILE_RATES, STEADY_FLIP = 600, 0.10, (0.3, 0.9), 0.01
FRAGILE_CORRECT, STEADY_CORRECT = 0.60, 0.90


def fragile_units(rng, k):
    """This benchmark's own design, for units that share much of their error: 600 samples in 2
    groups (70/30); one in 10 is *fragile* (the reference is right on 60% of them, 90% of the
    rest); every unit flips fragile samples with its own rate ~ U(0.3, 0.9) and the others with
    0.01. Units then change mostly the same samples, so the test set's fragile samples are an
    error they share (large c) and the spread between units is wide too."""
    codes = (rng.random(FRAGILE_N) < 0.3).astype(int)
    labels = np.array(["A", "B"])[codes]
    y = rng.integers(0, 2, FRAGILE_N)
    fragile = rng.random(FRAGILE_N) < FRAGILE_SHARE
    correct = rng.random(FRAGILE_N) < np.where(fragile, FRAGILE_CORRECT, STEADY_CORRECT)
    reference = np.where(correct, y, 1 - y)
    units = []
    for _ in range(k):
        rate = np.where(fragile, rng.uniform(*FRAGILE_RATES), STEADY_FLIP)
        units.append((np.where(rng.random(FRAGILE_N) < rate, 1 - reference, reference),
                      reference))
    return y, units, labels


FRAGILE_TRUTH = (FRAGILE_SHARE * np.mean(FRAGILE_RATES) * (1 - 2 * FRAGILE_CORRECT)
                 + (1 - FRAGILE_SHARE) * STEADY_FLIP * (1 - 2 * STEADY_CORRECT))


def separated_dp_units(drop, spread):
    """This file's original design: calibration-draw-like units whose drop of the smallest
    group's positive predictions varies ~ N(drop, spread^2) (units differ less than their own
    test noise), on the separated design, 2,000 samples."""
    selection = DESIGNS["separated"]

    def draw(rng, k):
        codes, labels = draw_groups(rng)
        y = rng.integers(0, 2, N)
        reference = (rng.random(N) < selection[codes]).astype(int)
        units = [flipped_pair(rng, codes, selection,
                              float(np.clip(drop + spread * rng.standard_normal(), 0, 1)),
                              reference) for _ in range(k)]
        return y, units, labels

    draws = np.clip(drop + spread * np.random.default_rng(0).standard_normal(20_000), 0, 1)
    after = (selection * (1 - FLIP) * (1 - draws[:, None] * np.eye(4)[0])
             + (1 - selection) * FLIP)  # selection_after, for every draw at once
    return draw, float(np.mean(np.ptp(after, axis=1)) - np.ptp(selection))


NESTED_N, NESTED_SHARES, NESTED_RATES = 1500, np.array([0.5, 0.3, 0.2]), (0.04, 0.10)
NESTED_BOUNDARY_CORRECT = np.array([0.55, 0.50, 0.30])  # the reference on boundary samples


def nested_units(rng, k):
    """This benchmark's second own design, for units that differ little but share almost all of
    their test error: units that move one decision boundary by different amounts (say one
    calibration scale each). Each of 1,500 samples in 3 groups (.5/.3/.2) has a margin m ~ U(0,
    1); the reference is right on the samples with m < 0.10 with probability .55/.50/.30 by
    group (90% elsewhere, never flipped); unit i flips exactly the samples with m < r_i, r_i ~
    U(0.04, 0.10), so units flip nested sets. Metric: the smallest group's accuracy (the
    ``group`` argument of ``shared_paired_replicates``). Truth: E[r] (1 - 2 * .30)."""
    codes = rng.choice(3, size=NESTED_N, p=NESTED_SHARES)
    labels = np.array(["P", "Q", "R"])[codes]
    y = rng.integers(0, 2, NESTED_N)
    margin = rng.random(NESTED_N)
    boundary = margin < NESTED_RATES[1]
    correct = rng.random(NESTED_N) < np.where(boundary, NESTED_BOUNDARY_CORRECT[codes], 0.9)
    reference = np.where(correct, y, 1 - y)
    units = [(np.where(margin < rng.uniform(*NESTED_RATES), 1 - reference, reference), reference)
             for _ in range(k)]
    return y, units, labels


NESTED_TRUTH = float(np.mean(NESTED_RATES) * (1 - 2 * NESTED_BOUNDARY_CORRECT[2]))


def unit_changes(metric, group, y, units, labels):
    """Each unit's change (model - reference) of the overall accuracy or DP gap, or with
    ``group`` of that group's accuracy, for all units at once (numpy; the same definitions as
    fairness_metrics, which the tests check against fairlearn)."""
    models = np.array([m for m, _ in units])
    references = np.array([r for _, r in units])
    names, codes = np.unique(labels, return_inverse=True)
    if metric == "accuracy":
        rows = codes == list(names).index(group) if group else np.ones(codes.size, bool)
        return ((models == y)[:, rows].mean(axis=1) - (references == y)[:, rows].mean(axis=1))
    onehot = np.eye(len(names))[codes]
    sizes = onehot.sum(axis=0)
    return np.ptp(models @ onehot / sizes, axis=1) - np.ptp(references @ onehot / sizes, axis=1)


def pooled_designs(drop, spread):
    """(label, metric, group, draw, truth) of every pooled-interval design."""
    separated, separated_truth = separated_dp_units(drop, spread)
    return [(f"original: DP gap, drops ~ N({drop}, {spread}^2), n = {N}", "dp_gap", None,
             separated, separated_truth),
            (f"issue 26: accuracy, rates U{ISSUE_RATES} (+{ISSUE_EXTRA} smallest), "
             f"n = {ISSUE_N}", "accuracy", None, issue_accuracy_units, ISSUE_ACCURACY_TRUTH),
            ("issue 26: DP gap, group-dependent effect", "dp_gap", None, issue_dp_units,
             issue_dp_truth()),
            (f"fragile samples shared by units: accuracy, n = {FRAGILE_N}", "accuracy", None,
             fragile_units, FRAGILE_TRUTH),
            (f"nested boundary shifts: smallest group's accuracy, n = {NESTED_N}", "accuracy",
             "R", nested_units, NESTED_TRUTH)]


def coverage_cell(cell):
    """(hits, widths, t only hits, z only hits) of one (design index, k, n_sims, replicates,
    drop, spread) cell: its own seed, so the numbers do not depend on how cells are spread over
    processes."""
    index, k, n_sims, replicates, drop, spread, interval = cell
    _, metric, group, draw, truth = pooled_designs(drop, spread)[index]
    interval = interval or unit_stats.pooled_interval
    rng = np.random.default_rng(20261204 + k)
    hits, widths, t_only, z_only = [], [], [], []
    for sim in range(n_sims):
        y, units, labels = draw(rng, k)
        values = unit_changes(metric, group, y, units, labels)
        shared = unit_stats.shared_paired_replicates(
            y, units, labels, metric, n_resamples=replicates, seed=sim, group=group or fm.OVERALL)
        evidence = interval(values, shared)
        hits.append(evidence.low <= truth <= evidence.high)
        widths.append(evidence.high - evidence.low)
        error, cov = abs(values.mean() - truth), np.cov(shared, rowvar=False)
        c = max((cov.sum() - np.trace(cov)) / (k * (k - 1)), 0.0)
        t_only.append(error <= stats.t.ppf(0.975, k - 1) * values.std(ddof=1) / k ** 0.5)
        z_only.append(error <= 1.959964 * (c + (np.trace(cov) / k - c) / k) ** 0.5)
    return hits, widths, t_only, z_only


def pooled_coverage(n_sims, replicates, drop, spread, unit_counts, interval=None, workers=1):
    """Coverage of ``unit_stats.pooled_interval`` (or ``interval``, same signature) on every
    design, for each number of units; beside it, on the same draws, a t-interval on the unit
    changes alone and a normal interval on the test noise alone (shared c + unshared / k).
    ``workers`` processes share the cells; every cell has its own seed."""
    print(f"4. coverage of the pooled 95% interval over k units scored on one shared test set; "
          f"truth = the expected change over units and test sets ({n_sims} simulations, "
          f"{replicates} shared replicates each; t only / z only: the two parts alone)")
    designs = pooled_designs(drop, spread)
    cells = [(index, k, n_sims, replicates, drop, spread, interval)
             for index in range(len(designs)) for k in unit_counts]
    with ProcessPoolExecutor(workers) as pool:
        results = pool.map(coverage_cell, cells)
        for label, *_, truth in designs:
            print(f"   {label}; truth {truth:+.4f}")
            for k in unit_counts:
                hits, widths, t_only, z_only = next(results)
                print(f"     k = {k:2d}: {rate(hits, n_sims)}, median width "
                      f"{np.nanmedian(widths):.4f}, no interval {np.mean(np.isnan(widths)):.0%}; "
                      f"t only {100 * np.mean(t_only):.1f}%, z only {100 * np.mean(z_only):.1f}%",
                      flush=True)


def timing():
    rng = np.random.default_rng(0)
    n = 20_000
    y = rng.integers(0, 2, n)
    reference = np.where(rng.random(n) < 0.85, y, 1 - y)
    model = np.where(rng.random(n) < 0.05, 1 - reference, reference)
    groups = rng.choice(GROUPS, n)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        fm.paired_bootstrap(y, model, reference, sensitive_features=groups, n_resamples=2000)
        times.append(time.perf_counter() - start)
    print(f"5. paired_bootstrap, {n} samples, 2000 resamples + 2000 swap permutations: "
          f"{min(times):.3f} s (best of 5)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer simulations, for a check")
    parser.add_argument("--sims", type=int, default=None, help="simulations per figure")
    parser.add_argument("--pooled-sims", type=int, default=None,
                        help="simulations per pooled-interval cell (section 4; default 4000, "
                             "300 with --quick)")
    parser.add_argument("--workers", type=int, default=2,
                        help="processes for section 4's cells (default 2; the numbers do not "
                             "depend on it)")
    parser.add_argument("--only", choices=("pooled",), default=None,
                        help="run one section (pooled: section 4) and nothing else")
    args = parser.parse_args()
    sims = args.sims or (150 if args.quick else 500)
    resamples = 500 if args.quick else 1000
    print(f"bench_stats: {sims} simulations per figure, alpha = {ALPHA}")
    started = time.perf_counter()
    if args.only is None:
        size_and_power(sims, resamples, drop=0.25)
        paired_coverage(sims, resamples, drop=0.10)
    pooled_coverage(args.pooled_sims or (300 if args.quick else 4000), 200, drop=0.10,
                    spread=0.04, unit_counts=(3, 5, 10), workers=args.workers)
    if args.only is None:
        timing()
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
