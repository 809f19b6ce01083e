"""The planted lighting effect: which group the knob plants on, the drop-difference statistic, and
the rows that put the known answer beside the verdict reached."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import plants
import synthetic
import verdicts as vd

OTHERS_DIM = {"Female/Young": 0.5, "Male/Young": 0.5, "Male/Old": 0.5}
CONFIG = {"data": {"dataset": "synthetic", "synthetic": {"exposure": OTHERS_DIM}}}


def test_planted_groups_name_the_group_at_its_own_contrast():
    assert synthetic.planted_groups(CONFIG["data"]["synthetic"]) == {"lighting": "Female/Old"}
    assert synthetic.planted_groups({"exposure": {"Male/Old": 1.8}})["lighting"] == "Male/Old"
    # equal gains, or no knob, plant nothing
    assert synthetic.planted_groups({}) == {"lighting": None}
    same = {"exposure": {g: 0.5 for g in synthetic.SYNTHETIC_GROUPS}}
    assert synthetic.planted_groups(same) == {"lighting": None}


def test_the_known_answer_follows_which_side_has_the_higher_contrast():
    dim = {"exposure": {"Male/Old": 0.5}}
    assert plants.lighting_verdict(dim, "Male/Old") == vd.WORSE
    assert plants.lighting_verdict({"exposure": OTHERS_DIM}, "Female/Old") == vd.BETTER


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
    far = plants.judged(-0.05, 0.02, alpha=0.05, ci=0.95, margin=0.01, known=vd.BETTER)
    assert far["verdict"] == vd.BETTER and far["matches"]
    assert far["change_low"] == pytest.approx(-0.05 - stats.norm.ppf(0.975) * 0.02)
    hurt = plants.judged(0.05, 0.02, alpha=0.05, ci=0.95, margin=0.01, known=vd.BETTER)
    assert hurt["verdict"] == vd.WORSE and not hurt["matches"]
    near = plants.judged(0.0, 0.002, alpha=0.05, ci=0.95, margin=0.01, known=vd.BETTER)
    assert near["verdict"] == vd.EQUIVALENT and not near["matches"]


SIZES = [100, 400, 200, 300]
W, A = plants.PLANT_BITS


def _table(config_ids=("c",), arch="squeezenet1_1", fp32_low=0.9, bits=(W, A)):
    fp32 = {"config_id": "fp", "arch": arch, "method": "fp32", "weight_bits": 32,
            "act_bits": 32, "calibration": "none", "reference_id": None,
            "balanced_accuracy_low": fp32_low}
    return pd.DataFrame([fp32] + [
        {"config_id": c, "arch": arch, "method": "ptq_static", "weight_bits": bits[0],
         "act_bits": bits[1], "calibration": "random-128", "reference_id": "fp",
         "balanced_accuracy_low": 0.8} for c in config_ids])


def _checks(per_group, table, config=CONFIG):
    return plants.plant_checks(config, per_group, table, alpha=0.05, ci=0.95, margin=0.01,
                               min_balanced_accuracy=0.6)


def _spared(config_id):  # Female/Old (first) loses nothing, the others lose 0.2
    return _per_group([0.0, 0.2, 0.2, 0.2], [0.02] * 4, SIZES, config_id)


def test_the_known_answer_sits_beside_the_pooled_verdict_reached():
    checks = _checks(pd.concat([_spared("a"), _spared("b")]), _table(("a", "b")))
    claim = checks[checks["arch"] == plants.ALL].iloc[0]
    assert claim["group"] == "Female/Old" and claim["known_verdict"] == vd.BETTER
    assert f"w{W}a{A}" in claim["known_answer"] and "less" in claim["known_answer"]
    assert claim["n_configs"] == 2
    assert claim["change"] == pytest.approx(-0.2)
    assert claim["verdict"] == vd.BETTER and claim["matches"]
    shown = checks[checks["arch"] != plants.ALL]
    assert len(shown) == 1 and shown["matches"].isna().all()
    alike = _per_group([0.0] * 4, [0.004] * 4, SIZES, "a")
    claim = _checks(alike, _table(("a",))).iloc[0]
    assert claim["verdict"] == vd.EQUIVALENT and not claim["matches"]


def test_a_dimmed_group_that_loses_more_matches_its_known_answer():
    dimmed = {"data": {"dataset": "synthetic", "synthetic": {"exposure": {"Female/Old": 0.35}}}}
    hurt = _per_group([0.2, 0.0, 0.0, 0.0], [0.02] * 4, SIZES, "a")
    claim = _checks(hurt, _table(("a",)), dimmed).iloc[0]
    assert claim["known_verdict"] == vd.WORSE and "more" in claim["known_answer"]
    assert claim["verdict"] == vd.WORSE and claim["matches"]
    assert not _checks(_spared("a"), _table(("a",)), dimmed).iloc[0]["matches"]


def test_an_architecture_at_chance_takes_no_part_in_the_claim():
    checks = _checks(_spared("a"), _table(("a",), fp32_low=0.5))
    assert len(checks) == 1 and checks["matches"].isna().all()
    assert checks["where"].iloc[0].startswith("not judged")


def test_a_plant_the_run_did_not_test_says_so_and_claims_nothing():
    checks = _checks(_spared("a"), _table(("a",), bits=(8, 8)))
    assert len(checks) == 1 and checks["matches"].isna().all()
    assert checks["where"].str.startswith("not judged").all()
    assert _checks(pd.DataFrame(), pd.DataFrame(), {"data": {"dataset": "celeba"}}).empty
    assert _checks(_spared("a"), _table(("a",)), {"data": {"dataset": "synthetic"}}).empty
