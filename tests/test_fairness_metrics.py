"""Tests for fairness_metrics: parity with fairlearn and AIF360, hand-worked cases, statistics."""
import math
import subprocess
import sys
import types

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, balanced_accuracy_score

import fairness_metrics as fm
import resampling

TOL = 1e-9


def random_predictions(n=600, seed=0, n_attributes=1):
    """Labels and predictions whose rates differ by group, with numeric attribute columns."""
    rng = np.random.default_rng(seed)
    attributes = pd.DataFrame({f"a{i}": rng.integers(0, 2, n) for i in range(n_attributes)})
    shift = attributes.sum(axis=1).to_numpy() * 0.1
    y_true = (rng.random(n) < 0.4 + shift).astype(int)
    y_pred = np.where(rng.random(n) < 0.75 + shift / 2, y_true, 1 - y_true)
    return y_true, y_pred, attributes


def prediction_table(y_true, y_pred, groups, prefix="s"):
    return pd.DataFrame({"sample_id": [f"{prefix}{i}" for i in range(len(y_true))],
                         "y_true": y_true, "y_pred": y_pred,
                         "score": np.where(y_pred == 1, 0.8, 0.2), "group": groups})


# ---------------------------------------------------------------- hand-worked example

HAND_TRUE = [1, 1, 0, 0, 1, 1, 0, 0]
HAND_PRED = [1, 0, 0, 0, 1, 1, 1, 1]
HAND_GROUPS = ["A"] * 4 + ["B"] * 4


def test_hand_worked_group_table_and_gaps():
    table = fm.group_table(HAND_TRUE, HAND_PRED, sensitive_features=HAND_GROUPS, min_group_size=5)
    # A: tp=1 fn=1 tn=2 fp=0;  B: tp=2 fn=0 tn=0 fp=2
    assert table.loc["A", ["accuracy", "selection_rate", "tpr", "fpr"]].tolist() == [
        0.75, 0.25, 0.5, 0.0]
    assert table.loc["B", ["accuracy", "selection_rate", "tpr", "fpr"]].tolist() == [
        0.5, 1.0, 1.0, 1.0]
    assert table[["n", "n_pos", "n_neg"]].to_numpy().tolist() == [[4, 2, 2], [4, 2, 2]]
    assert table["small_group"].all()
    gaps = fm.fairness_gaps(table)
    assert gaps == {"dp_gap": 0.75, "eop_gap": 0.5, "pe_gap": 1.0, "eo_gap": 1.0,
                    "disparate_impact": 0.25, "worst_group_accuracy": 0.5,
                    "accuracy_gap": 0.25, "n_groups_used": 2}
    assert fm.overall_metrics(HAND_TRUE, HAND_PRED) == {
        "accuracy": 0.625, "selection_rate": 0.625, "tpr": 0.75, "fpr": 0.5,
        "balanced_accuracy": 0.625}


def test_hand_worked_between_group_entropy():
    # group mean benefits 0.75 (A) and 1.5 (B), mean 1.125: GE(2) = ((4/9 + 16/9) / 2 - 1) / 2
    value = fm.between_group_entropy_index(HAND_TRUE, HAND_PRED, sensitive_features=HAND_GROUPS)
    assert value == pytest.approx(1 / 18, abs=TOL)


def test_intersectional_labels_join_attribute_columns_in_order():
    frame = pd.DataFrame({"gender": ["Female", "Male"], "age": ["Old", "Young"]})
    assert fm.intersectional_labels(frame).tolist() == ["Female/Old", "Male/Young"]
    assert fm.intersectional_labels(np.array([[1, 0], [0, 1]])).tolist() == ["1/0", "0/1"]
    assert fm.intersectional_labels(pd.Series([3, 4])).tolist() == ["3", "4"]


# ---------------------------------------------------------------- parity with fairlearn

@pytest.mark.parametrize("n_attributes", [1, 2, 3])
def test_matches_fairlearn(n_attributes):
    from fairlearn import metrics as flm

    y_true, y_pred, attributes = random_predictions(seed=n_attributes, n_attributes=n_attributes)
    table = fm.group_table(y_true, y_pred, sensitive_features=attributes)
    frame = flm.MetricFrame(
        metrics={"accuracy": accuracy_score, "selection_rate": flm.selection_rate,
                 "tpr": flm.true_positive_rate, "fpr": flm.false_positive_rate,
                 "n": flm.count},
        y_true=y_true, y_pred=y_pred, sensitive_features=attributes)
    by_group = frame.by_group
    by_group.index = ["/".join(map(str, np.atleast_1d(key))) for key in by_group.index]
    assert len(table) == 2 ** n_attributes
    for column in ["accuracy", "selection_rate", "tpr", "fpr", "n"]:
        np.testing.assert_allclose(table[column], by_group.loc[table.index, column], atol=TOL)

    gaps = fm.fairness_gaps(table)
    kwargs = dict(sensitive_features=attributes)
    assert gaps["dp_gap"] == pytest.approx(
        flm.demographic_parity_difference(y_true, y_pred, **kwargs), abs=TOL)
    assert gaps["disparate_impact"] == pytest.approx(
        flm.demographic_parity_ratio(y_true, y_pred, **kwargs), abs=TOL)
    assert gaps["eo_gap"] == pytest.approx(
        flm.equalized_odds_difference(y_true, y_pred, **kwargs), abs=TOL)
    assert gaps["eop_gap"] == pytest.approx(
        flm.equal_opportunity_difference(y_true, y_pred, **kwargs), abs=TOL)
    assert gaps["pe_gap"] == pytest.approx(
        flm.false_positive_rate_difference(y_true, y_pred, **kwargs), abs=TOL)
    assert gaps["worst_group_accuracy"] == pytest.approx(frame.group_min()["accuracy"], abs=TOL)
    assert gaps["accuracy_gap"] == pytest.approx(frame.difference()["accuracy"], abs=TOL)

    overall = fm.overall_metrics(y_true, y_pred)
    assert overall["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=TOL)
    assert overall["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(y_true, y_pred), abs=TOL)
    assert overall["selection_rate"] == pytest.approx(flm.selection_rate(y_true, y_pred), abs=TOL)
    assert overall["tpr"] == pytest.approx(flm.true_positive_rate(y_true, y_pred), abs=TOL)
    assert overall["fpr"] == pytest.approx(flm.false_positive_rate(y_true, y_pred), abs=TOL)


def test_fairlearn_style_functions_follow_the_spec_table():
    from fairlearn import metrics as flm

    y_true, y_pred, attributes = random_predictions(seed=7, n_attributes=2)
    kwargs = dict(sensitive_features=attributes)
    pairs = [(fm.demographic_parity_difference, flm.demographic_parity_difference),
             (fm.demographic_parity_ratio, flm.demographic_parity_ratio),
             (fm.equalized_odds_difference, flm.equalized_odds_difference),
             (fm.equal_opportunity_difference, flm.equal_opportunity_difference),
             (fm.predictive_equality_difference, flm.false_positive_rate_difference),
             (fm.accuracy_difference, flm.accuracy_score_difference),
             (fm.worst_group_accuracy, flm.accuracy_score_group_min)]
    for ours, theirs in pairs:
        assert ours(y_true, y_pred, **kwargs) == pytest.approx(
            theirs(y_true, y_pred, **kwargs), abs=TOL), ours.__name__
    assert fm.demographic_parity_difference.__name__ == "demographic_parity_difference"


# ---------------------------------------------------------------- parity with AIF360

def aif360_metric(y_true, y_pred, attributes, privileged, unprivileged):
    with fm._quiet_aif360():
        from aif360.datasets import BinaryLabelDataset
        from aif360.metrics import ClassificationMetric

        truth = BinaryLabelDataset(df=attributes.assign(label=y_true), label_names=["label"],
                                   protected_attribute_names=list(attributes.columns),
                                   favorable_label=1, unfavorable_label=0)
        predicted = truth.copy()
        predicted.labels = np.asarray(y_pred, dtype=float).reshape(-1, 1)
        return ClassificationMetric(truth, predicted, privileged_groups=[privileged],
                                    unprivileged_groups=[unprivileged])


def as_condition(label, attributes):
    return {name: int(value) for name, value in zip(attributes.columns, label.split("/"))}


@pytest.mark.parametrize("n_attributes", [1, 2])
def test_matches_aif360_on_the_max_min_pair(n_attributes):
    y_true, y_pred, attributes = random_predictions(seed=10 + n_attributes,
                                                    n_attributes=n_attributes)
    table = fm.group_table(y_true, y_pred, sensitive_features=attributes)
    gaps = fm.fairness_gaps(table)

    def pair_metric(rate):  # AIF360 compares two groups: the lowest (unprivileged) vs highest
        low, high = table[rate].idxmin(), table[rate].idxmax()
        return aif360_metric(y_true, y_pred, attributes, as_condition(high, attributes),
                             as_condition(low, attributes))

    assert -pair_metric("selection_rate").statistical_parity_difference() == pytest.approx(
        gaps["dp_gap"], abs=TOL)
    assert pair_metric("selection_rate").disparate_impact() == pytest.approx(
        gaps["disparate_impact"], abs=TOL)
    assert -pair_metric("tpr").equal_opportunity_difference() == pytest.approx(
        gaps["eop_gap"], abs=TOL)
    assert -pair_metric("fpr").false_positive_rate_difference() == pytest.approx(
        gaps["pe_gap"], abs=TOL)


def test_between_group_entropy_matches_aif360_two_groups_and_formula():
    y_true, y_pred, attributes = random_predictions(seed=3, n_attributes=1)
    metric = aif360_metric(y_true, y_pred, attributes, {"a0": 1}, {"a0": 0})
    ours = fm.between_group_entropy_index(y_true, y_pred, sensitive_features=attributes)
    assert ours == pytest.approx(metric.between_group_generalized_entropy_index(), abs=TOL)

    y_true, y_pred, attributes = random_predictions(seed=4, n_attributes=2)
    labels = fm.intersectional_labels(attributes)
    benefit = pd.Series(y_pred - y_true + 1.0).groupby(labels).transform("mean").to_numpy()
    expected = np.mean((benefit / benefit.mean()) ** 2 - 1) / 2
    ours = fm.between_group_entropy_index(y_true, y_pred, sensitive_features=attributes)
    assert ours == pytest.approx(expected, abs=TOL)
    assert ours > 0


def test_aif360_import_noise_stays_out_of_the_root_logger(caplog):
    fm.between_group_entropy_index(HAND_TRUE, HAND_PRED, sensitive_features=HAND_GROUPS)
    assert not [r for r in caplog.records if "tensorflow" in r.getMessage()]


# ---------------------------------------------------------------- undefined rates, small groups

def test_group_without_positives_gives_nan_and_a_warning_naming_it():
    y_true = [1, 0, 1, 0, 0, 0, 1, 0]
    y_pred = [1, 0, 0, 0, 1, 0, 1, 1]
    groups = ["A", "A", "B", "B", "NoPos", "NoPos", "C", "C"]
    with pytest.warns(fm.UndefinedRateWarning, match="NoPos") as record:
        table = fm.group_table(y_true, y_pred, sensitive_features=groups)
    assert str(record[0].message) == fm.UNDEFINED_RATE.format(
        groups=["NoPos"], missing="positives", rate="TPR", used=3, total=4)
    assert np.isnan(table.loc["NoPos", "tpr"])
    assert table.loc["NoPos", "fpr"] == 0.5
    gaps = fm.fairness_gaps(table)
    assert gaps["eop_gap"] == 1.0 - 0.0  # TPRs of A, B, C: 1, 0, 1 -> NoPos skipped
    assert gaps["dp_gap"] == 1.0  # selection rates 0.5, 0, 0.5, 1 include NoPos
    assert gaps["n_groups_used"] == 3


def test_small_groups_are_flagged_but_kept():
    y_true, y_pred, _ = random_predictions(n=100, seed=2)
    groups = np.where(np.arange(100) < 10, "tiny", "big")
    table = fm.group_table(y_true, y_pred, sensitive_features=groups, min_group_size=30)
    assert table["small_group"].to_dict() == {"big": False, "tiny": True}
    assert fm.fairness_gaps(table)["n_groups_used"] == 2


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("call, message", [
    (lambda: fm.group_table([1, 0, 1], [1, 0], sensitive_features=["a"] * 3),
     fm.LENGTH_MISMATCH.format(name="y_pred", got=2, expected=3)),
    (lambda: fm.group_table([1, 0], [1, 0], sensitive_features=["a"] * 3),
     fm.LENGTH_MISMATCH.format(name="sensitive_features", got=3, expected=2)),
    (lambda: fm.group_table([1, 2, 0], [1, 0, 0], sensitive_features=["a"] * 3),
     fm.NOT_BINARY.format(name="y_true", values=[2])),
    (lambda: fm.group_table([1, 0], ["yes", "no"], sensitive_features=["a"] * 2),
     fm.NOT_BINARY.format(name="y_pred", values=["no", "yes"])),
    (lambda: fm.group_table([], [], sensitive_features=[]), fm.EMPTY_INPUT.format(name="y_true")),
    (lambda: fm.group_table([1, 0], [1, 0], sensitive_features=["a", None]),
     fm.MISSING_GROUP.format(count=1)),
    (lambda: fm.group_table([1, 0], [1, 0], sensitive_features=["a", "b"], min_group_size=-1),
     fm.BAD_MIN_GROUP_SIZE.format(n=-1)),
    (lambda: fm.group_table([1], [1], sensitive_features=np.zeros((1, 1, 1))),
     fm.BAD_SENSITIVE_SHAPE.format(ndim=3)),
    (lambda: fm.bootstrap_ci([1, 0], [1, 0], sensitive_features=["a", "b"], ci=95),
     fm.BAD_CI.format(ci=95)),
    (lambda: fm.bootstrap_ci([1, 0], [1, 0], sensitive_features=["a", "b"], n_resamples=0),
     fm.BAD_RESAMPLES.format(n=0)),
    (lambda: fm.paired_bootstrap([0, 1], [0, 1], [0, 1], sensitive_features=["a", "b"],
                                 n_permutations=0), fm.BAD_PERMUTATIONS.format(n=0)),
    (lambda: fm.holm([0.2, 1.5]), fm.BAD_P_VALUES.format(values=[1.5])),
    (lambda: fm.cohens_d([1.0], [1.0, 2.0]), fm.TOO_FEW_RUNS.format(name="a", n=1)),
])
def test_bad_input_raises_the_documented_message(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert str(error.value) == message


def test_prediction_table_errors():
    pred = prediction_table([1, 0, 1, 0], [1, 0, 0, 0], ["a", "a", "b", "b"])
    with pytest.raises(ValueError) as error:
        fm.summarize_predictions(pred.drop(columns="group"))
    assert str(error.value) == fm.MISSING_COLUMNS.format(
        name="pred", missing=["group"], required=list(fm.REQUIRED_COLUMNS))

    with pytest.raises(ValueError) as error:
        fm.summarize_predictions(pd.concat([pred, pred.iloc[:1]]))
    assert str(error.value) == fm.DUPLICATE_IDS.format(name="pred", count=1, example="s0")

    other = pred.assign(sample_id=["s0", "s1", "s2", "x9"])
    with pytest.raises(ValueError) as error:
        fm.summarize_predictions(pred, reference=other, n_resamples=10)
    assert str(error.value) == fm.SAMPLE_MISMATCH.format(
        only_pred=1, only_ref=1, example_pred=["s3"], example_ref=["x9"])

    relabeled = pred.assign(y_true=[1, 1, 1, 0])
    with pytest.raises(ValueError) as error:
        fm.summarize_predictions(pred, reference=relabeled, n_resamples=10)
    assert str(error.value) == fm.LABEL_MISMATCH.format(count=1, example="s1")


# ---------------------------------------------------------------- bootstrap

def test_resampling_keeps_group_sizes_and_matches_index_resampling():
    y_true, y_pred, attributes = random_predictions(n=400, seed=5, n_attributes=2)
    _, _, names, codes = fm._prepare(y_true, y_pred, attributes)
    counts = fm.cell_counts(codes, len(names), y_true, y_pred)
    resampled = resampling.resample_counts(counts, 3000, np.random.default_rng(0))
    assert (resampled.sum(axis=2) == counts.sum(axis=1)).all()

    # the multinomial shortcut must give the distribution of explicit per-group index resampling
    rng = np.random.default_rng(1)
    members = [np.flatnonzero(codes == g) for g in range(len(names))]
    explicit = []
    for _ in range(3000):
        rows = np.concatenate([rng.choice(m, size=m.size) for m in members])
        explicit.append(np.mean(y_true[rows] == y_pred[rows]))
    shortcut = fm._summary(resampled)["accuracy"]
    assert np.mean(shortcut) == pytest.approx(np.mean(explicit), abs=0.002)
    assert np.std(shortcut) == pytest.approx(np.std(explicit), rel=0.1)


def test_bootstrap_ci_is_seeded_and_brackets_the_estimate():
    y_true, y_pred, attributes = random_predictions(seed=6, n_attributes=2)
    first = fm.bootstrap_ci(y_true, y_pred, sensitive_features=attributes, n_resamples=300)
    again = fm.bootstrap_ci(y_true, y_pred, sensitive_features=attributes, n_resamples=300)
    other = fm.bootstrap_ci(y_true, y_pred, sensitive_features=attributes, n_resamples=300,
                            seed=1)
    pd.testing.assert_frame_equal(first, again)
    assert not np.allclose(first["low"], other["low"])
    overall = first[first["group"] == fm.OVERALL].set_index("metric")
    assert list(overall.index) == list(fm.METRICS)
    assert (overall["low"] < overall["high"]).all()
    assert overall.loc["accuracy", "estimate"] == pytest.approx(accuracy_score(y_true, y_pred))
    per_group = first[first["group"] != fm.OVERALL]
    assert set(per_group["metric"]) == set(fm.GROUP_RATES)
    assert ((per_group["low"] <= per_group["estimate"])
            & (per_group["estimate"] <= per_group["high"])).all()


def test_bootstrap_interval_covers_the_truth_at_its_nominal_rate():
    true_selection = {"A": 0.3, "B": 0.55}
    rng = np.random.default_rng(123)
    groups = np.repeat(["A", "B"], 150)
    covered = {"selection_rate": 0, "dp_gap": 0}
    n_datasets = 200
    for seed in range(n_datasets):
        y_pred = (rng.random(groups.size) < np.vectorize(true_selection.get)(groups)).astype(int)
        intervals = fm.bootstrap_ci(rng.integers(0, 2, groups.size), y_pred,
                                    sensitive_features=groups, n_resamples=300, ci=0.9,
                                    seed=seed).set_index(["group", "metric"])
        truths = {"selection_rate": np.mean(list(true_selection.values())),
                  "dp_gap": true_selection["B"] - true_selection["A"]}
        for metric, truth in truths.items():
            low, high = intervals.loc[(fm.OVERALL, metric), ["low", "high"]]
            covered[metric] += low <= truth <= high
    for metric, hits in covered.items():
        assert 0.83 <= hits / n_datasets <= 0.96, (metric, hits)


def simulate_pair(seed, n=2000, harm=0.0):
    """FP32 and quantized predictions with the same accuracy per group, unless `harm` makes the
    quantized model miss that share of group B's positives."""
    rng = np.random.default_rng(seed)
    groups = rng.choice(["A", "B"], n)
    y_true = rng.integers(0, 2, n)
    p_right = np.where(groups == "A", 0.85, 0.8)
    reference_right = rng.random(n) < p_right
    redraw = rng.random(n) < 0.1  # the quantized model re-decides 10% of samples
    model_right = np.where(redraw, rng.random(n) < p_right, reference_right)
    model_right &= ~((groups == "B") & (y_true == 1) & (rng.random(n) < harm))
    reference = np.where(reference_right, y_true, 1 - y_true)
    model = np.where(model_right, y_true, 1 - y_true)
    return y_true, model, reference, groups


def test_paired_bootstrap_detects_a_planted_change():
    y_true, model, reference, groups = simulate_pair(seed=0, harm=0.15)
    result = fm.paired_bootstrap(y_true, model, reference, sensitive_features=groups,
                                 n_resamples=1000).set_index(["group", "metric"])
    assert result.loc[("B", "accuracy"), "p"] < 0.05
    assert result.loc[("B", "accuracy"), "high"] < 0
    assert result.loc[(fm.OVERALL, "eop_gap"), "p"] < 0.05
    assert result.loc[(fm.OVERALL, "eop_gap"), "delta"] > 0  # quantization widened the gap
    assert result.loc[("A", "accuracy"), "p"] > 0.05


def test_paired_bootstrap_stays_quiet_without_a_change():
    quiet = []
    for seed in range(20):
        y_true, model, reference, groups = simulate_pair(seed=seed)
        result = fm.paired_bootstrap(y_true, model, reference, sensitive_features=groups,
                                     n_resamples=400, seed=seed).set_index(["group", "metric"])
        quiet.append(result.loc[[(fm.OVERALL, "accuracy"), (fm.OVERALL, "dp_gap"),
                                 ("B", "accuracy")], "p"].to_numpy() > 0.05)
    assert np.mean(quiet, axis=0).min() >= 0.8


def test_paired_bootstrap_of_identical_models_is_zero_with_p_one():
    y_true, y_pred, attributes = random_predictions(seed=8)
    result = fm.paired_bootstrap(y_true, y_pred, y_pred, sensitive_features=attributes,
                                 n_resamples=50)
    assert (result[["delta", "low", "high"]] == 0).all().all()
    assert (result["p"] == 1).all()


def exchangeable_pair(seed, n=2000, drop=0.0):
    """Two models that draw each sample's prediction from the same sample-specific probability
    (exchangeable: the exact null of the swap test), 4 groups at CelebA-like shares; `drop`
    removes that share of the model's positive predictions in the smallest group."""
    rng = np.random.default_rng(seed)
    groups = rng.choice(["FO", "FY", "MO", "MY"], n, p=[0.09, 0.49, 0.13, 0.29])
    y_true = rng.integers(0, 2, n)
    logit = np.select([groups == "FO", groups == "MY"], [-0.2, 0.2], 0.0) \
        + 2.0 * (2 * y_true - 1) + 1.5 * rng.standard_normal(n)
    q = 1 / (1 + np.exp(-logit))
    reference, model = (rng.random((2, n)) < q).astype(int)
    model[(groups == "FO") & (model == 1) & (rng.random(n) < drop)] = 0
    return y_true, model, reference, groups


SIZE_SEEDS = range(300)


def test_paired_test_holds_its_size_under_an_exact_null():
    rejected = []
    for seed in SIZE_SEEDS:
        y_true, model, reference, groups = exchangeable_pair(seed)
        p = fm.paired_bootstrap(y_true, model, reference, sensitive_features=groups,
                                n_resamples=200, seed=seed).set_index(["group", "metric"])["p"]
        rejected.append([p[(fm.OVERALL, m)] <= 0.05 for m in ("dp_gap", "eo_gap", "accuracy")])
    # 300 draws: a 5% test rejects 15 +- 3.8 times; the old bootstrap p rejected 0-2%
    assert np.all(np.abs(np.mean(rejected, axis=0) - 0.05) <= 0.03), np.mean(rejected, axis=0)


def test_paired_test_detects_a_planted_drop_in_the_smallest_group():
    detected = [fm.paired_bootstrap(*exchangeable_pair(seed, drop=0.5)[:3],
                                    sensitive_features=exchangeable_pair(seed)[3],
                                    n_resamples=200, seed=seed)
                .set_index(["group", "metric"]).loc[(fm.OVERALL, "dp_gap"), "p"] <= 0.05
                for seed in range(20)]
    assert np.mean(detected) >= 0.9


def test_swap_shortcut_matches_explicit_per_sample_swaps():
    y_true, model, reference, groups = exchangeable_pair(3, n=400)
    names, codes = np.unique(groups, return_inverse=True)
    joint = fm.cell_counts(codes, len(names), y_true, reference, model)
    keys, _ = fm.paired_deltas(joint, names)
    column = keys.index((fm.OVERALL, "dp_gap"))
    permuted = resampling.swap_discordant(joint, 4000, np.random.default_rng(0))
    shortcut = fm.paired_deltas(permuted, names)[1]
    onehot = np.eye(len(names))[codes] / np.bincount(codes)  # per-group selection-rate weights
    swap = np.random.default_rng(1).random((4000, y_true.size)) < 0.5
    m, r = np.where(swap, reference, model), np.where(swap, model, reference)
    explicit = np.ptp(m @ onehot, axis=1) - np.ptp(r @ onehot, axis=1)
    swapped = resampling.swap_discordant(joint, 50, np.random.default_rng(2))
    assert (swapped.reshape(50, -1, 4).sum(axis=2) == joint.reshape(-1, 4).sum(axis=1)).all()
    assert np.mean(shortcut[:, column]) == pytest.approx(np.mean(explicit), abs=0.002)
    assert np.std(shortcut[:, column]) == pytest.approx(np.std(explicit), rel=0.08)


def test_swap_p_counts_the_observed_arrangement():
    null = np.array([[-0.2, np.nan], [0.1, np.nan], [0.3, np.nan], [-0.05, np.nan]])
    # |d| = 0.1: 3 of 4 permuted |d*| reach it -> (1 + 3) / (1 + 4); no finite d* -> NaN
    np.testing.assert_allclose(fm.swap_p(null, [0.1, 0.2]), [0.8, np.nan])


def test_tost_says_equivalent_for_a_true_zero_only_with_enough_samples():
    def p_equivalent(n, seed):
        y_true, model, reference, groups = exchangeable_pair(seed, n=n)
        frame = fm.paired_bootstrap(y_true, model, reference, sensitive_features=groups,
                                    n_resamples=400, seed=seed, margins={"accuracy": 0.02})
        return frame.set_index(["group", "metric"]).loc[(fm.OVERALL, "accuracy"),
                                                        "p_equivalent"]
    assert all(p_equivalent(20_000, seed) <= 0.05 for seed in range(3))
    assert all(p_equivalent(60, seed) > 0.05 for seed in range(3))


def test_tost_and_interval_agree_by_hand():
    samples = np.linspace(-0.01, 0.03, 401)[:, None]  # a bootstrap spread 0.04 wide about 0.01
    low, high = fm.bootstrap_interval(samples, np.array([0.01]), 0.90)
    assert (low[0], high[0]) == pytest.approx((-0.008, 0.028))
    # the 90% interval lies inside +-0.03, so TOST at 0.05 passes; not inside +-0.02
    assert fm.bootstrap_tost(samples, np.array([0.01]), 0.03)[0] <= 0.05
    assert fm.bootstrap_tost(samples, np.array([0.01]), 0.02)[0] > 0.05


# ---------------------------------------------------------------- paired tests, effect sizes

@pytest.mark.parametrize("seed", range(4))
def test_mcnemar_matches_binomtest_on_discordant_pairs(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 2, 80)
    reference = np.where(rng.random(80) < 0.8, y_true, 1 - y_true)
    model = np.where(rng.random(80) < 0.15 * (seed + 1), 1 - reference, reference)
    worse = np.sum((reference == y_true) & (model != y_true))
    better = np.sum((reference != y_true) & (model == y_true))
    expected = stats.binomtest(int(worse), int(worse + better), 0.5).pvalue
    assert fm.mcnemar_exact(y_true, model, reference) == pytest.approx(expected, abs=TOL)


def test_mcnemar_without_discordance_is_one():
    assert fm.mcnemar_exact([1, 0, 1], [1, 1, 1], [1, 1, 1]) == 1.0


def test_flip_rates_overall_and_per_group():
    rates = fm.flip_rates([1, 0, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0],
                          sensitive_features=["a", "a", "a", "b", "b", "b"])
    assert rates.to_dict() == {fm.OVERALL: 2 / 6, "a": 1 / 3, "b": 1 / 3}


def test_cohens_d_and_hedges_g_by_hand():
    a, b = [1.0, 2.0, 3.0], [2.0, 3.0, 4.0]  # both SD 1, means differ by -1
    assert fm.cohens_d(a, b) == pytest.approx(-1.0, abs=TOL)
    correction = math.gamma(2) / (math.sqrt(2) * math.gamma(1.5))  # df = 4
    assert fm.hedges_g(a, b) == pytest.approx(-correction, abs=TOL)
    assert fm.hedges_g(a, b) == pytest.approx(-(1 - 3 / (4 * 4 - 1)), abs=0.01)
    assert fm.cohens_d([0.0, 2.0, 1.0, 3.0], [0.0, 0.0]) == pytest.approx(
        1.5 / math.sqrt((3 * np.var([0, 2, 1, 3], ddof=1)) / 4), abs=TOL)


def test_holm_and_benjamini_hochberg_pass_nan_through():
    p = [0.01, 0.04, 0.03, np.nan, 0.005]
    # Holm over m=4: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, max(0.04,
    # 0.06)
    np.testing.assert_allclose(fm.holm(p), [0.03, 0.06, 0.06, np.nan, 0.02], atol=TOL)
    # BH: 0.005*4/1, 0.01*4/2, 0.03*4/3, 0.04*4/4 -> step-up minimum 0.02, 0.02, 0.04, 0.04
    np.testing.assert_allclose(fm.benjamini_hochberg(p), [0.02, 0.04, 0.04, np.nan, 0.02],
                               atol=TOL)
    rng = np.random.default_rng(0)
    many = rng.random(30) ** 3
    np.testing.assert_allclose(fm.benjamini_hochberg(many), stats.false_discovery_control(many),
                               atol=TOL)
    assert fm.holm([0.5, 0.9]).tolist() == [1.0, 1.0]


# ---------------------------------------------------------------- summarize_predictions

def test_summarize_predictions_record_and_long_table():
    y_true, y_pred, attributes = random_predictions(n=800, seed=9, n_attributes=2)
    labels = fm.intersectional_labels(attributes)
    pred = prediction_table(y_true, y_pred, labels)
    record, per_group = fm.summarize_predictions(pred, n_resamples=200, min_group_size=250)
    table = fm.group_table(y_true, y_pred, sensitive_features=labels)
    gaps = fm.fairness_gaps(table)
    for metric in fm.METRICS:
        assert record[f"{metric}_low"] <= record[metric] <= record[f"{metric}_high"], metric
    for gap in fm.GAP_SPECS:
        assert record[gap] == pytest.approx(gaps[gap], abs=TOL)
    assert record["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=TOL)
    assert record["di_flag"] == (gaps["disparate_impact"] < 0.8)
    assert record["n_groups_used"] == 4
    assert not any(key.startswith("delta_") for key in record)
    assert list(per_group.columns) == ["group", "metric", "value"]
    assert set(per_group["group"]) == set(table.index)
    long = per_group.set_index(["group", "metric"])["value"]
    assert long.index.is_unique
    for group, row in table.iterrows():
        assert long[(group, "n")] == row["n"]
        assert long[(group, "tpr")] == pytest.approx(row["tpr"], abs=TOL)
        assert long[(group, "small_group")] == float(row["n"] < 250)
        assert long[(group, "accuracy_low")] <= row["accuracy"] <= long[(group, "accuracy_high")]


def test_summarize_predictions_with_reference_aligns_on_sample_id():
    y_true, model, reference, groups = simulate_pair(seed=1, n=600, harm=0.2)
    pred = prediction_table(y_true, model, groups)
    ref = prediction_table(y_true, reference, groups).sample(frac=1.0, random_state=0)
    record, per_group = fm.summarize_predictions(pred, reference=ref, n_resamples=300)
    ref_record, _ = fm.summarize_predictions(ref, n_resamples=10)
    assert record["delta_accuracy"] == pytest.approx(
        record["accuracy"] - ref_record["accuracy"], abs=TOL)
    assert record["delta_eo_gap"] == pytest.approx(record["eo_gap"] - ref_record["eo_gap"],
                                                   abs=TOL)
    assert record["flip_rate"] == pytest.approx(np.mean(model != reference), abs=TOL)
    assert record["mcnemar_p"] == pytest.approx(fm.mcnemar_exact(y_true, model, reference))
    for metric in fm.METRICS:
        assert 0 <= record[f"delta_{metric}_p"] <= 1
    long = per_group.set_index(["group", "metric"])["value"]
    in_b = groups == "B"
    assert long[("B", "flip_rate")] == pytest.approx(np.mean(model[in_b] != reference[in_b]))
    assert long[("B", "mcnemar_p")] == pytest.approx(
        fm.mcnemar_exact(y_true[in_b], model[in_b], reference[in_b]))
    assert long[("B", "delta_accuracy")] == pytest.approx(
        np.mean(model[in_b] == y_true[in_b]) - np.mean(reference[in_b] == y_true[in_b]))
    assert long[("B", "delta_accuracy_p")] < 0.05


INTERVAL_KEYS = ("_low", "_high", "_p", "_p_equivalent")


def test_summarize_predictions_without_resamples_gives_the_same_point_estimates_only():
    y_true, model, reference, groups = simulate_pair(seed=4, n=500, harm=0.1)
    pred, ref = prediction_table(y_true, model, groups), prediction_table(y_true, reference, groups)
    full, full_groups = fm.summarize_predictions(pred, reference=ref, n_resamples=50,
                                                 margins={"accuracy": 0.02})
    point, point_groups = fm.summarize_predictions(pred, reference=ref, n_resamples=0)
    kept = {k: v for k, v in full.items() if not k.endswith(INTERVAL_KEYS) and k != "mcnemar_p"}
    assert point.keys() == kept.keys()
    assert point == pytest.approx(kept, nan_ok=True)
    assert not any(k.endswith(INTERVAL_KEYS) or k == "mcnemar_p" for k in point)
    long = full_groups.set_index(["group", "metric"])["value"]
    metrics = set(point_groups["metric"])
    assert metrics == {m for m in full_groups["metric"]
                       if not m.endswith(INTERVAL_KEYS) and m != "mcnemar_p"}
    assert point_groups.set_index(["group", "metric"])["value"].to_dict() == pytest.approx(
        long[long.index.get_level_values("metric").isin(metrics)].to_dict(), nan_ok=True)


def test_summarize_predictions_rejects_a_negative_or_missing_resample_count():
    pred = prediction_table(*random_predictions(n=50, seed=0, n_attributes=1)[:2],
                            np.array(["a", "b"] * 25))
    for bad in (-1, None):
        with pytest.raises(ValueError, match="summarize_predictions also takes 0"):
            fm.summarize_predictions(pred, n_resamples=bad)


# ---------------------------------------------------------------- notebook wrapper

class TinyDataset:
    def __init__(self, metadata):
        self.metadata = metadata


@pytest.fixture
def stub_evaluation(monkeypatch):
    """A stand-in for evaluation.py that returns a fixed prediction table and records its calls."""
    y_true, y_pred, _ = random_predictions(n=120, seed=11)
    rng = np.random.default_rng(11)
    metadata = pd.DataFrame({
        "sample_id": [f"img{i}.jpg" for i in range(120)], "split": "test", "target": y_true,
        "gender": rng.choice(["Female", "Male"], 120), "age": rng.choice(["Old", "Young"], 120),
        "race": rng.choice(["r1", "r2", "r3"], 120)})
    metadata["group"] = metadata["gender"] + "/" + metadata["age"]
    predictions = prediction_table(y_true, y_pred, metadata["group"], prefix="img").assign(
        sample_id=metadata["sample_id"]).iloc[::-1]  # a different row order than the metadata
    calls = []
    module = types.ModuleType("evaluation")
    module.predict = lambda model, loader, device="cpu": calls.append(device) or predictions
    module.model_size_mib = lambda model: 1.25
    monkeypatch.setitem(sys.modules, "evaluation", module)
    return types.SimpleNamespace(loader=types.SimpleNamespace(dataset=TinyDataset(metadata)),
                                 metadata=metadata, calls=calls)


@pytest.mark.torch
def test_compute_fairness_metrics_on_intersectional_attributes(stub_evaluation):
    import torch
    from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

    result = fm.compute_fairness_metrics(torch.nn.Linear(2, 2), stub_evaluation.loader,
                                         sensitive_attr=["race", "gender"], min_group_size=5)
    assert stub_evaluation.calls == ["cuda" if torch.cuda.is_available() else "cpu"]
    metadata = stub_evaluation.metadata
    y_true = metadata["target"].to_numpy()
    y_pred = result["predictions"].set_index("sample_id").loc[metadata["sample_id"], "y_pred"]
    sensitive = metadata[["race", "gender"]]
    assert result["demographic_parity"] == pytest.approx(
        demographic_parity_difference(y_true, y_pred, sensitive_features=sensitive), abs=TOL)
    assert result["equalized_odds"] == pytest.approx(
        equalized_odds_difference(y_true, y_pred, sensitive_features=sensitive), abs=TOL)
    assert result["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=TOL)
    assert "r1/Female" in result["per_group"].index and len(result["per_group"]) == 6
    assert result["model_size_mb"] == 1.25
    for key in ["predictive_equality", "disparate_impact", "between_group_entropy_index"]:
        assert 0 <= result[key] <= 1


@pytest.mark.torch
def test_compute_fairness_metrics_rejects_an_unknown_attribute(stub_evaluation):
    with pytest.raises(ValueError) as error:
        fm.compute_fairness_metrics(None, stub_evaluation.loader, sensitive_attr="skin",
                                    device="cpu")
    available = ["split", "target", "gender", "age", "race", "group"]
    assert str(error.value) == fm.UNKNOWN_ATTRIBUTE.format(attr="skin", available=available)
    assert stub_evaluation.calls == []  # fails before running the model


def test_module_import_does_not_import_torch():
    code = "import sys, fairness_metrics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
