"""Group-fairness metrics, bootstrap intervals and paired tests for binary classifiers.

Everything here works on arrays or on the per-sample prediction table
(`sample_id, y_true, y_pred, score, <sensitive attrs>, group`). Only the notebook wrapper
`compute_fairness_metrics` runs a model, and it imports torch lazily. Every metric is a function of
per-group confusion counts, which is what lets the bootstrap run without loops over resamples.
Definitions and sign conventions: docs/metrics.md. The array statistics underneath (resampling
counts, intervals, TOST, swap p-values, effect sizes, Holm/BH) live in ``resampling``.
"""
from __future__ import annotations

import contextlib
import logging
import warnings

import numpy as np
import pandas as pd
from scipy import stats

from resampling import (  # noqa: F401
    BAD_P_VALUES,
    TOO_FEW_RUNS,
    benjamini_hochberg,
    bootstrap_interval,
    bootstrap_tost,
    cohens_d,
    hedges_g,  # public names of this module since before the split
    holm,
    resample_by_label,
    resample_counts,
    swap_discordant,
    swap_p,
)

logger = logging.getLogger(__name__)

OVERALL = "overall"  # the `group` of whole-sample rows in the interval and test tables
GROUP_RATES = ("accuracy", "selection_rate", "tpr", "fpr")
OVERALL_METRICS = ("accuracy", "balanced_accuracy", "selection_rate", "tpr", "fpr")
# gap -> (per-group rate, how the groups are aggregated); eo_gap = max(eop_gap, pe_gap).
GAP_SPECS = {
    "dp_gap": ("selection_rate", "difference"),
    "eop_gap": ("tpr", "difference"),
    "pe_gap": ("fpr", "difference"),
    "disparate_impact": ("selection_rate", "ratio"),
    "worst_group_accuracy": ("accuracy", "min"),
    "accuracy_gap": ("accuracy", "difference"),
}
METRICS = OVERALL_METRICS + ("dp_gap", "eo_gap", "eop_gap", "pe_gap", "disparate_impact",
                             "worst_group_accuracy", "accuracy_gap")
PAIRED_GROUP_METRICS = ("accuracy",)
DI_THRESHOLD = 0.8  # the four-fifths rule
COUNT_COLUMNS = ["n", "n_pos", "n_neg", "small_group"]  # per-group rows besides the rates
PREDICTION_COLUMNS = ("sample_id", "y_true", "y_pred", "score", "group")
"""The fixed columns of the per-sample prediction table (evaluation.predict writes it); one column
per sensitive attribute stands between ``score`` and ``group``."""
REQUIRED_COLUMNS = ("sample_id", "y_true", "y_pred", "group")  # what the metrics read of it
NOTEBOOK_NAMES = {"dp_gap": "demographic_parity", "eo_gap": "equalized_odds",
                  "eop_gap": "equal_opportunity", "pe_gap": "predictive_equality"}

EMPTY_INPUT = ("{name} is empty; expected at least one sample. "
               "Check that the prediction table or split is not empty.")
LENGTH_MISMATCH = "{name} has {got} entries but y_true has {expected}; pass one entry per sample."
NOT_BINARY = ("{name} must hold only 0/1 labels; got values {values}. "
              "Map labels to 0/1 first, e.g. (y == positive_label).astype(int).")
MISSING_GROUP = ("sensitive_features has {count} missing values; expected a group label for "
                 "every sample. Fill or drop those samples first.")
BAD_SENSITIVE_SHAPE = ("sensitive_features must be 1-D (group labels) or 2-D (one column per "
                       "attribute); got {ndim} dimensions.")
MISSING_COLUMNS = ("{name} lacks columns {missing}; expected at least {required} "
                   "(the per-sample table from evaluation.predict).")
DUPLICATE_IDS = ("{name} has {count} duplicated sample_id values (e.g. {example!r}); "
                 "expected one row per sample.")
SAMPLE_MISMATCH = ("reference covers different samples: {only_pred} sample_ids only in pred "
                   "(e.g. {example_pred}), {only_ref} only in reference (e.g. {example_ref}); "
                   "evaluate both models on the same test samples.")
LABEL_MISMATCH = ("y_true differs between pred and reference for {count} samples "
                  "(e.g. {example!r}); both tables must come from the same test set.")
BAD_CI = "ci must be strictly between 0 and 1, got {ci!r}; e.g. 0.95 for a 95% interval."
BAD_RESAMPLES = ("n_resamples must be a positive integer, got {n!r}; e.g. 2000 "
                 "(summarize_predictions also takes 0: point estimates only).")
BAD_PERMUTATIONS = "n_permutations must be a positive integer or None, got {n!r}; e.g. 2000."
BAD_MIN_GROUP_SIZE = "min_group_size must be a non-negative integer, got {n!r}; e.g. 30."
UNKNOWN_ATTRIBUTE = ("sensitive attribute {attr!r} is not a metadata column; available: "
                     "{available}. Pass one of them, or a list of them for intersectional groups.")
NO_METADATA = ("loader.dataset has no `metadata` DataFrame with a sample_id column; expected a "
               "datasets.FaceDataset or any dataset exposing such a .metadata table.")
UNDEFINED_RATE = ("groups {groups} have no {missing}: their {rate} is NaN (not 0), and gaps over "
                  "{rate} use the other {used} of {total} groups.")


class UndefinedRateWarning(UserWarning):
    """A group lacks positives or negatives, so its TPR or FPR is undefined (NaN)."""


# ---------------------------------------------------------------- input checks

def binary_array(name, values, expected_len=None):
    """``values`` as a 1-D int64 array of 0/1, checked (empty, length, other values).

    Shared: ``unit_stats`` checks its units' predictions with it."""
    array = np.asarray(values).ravel()
    if array.size == 0:
        raise ValueError(EMPTY_INPUT.format(name=name))
    if expected_len is not None and array.size != expected_len:
        raise ValueError(LENGTH_MISMATCH.format(name=name, got=array.size, expected=expected_len))
    bad = ~np.isin(array, (0, 1))
    if bad.any():
        raise ValueError(NOT_BINARY.format(name=name, values=np.unique(array[bad])[:5].tolist()))
    return array.astype(np.int64)


def intersectional_labels(sensitive_features) -> np.ndarray:
    """One group label per sample: 1-D labels as strings, or 2-D attribute columns joined as 'a/b'.

    Accepts a list/array/Series of labels, a 2-D array, or a DataFrame with one column per
    attribute (joined in column order, e.g. gender then age gives 'Female/Old').
    """
    ndim = np.ndim(sensitive_features)
    if ndim not in (1, 2):
        raise ValueError(BAD_SENSITIVE_SHAPE.format(ndim=ndim))
    if ndim == 1 and isinstance(sensitive_features, np.ndarray) \
            and sensitive_features.dtype.kind == "U":  # already labels: nothing can be missing
        return sensitive_features
    frame = pd.DataFrame(sensitive_features if ndim == 2 else {"group": sensitive_features})
    missing = int(frame.isna().any(axis=1).sum())
    if missing:
        raise ValueError(MISSING_GROUP.format(count=missing))
    columns = [frame[column].astype(str) for column in frame.columns]
    labels = columns[0].str.cat(columns[1:], sep="/") if len(columns) > 1 else columns[0]
    return labels.to_numpy(dtype=str)


def _prepare(y_true, y_pred, sensitive_features):
    """Validated 0/1 arrays, sorted group names and each sample's group code."""
    y_true = binary_array("y_true", y_true)
    y_pred = binary_array("y_pred", y_pred, len(y_true))
    labels = intersectional_labels(sensitive_features)
    if len(labels) != len(y_true):
        raise ValueError(LENGTH_MISMATCH.format(name="sensitive_features", got=len(labels),
                                                expected=len(y_true)))
    names, codes = np.unique(labels, return_inverse=True)
    return y_true, y_pred, names, codes


def _check_min_group_size(min_group_size):
    if isinstance(min_group_size, bool) or not isinstance(min_group_size, (int, np.integer)) \
            or min_group_size < 0:
        raise ValueError(BAD_MIN_GROUP_SIZE.format(n=min_group_size))


def _check_bootstrap_args(n_resamples, ci):
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) \
            or n_resamples < 1:
        raise ValueError(BAD_RESAMPLES.format(n=n_resamples))
    if not 0 < ci < 1:
        raise ValueError(BAD_CI.format(ci=ci))


# ---------------------------------------------------------------- metrics from counts

def cell_counts(codes, n_groups, *binary_arrays):
    """Per-group counts of every 0/1 combination of the arrays, shape (G, 2**len(arrays)).

    With (y_true, y_pred) the cells are tn, fp, fn, tp. Shared with benchmarks/bench_stats.py.
    """
    cells = np.zeros_like(codes)
    for array in binary_arrays:
        cells = 2 * cells + array
    n_cells = 2 ** len(binary_arrays)
    return np.bincount(codes * n_cells + cells, minlength=n_groups * n_cells).reshape(n_groups,
                                                                                     n_cells)


def _rates(counts):
    """Rates from confusion counts (..., 4) ordered tn, fp, fn, tp; 0/0 gives NaN."""
    tn, fp, fn, tp = np.moveaxis(np.asarray(counts, dtype=float), -1, 0)
    n = tn + fp + fn + tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"accuracy": (tp + tn) / n, "selection_rate": (tp + fp) / n,
                "tpr": tp / (tp + fn), "fpr": fp / (fp + tn)}


_AGGREGATES = {  # over the last (group) axis, skipping NaN
    "difference": lambda v: np.fmax.reduce(v, axis=-1) - np.fmin.reduce(v, axis=-1),
    "ratio": lambda v: np.fmin.reduce(v, axis=-1) / np.fmax.reduce(v, axis=-1),
    "min": lambda v: np.fmin.reduce(v, axis=-1),
}


def _gaps(group_rates):
    with np.errstate(divide="ignore", invalid="ignore"):
        gaps = {gap: _AGGREGATES[aggregate](group_rates[rate])
                for gap, (rate, aggregate) in GAP_SPECS.items()}
    gaps["eo_gap"] = np.fmax(gaps["eop_gap"], gaps["pe_gap"])
    return gaps


def _overall(counts):
    overall = _rates(counts.sum(axis=-2))
    overall["balanced_accuracy"] = (overall["tpr"] + 1 - overall["fpr"]) / 2
    return overall


def _summary(counts):
    """Every metric in METRICS from per-group counts (..., G, 4)."""
    values = {**_overall(counts), **_gaps(_rates(counts))}
    return {metric: values[metric] for metric in METRICS}


def _metric_matrix(counts, names, group_metrics):
    """All metrics as the last axis of one array, with the matching (group, metric) keys."""
    summary, rates = _summary(counts), _rates(counts)
    keys = [(OVERALL, m) for m in METRICS] + [(g, m) for m in group_metrics for g in names]
    columns = [summary[m] for m in METRICS] + [rates[m][..., i] for m in group_metrics
                                               for i in range(len(names))]
    return keys, np.stack(columns, axis=-1)


# ---------------------------------------------------------------- point estimates

def overall_metrics(y_true, y_pred) -> dict:
    """Accuracy, balanced accuracy ((TPR + TNR) / 2), selection rate, TPR and FPR over all
    samples."""
    y_true = binary_array("y_true", y_true)
    y_pred = binary_array("y_pred", y_pred, len(y_true))
    counts = cell_counts(np.zeros_like(y_true), 1, y_true, y_pred)
    return {metric: float(value) for metric, value in _overall(counts).items()}


def group_table(y_true, y_pred, *, sensitive_features, min_group_size=30) -> pd.DataFrame:
    """Per-group counts and rates, one row per group (index `group`, sorted).

    Columns: n, n_pos, n_neg, accuracy, selection_rate, tpr, fpr, small_group (n below
    `min_group_size`; such groups stay in every gap, the flag only marks them). A group with no
    positives (negatives) gets NaN TPR (FPR) and an UndefinedRateWarning naming it.
    """
    _check_min_group_size(min_group_size)
    y_true, y_pred, names, codes = _prepare(y_true, y_pred, sensitive_features)
    counts = cell_counts(codes, len(names), y_true, y_pred)
    tn, fp, fn, tp = counts.T
    table = pd.DataFrame({"n": counts.sum(axis=1), "n_pos": fn + tp, "n_neg": tn + fp,
                          **_rates(counts)}, index=pd.Index(names, name="group"))
    table["small_group"] = table["n"] < min_group_size
    if table["small_group"].any():
        logger.info("groups below %d samples (flagged small_group): %s", min_group_size,
                    table.index[table["small_group"]].tolist())
    _warn_undefined_rates(table)
    return table


def _warn_undefined_rates(table):
    for rate, missing in (("tpr", "positives"), ("fpr", "negatives")):
        undefined = table.index[table[rate].isna()].tolist()
        if undefined:
            warnings.warn(UNDEFINED_RATE.format(groups=undefined, missing=missing,
                                                rate=rate.upper(),
                                                used=len(table) - len(undefined), total=len(table)),
                          UndefinedRateWarning, stacklevel=3)


def fairness_gaps(table: pd.DataFrame) -> dict:
    """Gaps over the groups of a `group_table`, NaN rates skipped.

    dp_gap = max - min selection rate; eop_gap = TPR gap; pe_gap = FPR gap;
    eo_gap = max(eop_gap, pe_gap); disparate_impact = min / max selection rate;
    worst_group_accuracy = min accuracy; accuracy_gap = max - min accuracy. `n_groups_used` counts
    the groups with every rate defined (all groups enter dp_gap and the accuracy gaps).
    """
    group_rates = {rate: table[rate].to_numpy(dtype=float) for rate in GROUP_RATES}
    gaps = {gap: float(value) for gap, value in _gaps(group_rates).items()}
    gaps["n_groups_used"] = int(table[list(GROUP_RATES)].notna().all(axis=1).sum())
    return gaps


def _gap_function(gap, name, definition):
    def metric(y_true, y_pred, *, sensitive_features):
        table = group_table(y_true, y_pred, sensitive_features=sensitive_features,
                            min_group_size=0)
        return fairness_gaps(table)[gap]

    metric.__name__ = metric.__qualname__ = name
    metric.__doc__ = f"{definition} over the groups of `sensitive_features` (NaN rates skipped)."
    return metric


demographic_parity_difference = _gap_function(
    "dp_gap", "demographic_parity_difference", "Max - min selection rate")
demographic_parity_ratio = _gap_function(
    "disparate_impact", "demographic_parity_ratio", "Min / max selection rate (disparate impact)")
equal_opportunity_difference = _gap_function(
    "eop_gap", "equal_opportunity_difference", "Max - min true positive rate")
predictive_equality_difference = _gap_function(
    "pe_gap", "predictive_equality_difference", "Max - min false positive rate")
equalized_odds_difference = _gap_function(
    "eo_gap", "equalized_odds_difference", "Larger of the TPR gap and the FPR gap")
worst_group_accuracy = _gap_function(
    "worst_group_accuracy", "worst_group_accuracy", "Lowest group accuracy")
accuracy_difference = _gap_function(
    "accuracy_gap", "accuracy_difference", "Best - worst group accuracy")


@contextlib.contextmanager
def _quiet_aif360():
    """aif360 announces missing optional packages (tensorflow, ...) through the root logger and
    warnings at import; route it to a NullHandler meanwhile (this also stops logging.warning from
    installing a root handler) and restore the user's handlers afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = [logging.NullHandler()]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.handlers = saved


def between_group_entropy_index(y_true, y_pred, *, sensitive_features, alpha=2) -> float:
    """AIF360's between-group generalized entropy index over all groups (0 = no inequality).

    Each sample's benefit b = y_pred - y_true + 1 is replaced by its group's mean benefit and the
    generalized entropy GE(alpha) of those values is returned (computed by AIF360's
    `between_all_groups_generalized_entropy_index`).
    """
    y_true, y_pred, _, codes = _prepare(y_true, y_pred, sensitive_features)
    with _quiet_aif360():
        from aif360.datasets import BinaryLabelDataset
        from aif360.metrics import ClassificationMetric

        truth = BinaryLabelDataset(df=pd.DataFrame({"label": y_true, "group": codes}),
                                   label_names=["label"], protected_attribute_names=["group"],
                                   favorable_label=1, unfavorable_label=0)
        predicted = truth.copy()
        predicted.labels = y_pred.reshape(-1, 1).astype(float)
        metric = ClassificationMetric(truth, predicted)
        return float(metric.between_all_groups_generalized_entropy_index(alpha=alpha))


# ---------------------------------------------------------------- bootstrap

def _keyed_frame(keys, **columns):
    groups, metrics = zip(*keys)
    return pd.DataFrame({"group": groups, "metric": metrics, **columns})


def bootstrap_ci(y_true, y_pred, *, sensitive_features, n_resamples=2000, ci=0.95,
                 seed=0) -> pd.DataFrame:
    """Percentile bootstrap intervals for every metric, gap and per-group rate.

    Resampling is stratified by group (each resample keeps every group's size) and seeded.
    Returns columns group, metric, estimate, low, high; whole-sample metrics and gaps have
    group == OVERALL, per-group rates (accuracy, selection_rate, tpr, fpr) their group label.
    """
    _check_bootstrap_args(n_resamples, ci)
    y_true, y_pred, names, codes = _prepare(y_true, y_pred, sensitive_features)
    counts = cell_counts(codes, len(names), y_true, y_pred)
    resampled = resample_counts(counts, n_resamples, np.random.default_rng(seed))
    keys, estimate = _metric_matrix(counts, names, GROUP_RATES)
    low, high = bootstrap_interval(_metric_matrix(resampled, names, GROUP_RATES)[1], estimate, ci)
    return _keyed_frame(keys, estimate=estimate, low=low, high=high)


def paired_deltas(joint, names):
    """Model minus reference for every metric, from joint counts (..., G, 8) of
    (y_true, y_pred_reference, y_pred). Shared: ``unit_stats`` builds its replicates with it."""
    cells = joint.reshape(joint.shape[:-1] + (2, 2, 2))
    model = cells.sum(axis=-2).reshape(joint.shape[:-1] + (4,))
    reference = cells.sum(axis=-1).reshape(joint.shape[:-1] + (4,))
    keys, new = _metric_matrix(model, names, PAIRED_GROUP_METRICS)
    return keys, new - _metric_matrix(reference, names, PAIRED_GROUP_METRICS)[1]


def paired_bootstrap(y_true, y_pred, y_pred_reference, *, sensitive_features, n_resamples=2000,
                     ci=0.95, seed=0, n_permutations=None, margins=None) -> pd.DataFrame:
    """Paired interval and exact-size test of the change y_pred - y_pred_reference on the same
    samples.

    Returns columns group, metric, delta, low, high, p for every metric and gap (group ==
    OVERALL) and per-group accuracy.

    - low/high: percentile bootstrap (``bootstrap_interval``), both models resampled on the
      same rows, stratified by group x label (each resample keeps every group's numbers of
      positives and negatives).
    - p: two-sided within-pair swap (sign-flip) permutation test: under "the two models are
      exchangeable on every sample", swapping their predictions on any sample leaves the data's
      distribution unchanged, so the test holds its size exactly (``swap_discordant``, ``swap_p``);
      ``n_permutations`` defaults to ``n_resamples``.
    - margins ({metric: margin}): adds ``p_equivalent``, the TOST p-value for |change| < margin
      of those metrics (``bootstrap_tost``), NaN elsewhere.
    """
    _check_bootstrap_args(n_resamples, ci)
    n_permutations = n_resamples if n_permutations is None else n_permutations
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, (int, np.integer)) \
            or n_permutations < 1:
        raise ValueError(BAD_PERMUTATIONS.format(n=n_permutations))
    y_true, y_pred, names, codes = _prepare(y_true, y_pred, sensitive_features)
    y_reference = binary_array("y_pred_reference", y_pred_reference, len(y_true))
    joint = cell_counts(codes, len(names), y_true, y_reference, y_pred)
    rng = np.random.default_rng(seed)
    keys, delta = paired_deltas(joint, names)
    samples = paired_deltas(resample_by_label(joint, n_resamples, rng), names)[1]
    null = paired_deltas(swap_discordant(joint, n_permutations, rng), names)[1]
    low, high = bootstrap_interval(samples, delta, ci)
    frame = _keyed_frame(keys, delta=delta, low=low, high=high, p=swap_p(null, delta))
    if margins:
        margin = np.array([margins.get(metric, np.nan) if group == OVERALL else np.nan
                           for group, metric in keys])
        frame["p_equivalent"] = bootstrap_tost(samples, delta, margin)
    return frame


# ---------------------------------------------------------------- paired tests and effect sizes

def mcnemar_exact(y_true, y_pred, y_pred_reference) -> float:
    """Exact two-sided McNemar p-value: a binomial(0.5) test on the discordant pairs
    (reference right / model wrong vs reference wrong / model right); 1.0 with no discordance."""
    y_true = binary_array("y_true", y_true)
    model_right = binary_array("y_pred", y_pred, len(y_true)) == y_true
    reference_right = binary_array("y_pred_reference", y_pred_reference, len(y_true)) == y_true
    worse = int(np.sum(reference_right & ~model_right))
    better = int(np.sum(~reference_right & model_right))
    if worse + better == 0:
        return 1.0
    return float(min(1.0, 2 * stats.binom.cdf(min(worse, better), worse + better, 0.5)))


def _flip_rate(y_pred, y_pred_reference):
    return float(np.mean(y_pred != y_pred_reference))


def _by_group(statistic, labels, *arrays):
    """`statistic(*arrays)` over all samples (index OVERALL) and within each group."""
    values = {OVERALL: statistic(*arrays)}
    values.update({group: statistic(*(array[labels == group] for array in arrays))
                   for group in np.unique(labels)})
    return pd.Series(values, dtype=float)


def flip_rates(y_pred, y_pred_reference, *, sensitive_features) -> pd.Series:
    """Share of samples whose prediction changed, overall (index OVERALL) and per group."""
    y_pred = binary_array("y_pred", y_pred)
    y_reference = binary_array("y_pred_reference", y_pred_reference, len(y_pred))
    labels = intersectional_labels(sensitive_features)
    if len(labels) != len(y_pred):
        raise ValueError(LENGTH_MISMATCH.format(name="sensitive_features", got=len(labels),
                                                expected=len(y_pred)))
    return _by_group(_flip_rate, labels, y_pred, y_reference)


# ---------------------------------------------------------------- prediction tables

def _check_table(table, name):
    missing = [column for column in REQUIRED_COLUMNS if column not in table.columns]
    if missing:
        raise ValueError(MISSING_COLUMNS.format(name=name, missing=missing,
                                                required=list(REQUIRED_COLUMNS)))
    duplicated = table["sample_id"][table["sample_id"].duplicated()]
    if len(duplicated):
        raise ValueError(DUPLICATE_IDS.format(name=name, count=len(duplicated),
                                              example=duplicated.iloc[0]))


def aligned_reference(pred, reference) -> pd.DataFrame:
    """The rows of ``reference`` in the sample order of ``pred``, after checking both tables and
    that they cover the same samples with the same labels.

    Shared: the one alignment of two prediction tables (``prediction_store`` pairs with it)."""
    _check_table(pred, "pred")
    _check_table(reference, "reference")
    reference = reference.set_index("sample_id")
    only_pred = pred["sample_id"][~pred["sample_id"].isin(reference.index)].tolist()
    only_ref = reference.index[~reference.index.isin(pred["sample_id"])].tolist()
    if only_pred or only_ref:
        raise ValueError(SAMPLE_MISMATCH.format(only_pred=len(only_pred), only_ref=len(only_ref),
                                                example_pred=only_pred[:3],
                                                example_ref=only_ref[:3]))
    reference = reference.loc[pred["sample_id"]]
    differs = reference["y_true"].to_numpy() != pred["y_true"].to_numpy()
    if differs.any():
        raise ValueError(LABEL_MISMATCH.format(count=int(differs.sum()),
                                               example=reference.index[differs][0]))
    return reference.reset_index()


def _stat_rows(frame, suffixes, prefix=""):
    """Long rows (group, metric, value) from group/metric/statistic columns; the metric name
    becomes prefix + metric + the statistic's suffix."""
    stacked = frame.set_index(["group", "metric"])[list(suffixes)].stack()
    groups, metrics, statistics = (stacked.index.get_level_values(i) for i in range(3))
    return pd.DataFrame({"group": groups,
                         "metric": [prefix + m + suffixes[s] for m, s in zip(metrics, statistics)],
                         "value": stacked.to_numpy(dtype=float)})


def _series_rows(series, metric):
    return pd.DataFrame({"group": series.index, "metric": metric, "value": series.to_numpy(float)})


def _di_flag(disparate_impact):
    return None if np.isnan(disparate_impact) else bool(disparate_impact < DI_THRESHOLD)


def point_estimates(y_true, y_pred, *, sensitive_features, y_pred_reference=None) -> pd.DataFrame:
    """Every metric, gap and per-group rate without resampling: columns group, metric, estimate
    (the rows of ``bootstrap_ci``); with ``y_pred_reference`` the changes model - reference
    instead (columns group, metric, delta: the rows of ``paired_bootstrap``)."""
    y_true, y_pred, names, codes = _prepare(y_true, y_pred, sensitive_features)
    if y_pred_reference is None:
        counts = cell_counts(codes, len(names), y_true, y_pred)
        keys, estimate = _metric_matrix(counts, names, GROUP_RATES)
        return _keyed_frame(keys, estimate=estimate)
    y_reference = binary_array("y_pred_reference", y_pred_reference, len(y_true))
    keys, delta = paired_deltas(cell_counts(codes, len(names), y_true, y_reference, y_pred),
                                names)
    return _keyed_frame(keys, delta=delta)


INTERVAL_SUFFIXES = {"estimate": "", "low": "_low", "high": "_high"}
POINT_SUFFIXES = {"estimate": ""}


def _paired_rows(y_true, y_pred, y_reference, labels, options, margins):
    """Long rows of the changes against the reference: delta_m (+ _low/_high/_p and
    _p_equivalent with resamples), flip_rate, and mcnemar_p with resamples."""
    flips = _series_rows(flip_rates(y_pred, y_reference, sensitive_features=labels), "flip_rate")
    if not options["n_resamples"]:
        paired = point_estimates(y_true, y_pred, sensitive_features=labels,
                                 y_pred_reference=y_reference)
        return [_stat_rows(paired, {"delta": ""}, prefix="delta_"), flips]
    paired = paired_bootstrap(y_true, y_pred, y_reference, margins=margins, **options)
    suffixes = {"delta": "", "low": "_low", "high": "_high", "p": "_p"}
    if margins:
        suffixes["p_equivalent"] = "_p_equivalent"
    return [_stat_rows(paired, suffixes, prefix="delta_"), flips,
            _series_rows(_by_group(mcnemar_exact, labels, y_true, y_pred, y_reference),
                         "mcnemar_p")]


def summarize_predictions(pred: pd.DataFrame, *, reference: pd.DataFrame | None = None,
                          n_resamples=2000, ci=0.95, seed=0, min_group_size=30, margins=None):
    """Every metric with bootstrap intervals from a per-sample prediction table.

    `pred` (and `reference`, the FP32 table on the same samples, aligned on sample_id) hold
    sample_id, y_true, y_pred and group. Returns (record, per_group):
    record -- flat dict: each metric m in METRICS with m_low/m_high, di_flag (disparate impact
    < 0.8; None when undefined), n_groups_used, n_groups; with a reference also delta_m,
    delta_m_low/_high/_p (this model minus reference, paired bootstrap), flip_rate, mcnemar_p.
    per_group -- long DataFrame (group, metric, value): n, n_pos, n_neg, accuracy,
    selection_rate, tpr, fpr (each rate with _low/_high), small_group (1/0); with a reference
    also delta_accuracy (+ _low/_high/_p), flip_rate and mcnemar_p.

    ``n_resamples=0``: point estimates only, no resampling: the same keys without any
    ``_low``/``_high``/``_p``/``_p_equivalent`` and without ``mcnemar_p`` (the sweep records these;
    the analysis computes the intervals and tests once, from the prediction tables).
    """
    _check_table(pred, "pred")
    if n_resamples != 0:
        _check_bootstrap_args(n_resamples, ci)
    y_reference = (None if reference is None
                   else aligned_reference(pred, reference)["y_pred"].to_numpy())
    y_true, y_pred = pred["y_true"].to_numpy(), pred["y_pred"].to_numpy()
    labels = intersectional_labels(pred["group"])
    table = group_table(y_true, y_pred, sensitive_features=labels, min_group_size=min_group_size)
    options = dict(sensitive_features=labels, n_resamples=n_resamples, ci=ci, seed=seed)
    estimates = (point_estimates(y_true, y_pred, sensitive_features=labels) if not n_resamples
                 else bootstrap_ci(y_true, y_pred, **options))
    rows = [_stat_rows(estimates, INTERVAL_SUFFIXES if n_resamples else POINT_SUFFIXES),
            table[COUNT_COLUMNS].astype(float).reset_index().melt(id_vars="group",
                                                                  var_name="metric")]
    if y_reference is not None:
        rows += _paired_rows(y_true, y_pred, y_reference, labels, options, margins)
    rows = pd.concat(rows, ignore_index=True)
    is_overall = rows["group"] == OVERALL
    record = {metric: float(value) for metric, value in
              zip(rows.loc[is_overall, "metric"], rows.loc[is_overall, "value"])}
    record.update(di_flag=_di_flag(record["disparate_impact"]),
                  n_groups_used=fairness_gaps(table)["n_groups_used"], n_groups=len(table))
    per_group = rows[~is_overall].sort_values("group", kind="stable").reset_index(drop=True)
    return record, per_group


# ---------------------------------------------------------------- notebook wrapper

NOT_A_MODEL = ("model must be a torch.nn.Module, got {kind}; pass the model object itself, e.g. "
               "models.load_model_from_checkpoint(path)[0]")
NOT_A_LOADER = ("loader must be a DataLoader over a dataset with a .metadata table, got "
                "{kind}; wrap the dataset: datasets.make_loader(dataset, batch_size=64)")
NO_SENSITIVE_ATTR = ("sensitive_attr={attr!r}: name a metadata column, e.g. 'gender', or a list "
                     "of them for intersectional groups; available: {available}")
META_DEVICE = ("model has parameters on the meta device (shapes without data), e.g. {name!r}: "
               "materialise it first, e.g. model.to_empty(device='cpu') then "
               "model.load_state_dict(weights)")
BAD_IMAGE_SHAPE = ("the loader yields images of shape {shape}, but the model's first layer "
                   "{layer!r} expects {expected} channels as [channels, height, width]; convert "
                   "the images (e.g. grayscale to RGB with image.expand(3, -1, -1)) or use a "
                   "model built for them")


def check_model(model):
    """TypeError for a model that is not an ``nn.Module``, ValueError (``META_DEVICE``) for one
    with parameters or buffers on the meta device. Shared with ``quantization.apply_quantization``
    (torch is imported here, when called)."""
    import torch

    if not isinstance(model, torch.nn.Module):
        raise TypeError(NOT_A_MODEL.format(kind=type(model).__name__))
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_meta:
            raise ValueError(META_DEVICE.format(name=name))


def _check_loader(loader):
    """A loader-like object: it has a ``.dataset`` (a list or a dataset itself has none)."""
    if not hasattr(loader, "dataset"):
        raise TypeError(NOT_A_LOADER.format(kind=type(loader).__name__))


def check_images(model, loader):
    """The loader's first image has the channel count the model's first layer takes
    (``BAD_IMAGE_SHAPE``); items may be contract tuples (image first) or bare image tensors."""
    first = next((m for m in model.modules() if isinstance(getattr(m, "in_channels", None), int)),
                 None)
    try:
        item = loader.dataset[0]
        image = item[0] if isinstance(item, (tuple, list)) else item
    except Exception:  # an iterable-style or unusual dataset: leave the check to the model
        return
    shape = tuple(getattr(image, "shape", ()))
    if first is not None and (len(shape) != 3 or shape[0] != first.in_channels):
        layer = next(name for name, m in model.named_modules() if m is first)
        raise ValueError(BAD_IMAGE_SHAPE.format(shape=shape, layer=layer,
                                                expected=first.in_channels))


def _sensitive_frame(loader, sensitive_attr):
    """Metadata indexed by sample_id, restricted to the requested attribute columns."""
    metadata = getattr(loader.dataset, "metadata", None)
    if not isinstance(metadata, pd.DataFrame) or "sample_id" not in metadata.columns:
        raise ValueError(NO_METADATA)
    available = [column for column in metadata.columns if column != "sample_id"]
    if isinstance(sensitive_attr, str):
        attributes = [sensitive_attr]
    elif isinstance(sensitive_attr, (list, tuple)) and sensitive_attr:
        attributes = list(sensitive_attr)
    else:  # None, an empty list, a number, ...
        raise ValueError(NO_SENSITIVE_ATTR.format(attr=sensitive_attr, available=available))
    for attribute in attributes or [None]:
        if attribute not in available:
            raise ValueError(UNKNOWN_ATTRIBUTE.format(attr=attribute, available=available))
    return metadata.set_index("sample_id")[attributes]


NOT_ABOVE_CHANCE = ("the model is not clearly above chance on this data: balanced accuracy "
                    "{estimate:.3f}, lower {ci:.0%} bound {low:.3f} <= {threshold} (the rule the "
                    "analysis uses before any verdict). Its fairness gaps describe noise: train "
                    "it longer, check the labels, or evaluate a trained model")


class NotAboveChanceWarning(UserWarning):
    """A model's balanced-accuracy lower bound is at or below the analysis threshold."""


def _chance_check(predictions: pd.DataFrame) -> dict:
    """``balanced_accuracy_low`` and ``above_chance`` by the analysis' rule (its default
    resamples, interval and threshold), with a warning when the model is not above chance."""
    import config
    import verdicts

    settings = config.AnalysisConfig()
    record, _ = summarize_predictions(predictions, n_resamples=settings.bootstrap_resamples,
                                      ci=settings.ci, min_group_size=0)
    low, threshold = record["balanced_accuracy_low"], settings.min_balanced_accuracy
    above = verdicts.is_above_chance(low, threshold)
    if not above:
        warnings.warn(NOT_ABOVE_CHANCE.format(estimate=record["balanced_accuracy"], low=low,
                                              ci=settings.ci, threshold=threshold),
                      NotAboveChanceWarning, stacklevel=3)
    return {"balanced_accuracy_low": low, "above_chance": above}


def compute_fairness_metrics(model, loader, sensitive_attr="gender", device=None,
                             min_group_size=30) -> dict:
    """Run `model` over `loader` and return its accuracy and fairness metrics (for notebooks).

    `sensitive_attr`: a metadata column (`gender`, `age`, `race`, ...) or a list of them for
    intersectional groups. `device`: None picks CUDA when available, else CPU. Returns the
    overall metrics, demographic_parity, equalized_odds, equal_opportunity, predictive_equality,
    disparate_impact, di_flag, worst_group_accuracy, accuracy_gap, between_group_entropy_index,
    n_groups_used, per_group (group_table), predictions (the per-sample table) and model_size_mb.
    Point estimates, except `balanced_accuracy_low` and `above_chance`: the analysis' chance rule
    (`NotAboveChanceWarning` when the model fails it); use summarize_predictions on `predictions`
    for intervals. The model
    comes back in the train/eval mode (per module) and on the device it was given in. Raises
    TypeError for a model that is not an nn.Module or a loader that is not a DataLoader, and
    ValueError for a meta-device model, images the model's first layer cannot take, or a
    missing sensitive attribute.
    """
    import torch

    import evaluation

    _check_loader(loader)
    attributes = _sensitive_frame(loader, sensitive_attr)
    check_model(model)
    check_images(model, loader)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    modes = {module: module.training for module in model.modules()}
    home = next((t.device for t in [*model.parameters(), *model.buffers()]), None)
    try:
        predictions = evaluation.predict(model, loader, device=device)
    finally:
        if home is not None:
            model.to(home)
        for module, training in modes.items():
            module.train(training)
    groups = attributes.loc[predictions["sample_id"]]
    y_true, y_pred = predictions["y_true"].to_numpy(), predictions["y_pred"].to_numpy()
    table = group_table(y_true, y_pred, sensitive_features=groups, min_group_size=min_group_size)
    gaps = fairness_gaps(table)
    result = overall_metrics(y_true, y_pred)
    result.update({NOTEBOOK_NAMES.get(name, name): value for name, value in gaps.items()})
    result.update(_chance_check(predictions))
    result.update(
        di_flag=_di_flag(gaps["disparate_impact"]),
        between_group_entropy_index=between_group_entropy_index(y_true, y_pred,
                                                                sensitive_features=groups),
        per_group=table, predictions=predictions,
        model_size_mb=float(evaluation.model_size_mib(model)))
    return result
