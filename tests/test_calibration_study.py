import numpy as np
import pandas as pd
import pytest

import calibration_study as cs
import unit_stats as us
import verdicts as vd
from config import DEFAULT_MARGINS
from prediction_store import PredictionStore

GROUPS = ("Female/Old", "Female/Young", "Male/Old", "Male/Young")
SIZES = (80, 240, 120, 160)
CONFIG = {"data": {"dataset": "synthetic", "synthetic": {"exposure": {"Female/Old": 1.8}}}}


def _test_set():
    groups = np.repeat(GROUPS, SIZES)
    y_true = np.tile([0, 1], len(groups) // 2)
    return pd.DataFrame({"sample_id": [f"s{i}" for i in range(len(groups))], "y_true": y_true,
                         "group": groups})


def _predictions(test, rng, group_accuracy: dict) -> pd.DataFrame:
    """Predictions right with the given per-group probability (default 0.9)."""
    p = test["group"].map(lambda g: group_accuracy.get(g, 0.9)).to_numpy()
    right = rng.random(len(test)) < p
    y_pred = np.where(right, test["y_true"], 1 - test["y_true"])
    return test.assign(y_pred=y_pred, score=y_pred.astype(float))


def _run(*, planted: bool, seed: int, draws: int = 6, kinds=("balanced",)):
    """Records and predictions of a composition study: random control and each kind per draw.
    With the plant, random calibration costs Female/Old accuracy (0.6) that the kinds keep (0.85);
    without it every calibration is alike (0.8)."""
    rng, test = np.random.default_rng(seed), _test_set()
    rows, store = [], {}
    for draw in range(draws):
        control = f"random/{draw}"
        store[control] = _predictions(test, rng, {"Female/Old": 0.6 if planted else 0.8})
        rows.append({"config_id": control, "method": "ptq_static", "compare_to": None,
                     "calibration_kind": "random", "calibration_cost_s": 1.0 + 0.1 * draw})
        for kind in kinds:
            config_id = f"{kind}/{draw}"
            store[config_id] = _predictions(test, rng, {"Female/Old": 0.85 if planted else 0.8})
            rows.append({"config_id": config_id, "method": cs.METHOD, "compare_to": control,
                         "calibration_kind": kind, "calibration_cost_s": 1.2 + 0.1 * draw})
    frame = pd.DataFrame(rows).assign(dataset="synthetic", arch="tiny_cnn", weight_bits=8,
                                      act_bits=4, observer="minmax", calibration_size=32,
                                      status="ok")
    frame["draw"] = [int(c.split("/")[1]) for c in frame["config_id"]]
    frame["calibration"] = frame["calibration_kind"] + "-32"
    return frame, PredictionStore(store.__getitem__)


def _study(frame, store, config=CONFIG, n_resamples=400):
    return cs.study(frame, store, config=config, margins=dict(DEFAULT_MARGINS),
                    n_resamples=n_resamples)


def _focus_verdict(result, scope="cell"):
    row = result[(result["scope"] == scope) & (result["metric"] == "group_accuracy")]
    assert len(row) == 1
    return row.iloc[0]


def test_planted_difference_is_found_better():
    frame, store = _run(planted=True, seed=1)
    row = _focus_verdict(_study(frame, store))
    assert row["focus_group"] == "Female/Old"
    assert row["verdict"] == vd.BETTER
    assert row["change_low"] > 0 and row["n_draws"] == 6
    assert _focus_verdict(_study(frame, store), "architecture")["verdict"] == vd.BETTER


def test_without_a_plant_the_study_stays_quiet():
    better = 0
    for seed in range(12):
        frame, store = _run(planted=False, seed=100 + seed)
        better += _focus_verdict(_study(frame, store, n_resamples=100))["verdict"] == vd.BETTER
    assert better <= 2  # a 5% test on 12 null runs: 0.6 expected, >= 3 has probability 2%


def test_changes_are_paired_by_draw_and_the_cost_ratio_is_reported():
    frame, store = _run(planted=True, seed=2, draws=5)
    result = _study(frame, store)
    units = cs.paired_units(frame)
    assert (units["reference_id"] == "random/" + units["draw"].astype(str)).all()
    expected = np.median([(1.2 + 0.1 * d) / (1.0 + 0.1 * d) for d in range(5)])
    row = _focus_verdict(result)
    assert row["cost_ratio"] == pytest.approx(expected)
    assert row["cost_ratio_low"] == pytest.approx(min((1.2 + 0.1 * d) / (1.0 + 0.1 * d)
                                                      for d in range(5)))
    deltas = [cs.group_metrics(store.table(f"balanced/{d}"), "Female/Old")["group_accuracy"]
              - cs.group_metrics(store.table(f"random/{d}"), "Female/Old")["group_accuracy"]
              for d in range(5)]
    assert row["change"] == pytest.approx(np.mean(deltas))


def test_too_few_draws_give_no_verdict():
    frame, store = _run(planted=True, seed=3, draws=3)
    row = _focus_verdict(_study(frame, store))
    assert row["verdict"] == vd.INCONCLUSIVE
    assert row["note"] == cs.TOO_FEW_DRAWS.format(n=3, minimum=cs.MIN_DRAWS)


def test_every_kind_gets_its_own_cell_and_architecture_rows():
    frame, store = _run(planted=True, seed=4, kinds=("balanced", "minority_enriched"))
    result = _study(frame, store)
    assert set(result["calibration_kind"]) == {"balanced", "minority_enriched"}
    assert len(result) == 2 * 2 * len(cs.CRITERIA)  # kinds x (cell, architecture) x criteria
    table = cs.verdict_table(result)
    assert len(table) == 4 and "Δ focus-group accuracy" in table


def test_focus_group_is_the_planted_one_else_the_smallest():
    groups = np.repeat(GROUPS, SIZES)
    assert cs.focus_group(CONFIG, groups) == "Female/Old"
    assert cs.focus_group({"data": {"synthetic": {"exposure": {}}}}, groups) == "Female/Old"
    assert cs.focus_group({"data": {"synthetic": {"exposure": {"Male/Old": 2.0}}}},
                          groups) == "Male/Old"
    assert cs.focus_group({}, np.repeat(GROUPS, (90, 20, 90, 90))) == "Female/Young"
    dim_others = {g: 0.35 for g in GROUPS if g != "Male/Young"}  # the one group left bright
    assert cs.focus_group({"data": {"synthetic": {"exposure": dim_others}}}, groups) == "Male/Young"


def test_a_run_without_the_study_gives_an_empty_table():
    frame = pd.DataFrame({"config_id": ["a"], "method": ["ptq_static"], "compare_to": [None],
                          "calibration": ["random-32"], "dataset": ["synthetic"], "arch": ["x"]})
    nothing = PredictionStore(lambda c: None)
    assert cs.study(frame, nothing, config={}, margins=dict(DEFAULT_MARGINS)).empty


def test_shared_replicates_of_one_group_change_only_with_that_group():
    test = _test_set()
    rng = np.random.default_rng(0)
    reference = _predictions(test, rng, {})["y_pred"].to_numpy()
    changed = reference.copy()
    others = (test["group"] != "Female/Old").to_numpy()
    changed[others] = 1 - changed[others]  # every other group flips, Female/Old does not
    replicates = us.shared_paired_replicates(test["y_true"], [(changed, reference)],
                                             test["group"], "accuracy", group="Female/Old",
                                             n_resamples=50)
    assert np.all(replicates == 0)
    overall = us.shared_paired_replicates(test["y_true"], [(changed, reference)], test["group"],
                                          "accuracy", n_resamples=50)
    assert np.all(overall != 0)


def test_report_section_shows_the_verdicts_and_the_cost_ratio():
    import types

    import report
    frame, store = _run(planted=True, seed=1)
    section = report._calibration_section(types.SimpleNamespace(calibration=_study(frame, store)))
    assert section.startswith("## Calibration composition")
    assert "**Female/Old**" in section and "cost ratio vs random" in section
    lines = [line for line in section.splitlines() if line.startswith("| architecture")]
    assert len(lines) == 1 and vd.BETTER in lines[0]
    assert report._calibration_section(types.SimpleNamespace(calibration=pd.DataFrame())) == ""
