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
    estimate, se = plants.drop_difference(rows, "Male/Old", ci=0.95)
    others = (0.05 * 100 + 0.02 * 400 + 0.0 * 300) / 800
    assert estimate == pytest.approx(0.10 - others)
    z = stats.norm.ppf(0.975)
    assert se == pytest.approx(math.sqrt((0.05 / z) ** 2 + sum(
        (n / 800 * h / z) ** 2 for n, h in [(100, 0.04), (400, 0.01), (300, 0.02)])))


def test_a_pooled_claim_uses_the_mean_error_a_bound_for_any_correlation():
    far = plants.judged(0.05, 0.02, alpha=0.05, ci=0.95, margin=0.01, better_when_higher=False)
    assert far["verdict"] == vd.WORSE and far["matches"]
    assert far["change_low"] == pytest.approx(0.05 - stats.norm.ppf(0.975) * 0.02)
    near = plants.judged(0.0, 0.002, alpha=0.05, ci=0.95, margin=0.01, better_when_higher=False)
    assert near["verdict"] == vd.EQUIVALENT and not near["matches"]


def _calibration(change, half_width, act_bits=4, archs=("mobilenet_v2", "squeezenet1_1")):
    return pd.DataFrame([{"scope": "cell", "metric": "group_accuracy", "arch": arch,
                          "weight_bits": 8, "act_bits": act_bits, "observer": "minmax",
                          "calibration_size": 16, "calibration_kind": "balanced", "n_draws": 16,
                          "change": change, "change_low": change - half_width,
                          "change_high": change + half_width, "verdict": "x"} for arch in archs])


def _table(config_ids=("c",), arch="squeezenet1_1"):
    return pd.DataFrame([{"config_id": c, "arch": arch, "method": "ptq_static", "weight_bits": 8,
                          "act_bits": plants.PLANT_ACT_BITS} for c in config_ids])


def _checks(calibration, per_group, table, config=CONFIG):
    return plants.plant_checks(config, calibration, per_group, table, alpha=0.05, ci=0.95,
                               margin=0.01)


def test_each_known_answer_sits_beside_the_pooled_verdict_reached():
    hurt = pd.concat([_per_group([0.0, 0.0, 0.2, 0.0], [0.01, 0.01, 0.03, 0.01],
                                 [100, 400, 200, 300], c) for c in ("a", "b")])
    checks = _checks(_calibration(0.04, 0.02), hurt, _table(("a", "b")))
    claims = checks[checks["arch"] == plants.ALL].set_index("plant")
    assert claims.loc["lighting", "group"] == "Female/Old"
    assert claims.loc["lighting", "verdict"] == vd.BETTER and claims.loc["lighting", "matches"]
    assert claims.loc["weak_cue", "group"] == "Male/Old"
    assert claims.loc["weak_cue", "n_configs"] == 2
    assert claims.loc["weak_cue", "verdict"] == vd.WORSE and claims.loc["weak_cue", "matches"]
    shown = checks[checks["arch"] != plants.ALL]
    assert len(shown) == 3 and shown["matches"].isna().all()  # two archs of light, one of cue
    spared = _per_group([0.0] * 4, [0.01] * 4, [100, 400, 200, 300], "a")
    checks = _checks(_calibration(0.0, 0.004), spared, _table(("a",)))
    claims = checks[checks["arch"] == plants.ALL].set_index("plant")
    assert claims["verdict"].tolist() == [vd.EQUIVALENT, vd.EQUIVALENT]
    assert not claims["matches"].any()


def test_a_plant_the_run_did_not_test_says_so_and_claims_nothing():
    checks = _checks(_calibration(0.04, 0.02, act_bits=8),
                     _per_group([0] * 4, [0.01] * 4, [1] * 4), _table(("other",)))
    assert len(checks) == 2 and checks["matches"].isna().all()
    assert checks["where"].str.startswith("not judged").all()
    assert _checks(_calibration(0.04, 0.02), pd.DataFrame(), pd.DataFrame(),
                   {"data": {"dataset": "celeba"}}).empty
