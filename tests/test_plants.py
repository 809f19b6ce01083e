"""Planted effects: which group each knob plants on, the weak-cue statistic, and the rows that put
each known answer beside the verdict reached."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import plants
import synthetic
import verdicts as vd

OTHERS_DIM = {"Female/Young": 0.35, "Male/Young": 0.35, "Male/Old": 0.35}
CONFIG = {"data": {"dataset": "synthetic",
                   "synthetic": {"exposure": OTHERS_DIM, "cue_strength": {"Female/Old": 1.0,
                                                                          "Male/Old": 0.5}}}}


def test_planted_groups_name_the_odd_group_of_each_knob():
    assert synthetic.planted_groups(CONFIG["data"]["synthetic"]) == {
        "lighting": "Female/Old", "weak_cue": "Male/Old"}
    assert synthetic.planted_groups({"exposure": {"Male/Old": 1.8}})["lighting"] == "Male/Old"
    # the default cues make Female/Old the faintest; equal cues or gains plant nothing
    assert synthetic.planted_groups({}) == {"lighting": None, "weak_cue": "Female/Old"}
    assert synthetic.planted_groups({"cue_strength": 1.0, "exposure": {g: 0.5 for g in
                                     synthetic.SYNTHETIC_GROUPS}}) == {"lighting": None,
                                                                       "weak_cue": None}
    two_faint = {"cue_strength": {"Female/Old": 0.5, "Male/Old": 0.5}}
    assert synthetic.planted_groups(two_faint)["weak_cue"] is None


def _per_group(drops, half_widths, sizes, config_id="c"):
    groups = list(synthetic.SYNTHETIC_GROUPS)
    drops, half = np.asarray(drops, float), np.asarray(half_widths, float)
    return pd.DataFrame({"config_id": config_id, "group": groups, "n": sizes,
                         "accuracy_drop": drops, "accuracy_drop_low": drops - half,
                         "accuracy_drop_high": drops + half})


def test_drop_difference_subtracts_the_size_weighted_drop_of_the_others():
    rows = _per_group([0.05, 0.02, 0.10, 0.00], [0.04, 0.01, 0.05, 0.02], [100, 400, 200, 300])
    estimate, low, high, p, p_equivalent = plants.drop_difference(rows, "Male/Old", ci=0.95)
    others = (0.05 * 100 + 0.02 * 400 + 0.0 * 300) / 800
    assert estimate == pytest.approx(0.10 - others)
    z = stats.norm.ppf(0.975)
    se = math.sqrt((0.05 / z) ** 2 + sum((n / 800 * h / z) ** 2
                                         for n, h in [(100, 0.04), (400, 0.01), (300, 0.02)]))
    assert (low, high) == pytest.approx((estimate - z * se, estimate + z * se))
    assert p == pytest.approx(2 * stats.norm.sf(estimate / se))
    assert p_equivalent(0.01) > 0.5 > p  # far outside a 0.01 margin: not equivalent


def _calibration(verdict, act_bits=4):
    return pd.DataFrame([{"scope": "cell", "metric": "group_accuracy", "arch": "squeezenet1_1",
                          "weight_bits": 8, "act_bits": act_bits, "observer": "minmax",
                          "calibration_size": 16, "calibration_kind": "balanced", "n_draws": 16,
                          "change": 0.03, "change_low": 0.01, "change_high": 0.05,
                          "verdict": verdict}])


def _table(config_id="c"):
    return pd.DataFrame([{"config_id": config_id, "arch": "squeezenet1_1", "method": "ptq_static",
                          "weight_bits": plants.WEAK_CUE_BITS[0],
                          "act_bits": plants.WEAK_CUE_BITS[1], "execution": "simulated"}])


def _checks(calibration, per_group, table, config=CONFIG):
    return plants.plant_checks(config, calibration, per_group, table, alpha=0.05, ci=0.95,
                               margin=0.01)


def test_each_known_answer_sits_beside_the_verdict_reached():
    hurt = _per_group([0.0, 0.0, 0.2, 0.0], [0.01, 0.01, 0.03, 0.01], [100, 400, 200, 300])
    checks = _checks(_calibration(vd.BETTER), hurt, _table()).set_index("plant")
    assert checks.loc["lighting", "group"] == "Female/Old"
    assert checks.loc["lighting", "matches"]
    assert checks.loc["weak_cue", "group"] == "Male/Old"
    assert checks.loc["weak_cue", "verdict"] == vd.WORSE and checks.loc["weak_cue", "matches"]
    spared = _per_group([0.0, 0.0, 0.0, 0.0], [0.01, 0.01, 0.01, 0.01], [100, 400, 200, 300])
    checks = _checks(_calibration(vd.INCONCLUSIVE), spared, _table()).set_index("plant")
    assert not checks.loc["lighting", "matches"]
    assert checks.loc["weak_cue", "verdict"] == vd.EQUIVALENT
    assert not checks.loc["weak_cue", "matches"]


def test_a_plant_the_run_did_not_test_says_so_and_claims_nothing():
    checks = _checks(_calibration(vd.BETTER, act_bits=8), _per_group([0] * 4, [0.01] * 4,
                                                                     [1] * 4), _table("other"))
    assert len(checks) == 2 and checks["matches"].isna().all()
    assert checks["where"].str.startswith("not judged").all()
    assert _checks(_calibration(vd.BETTER), pd.DataFrame(), pd.DataFrame(),
                   {"data": {"dataset": "celeba"}}).empty
