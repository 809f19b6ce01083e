"""Tests of analysis.py on hand-made points and on fake run folders with planted effects.

A fake run folder holds result CSVs and per-sample prediction tables whose changes are planted
exactly: the FP32 model of every architecture makes the same predictions, and a quantized model
differs from it only by `k` negatives of the Female/Old group predicted positive. That raises the
DP gap by k / GROUP_SIZE and lowers accuracy by k / N, so every hypothesis's verdict is known.
"""
import dataclasses
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import analysis
import hypotheses as hy
import stats_tables as st
import verdicts as vd
from analysis import run_analysis
from prediction_store import PredictionStore
from report import latex_escape
from results import save_predictions
from stats_tables import drop_ratio, format_number, pareto_front
from verdicts import INCONCLUSIVE, REJECTED, SUPPORTED

GROUPS = ("Male/Young", "Male/Old", "Female/Young", "Female/Old")
GROUP_SIZE = 800
N = GROUP_SIZE * len(GROUPS)
RESAMPLES = 40

# (arch, parameters, k at 4 bits): which architectures lose most is what H1 and H6 look at.
SUPPORTED_ARCHS = [("vit_a", 250_000, 360), ("vit_b", 500_000, 320), ("cnn_a", 1_000_000, 240),
                   ("cnn_b", 2_000_000, 200), ("cnn_c", 4_000_000, 160),
                   ("cnn_d", 8_000_000, 120), ("cnn_e", 16_000_000, 80)]
REJECTED_ARCHS = [("cnn_a", 1_000_000, 80), ("cnn_b", 2_000_000, 120), ("vit_a", 4_000_000, 160),
                  ("cnn_c", 8_000_000, 200), ("cnn_d", 16_000_000, 240)]
CNN_E = "synthetic/cnn_e/ptq_static/w4a8/calib=random-512/seed=0"
CNN_E_K = 80
WORLDS = {
    # every hypothesis holds: big models lose less, transformers lose most, QAT gains a little at
    # 50x the cost, balanced calibration lowers the gap, mixed precision keeps it, INT8 is small.
    "supported": dict(archs=SUPPORTED_ARCHS, int8_share=1 / 40, qat_change=-40, balanced_change=-40,
                      mixed_k=2),
    # every hypothesis fails: big models lose more, the transformer sits amid the CNNs, QAT is
    # worse, balanced calibration raises the gap, mixed precision loses fairness, INT8 = INT4.
    "rejected": dict(archs=REJECTED_ARCHS, int8_share=1.0, qat_change=40, balanced_change=40,
                     mixed_k=100),
}


# ----------------------------------------------------------------------------- fake run folders

def fp32_predictions() -> pd.DataFrame:
    """Every architecture's FP32 predictions: right except 10% of Female/Old negatives called
    positive and 10% of Male/Young positives called negative (so Female/Old selects most)."""
    rows = []
    for group in GROUPS:
        gender, age = group.split("/")
        y_true = np.repeat([0, 1], GROUP_SIZE // 2)
        y_pred = y_true.copy()
        tenth = GROUP_SIZE // 20
        if group == "Female/Old":
            y_pred[:tenth] = 1
        if group == "Male/Young":
            y_pred[GROUP_SIZE // 2:GROUP_SIZE // 2 + tenth] = 0
        rows.append(pd.DataFrame({"sample_id": [f"{group}-{i}.jpg" for i in range(GROUP_SIZE)],
                                  "y_true": y_true, "y_pred": y_pred, "gender": gender,
                                  "age": age, "group": group}))
    table = pd.concat(rows, ignore_index=True)
    return table.assign(score=np.where(table["y_pred"] == 1, 0.8, 0.2))


def damaged(k: int) -> pd.DataFrame:
    """FP32 predictions with `k` more Female/Old negatives called positive."""
    table = fp32_predictions()
    correct_negatives = table.index[(table["group"] == "Female/Old") & (table["y_true"] == 0)
                                    & (table["y_pred"] == 0)]
    table.loc[correct_negatives[:k], ["y_pred", "score"]] = [1, 0.8]
    return table


def row(config_id, arch, method, bits, **fields):
    return {"config_id": config_id, "dataset": "synthetic", "arch": arch, "method": method,
            "weight_bits": bits, "act_bits": 32 if bits == 32 else 8, "seed": 0,
            "status": "ok", "error": "", **fields}


def write_run(folder, world: dict, *, phases=("baseline", "quantization", "mitigation")):
    """Write config.yaml, the result CSVs of `phases` and every prediction table."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"seed": 0,
                                                        "data": {"dataset": "synthetic"}}))
    tables = {"baseline": [], "quantization": [], "mitigation": []}
    for arch, params, k4 in world["archs"]:
        fp32_size = params * 4 / 2 ** 20
        model = _model_writer(folder, arch, fp32_size)
        tables["baseline"].append(model("fp32", 32, 0, "fp32/seed=0", params=params,
                                        latency_ms_b1=2.0, train_time_s=60.0, execution="fp32"))
        k8 = round(k4 * world["int8_share"])
        tables["quantization"] += [
            model("ptq_static", 4, k4, "ptq_static/w4a8/calib=random-512/seed=0", cost_s=2.0),
            model("ptq_static", 8, k8, "ptq_static/w8a8/calib=random-512/seed=0", cost_s=2.0),
            model("qat", 4, k4 + world["qat_change"], "qat/w4a8/calib=none/seed=0", cost_s=100.0)]
    arch, _, k4 = world["archs"][2]
    model = _model_writer(folder, arch, world["archs"][2][1] * 4 / 2 ** 20)
    for draw in range(3):
        random_id = f"ptq_static/w4a8/calib=random-512/draw={draw}/seed=0"
        tables["quantization"].append(model("ptq_static", 4, k4 + 4 * draw, random_id, draw=draw,
                                            cost_s=2.0))
        tables["mitigation"].append(model(
            "bias_aware_calibration", 4, k4 + 4 * draw + world["balanced_change"],
            f"bias_aware_calibration/w4a8/calib=balanced-512/draw={draw}/seed=0", draw=draw,
            calibration="balanced-512", cost_s=2.0, compare_to=f"synthetic/{arch}/{random_id}"))
    for arch, params, _ in world["archs"][3:5]:
        model = _model_writer(folder, arch, params * 4 / 2 ** 20)
        tables["mitigation"].append(model(
            "mixed_precision", 4, world["mixed_k"], "mixed_precision/w4a8/variant=overall/seed=0",
            size_mib=0.3 * params * 4 / 2 ** 20, cost_s=20.0, variant="overall",
            compare_to=f"synthetic/{arch}/ptq_static/w4a8/calib=random-512/seed=0"))
    tables["quantization"].append(row("synthetic/cnn_x/ptq_static/w2a8/seed=0", "cnn_x",
                                      "ptq_static", 2, status="failed",
                                      error="RuntimeError: observer saw no data"))
    for phase in phases:
        pd.DataFrame(tables[phase]).to_csv(folder / st.RESULT_FILES[phase], index=False)
    return folder


def _model_writer(folder, arch, fp32_size):
    """`model(method, bits, k, id_tail, **fields)`: save the predictions, return the result row."""
    def model(method, bits, k, id_tail, **fields):
        config_id = f"synthetic/{arch}/{id_tail}"
        save_predictions(folder, config_id, damaged(k))
        defaults = {"size_mib": fp32_size * bits / 32, "fp32_size_mib": fp32_size,
                    "calibration": "random-512" if method == "ptq_static" else "none",
                    "execution": "simulated"}
        return row(config_id, arch, method, bits, **{**defaults, **fields})
    return model


def _verdicts(hypotheses: list[dict]) -> dict[str, str]:
    return {h["id"]: h["verdict"] for h in hypotheses}


@pytest.fixture(scope="module")
def supported_run(tmp_path_factory):
    folder = write_run(tmp_path_factory.mktemp("supported") / "run", WORLDS["supported"])
    outputs = run_analysis(folder, n_resamples=RESAMPLES, progress=False)
    return folder, outputs


@pytest.fixture(scope="module")
def rejected_analysis(tmp_path_factory):
    folder = write_run(tmp_path_factory.mktemp("rejected") / "run", WORLDS["rejected"])
    return analysis.analyse(folder, n_resamples=RESAMPLES, progress=False)


# ----------------------------------------------------------------------------- pure pieces

def test_pareto_front_on_hand_made_points():
    points = pd.DataFrame({"accuracy": [0.9, 0.8, 0.85, 0.7, 0.9, np.nan],
                           "size_mib": [10.0, 2.0, 5.0, 6.0, 10.0, 1.0]},
                          index=list("abcdef"))
    mask = pareto_front(points, maximize=["accuracy"], minimize=["size_mib"])
    # d (worse than c on both) is dominated; a and e tie and both stay; f lacks accuracy
    assert mask.to_dict() == {"a": True, "b": True, "c": True, "d": False, "e": True, "f": False}
    three = pd.DataFrame({"acc": [0.9, 0.9, 0.8], "gap": [0.1, 0.2, 0.05], "size": [5, 5, 5]})
    front = pareto_front(three, maximize=["acc"], minimize=["gap", "size"])
    assert front.tolist() == [True, False, True]


def test_pareto_front_rejects_unknown_or_no_objectives():
    points = pd.DataFrame({"accuracy": [0.9]})
    with pytest.raises(ValueError, match=r"\['size'\].*available: \['accuracy'\]"):
        pareto_front(points, maximize=["accuracy"], minimize=["size"])
    with pytest.raises(ValueError, match="at least one objective"):
        pareto_front(points)


def test_transformers_are_recognised_by_a_part_of_their_name():
    assert [hy.is_transformer_name(a) for a in
            ("vit_small", "tiny_vit", "deit_tiny", "resnet50", "mobilenet_v2", "levit")] == \
        [True, True, True, False, False, False]


def test_every_hypothesis_is_one_spec_with_generated_rule_and_test_text():
    margins = vd.check_margins({})
    for spec in hy.HYPOTHESES:
        text = hy.describe_test(spec)
        assert all(c.name in text for c in spec.criteria)
        for criterion in spec.criteria:
            rule = criterion.rule.text(margins, 0.05, format_number)
            assert format_number(margins[criterion.margin]) in rule  # threshold from the spec
            assert criterion.selection in hy.SELECTIONS
    assert [spec.id for spec in hy.HYPOTHESES] == [f"H{i}" for i in range(1, 7)]


def test_drop_ratio_guards_division_by_zero():
    assert drop_ratio(0.2, 0.05) == pytest.approx(4.0)
    assert drop_ratio(0.2, 0.0) == math.inf
    assert drop_ratio(0.2, -0.01) == math.inf
    assert math.isnan(drop_ratio(0.0, -0.01))


def test_format_number_and_latex_escape():
    assert [format_number(v) for v in (3, 2.0, 0.123456, 1234567.0, float("nan"), float("inf"),
                                       None, "w4a8", np.float64(1.5e-7))] == \
        ["3", "2", "0.1235", "1234567", "nan", "inf", "", "w4a8", "1.5e-07"]
    assert latex_escape("a_b & 50% #1 {x}") == r"a\_b \& 50\% \#1 \{x\}"


# ----------------------------------------------------------------------------- planted runs

def test_planted_supported_world_supports_every_hypothesis(supported_run):
    folder, _ = supported_run
    hypotheses = json.loads((folder / "analysis" / "hypotheses.json").read_text())["hypotheses"]
    assert _verdicts(hypotheses) == {f"H{i}": SUPPORTED for i in range(1, 7)}
    by_id = {h["id"]: h for h in hypotheses}
    assert by_id["H1"]["estimate"] == pytest.approx(-1.0)  # every cell perfectly ordered
    assert by_id["H1"]["details"]["p_floor_fraction"] == "1/2520"
    assert by_id["H2"]["estimate"] == pytest.approx(40 / N)  # QAT flips 40 fewer samples
    assert [c["verdict"] for c in by_id["H2"]["criteria"]] == [vd.BETTER, vd.EQUIVALENT]
    assert by_id["H2"]["holds"] == "holds for 7 of 7"
    assert by_id["H3"]["estimate"] == pytest.approx(-40 / GROUP_SIZE)
    assert by_id["H3"]["holds"] == "holds for 1 of 1"  # the draws are of one architecture
    assert by_id["H6"]["p_value"] == pytest.approx(1 / 21)  # 2 transformers among 7 models
    assert {h["margins"].get("dp_gap") for h in hypotheses} <= {None, 0.02}


def test_planted_rejected_world_rejects_and_one_transformer_names_the_p_floor(rejected_analysis):
    hypotheses = {h.id: h for h in rejected_analysis.hypotheses}
    assert {k: h.verdict for k, h in hypotheses.items()} == {
        **{f"H{i}": REJECTED for i in range(1, 6)}, "H6": INCONCLUSIVE}
    h1 = hypotheses["H1"]
    assert h1.estimate == pytest.approx(1.0) and h1.p_value == pytest.approx(1 / 60)
    assert "cannot go below 1/60" in h1.details["limitation"]
    # one transformer among five: no labelling gives p below 1/5, so no general claim
    h6 = hypotheses["H6"]
    assert h6.details["p_floor_fraction"] == "1/5"
    assert "cannot give p below 1/5" in h6.reason and "INCONCLUSIVE" in h6.reason
    assert len(h6.per_architecture) == 5  # the per-architecture changes are still reported
    assert hypotheses["H5"].criteria[0].verdict == vd.WORSE  # two-sided: a large rise fails


def test_a_chance_level_baseline_gets_no_verdict(tmp_path):
    folder = write_run(tmp_path / "run", WORLDS["supported"])
    rng = np.random.default_rng(0)
    for arch, _, _ in WORLDS["supported"]["archs"]:  # FP32 models that guess
        coin = fp32_predictions().assign(y_pred=lambda t: rng.integers(0, 2, len(t)))
        save_predictions(folder, f"synthetic/{arch}/fp32/seed=0", coin)
    result = analysis.analyse(folder, n_resamples=RESAMPLES, progress=False)
    assert all(h.verdict == INCONCLUSIVE for h in result.hypotheses)
    assert all("not clearly above chance" in h.reason for h in result.hypotheses)
    rows = [r for h in result.hypotheses for r in h.per_architecture]
    assert rows and all(not r.usable and "balanced accuracy lower bound" in r.reason
                        for r in rows)
    assert (result.recommendation["config_id"] == "").all()  # nothing ships on a guessing FP32
    assert set(result.table["dp_verdict"]) == {INCONCLUSIVE}


def test_design_fixed_costs_are_facts_beside_the_verdict(supported_run, tmp_path):
    folder, _ = supported_run
    h2 = analysis.analyse(folder, n_resamples=RESAMPLES, progress=False).hypotheses[1]
    assert h2.facts[0].value == pytest.approx(50.0)  # QAT 100 s vs PTQ 2 s
    # make QAT as cheap as PTQ: the cost fact changes, the verdict does not
    cheap = write_run(tmp_path / "cheap", WORLDS["supported"])
    results = pd.read_csv(cheap / "quantization_results.csv")
    results.loc[results["method"] == "qat", "cost_s"] = 2.0
    results.to_csv(cheap / "quantization_results.csv", index=False)
    again = analysis.analyse(cheap, n_resamples=RESAMPLES, progress=False).hypotheses[1]
    assert again.facts[0].value == pytest.approx(1.0)
    assert again.verdict == h2.verdict == SUPPORTED
    # no criterion of any hypothesis is a cost or a size: they are all metric changes
    assert {c.metric for spec in hy.HYPOTHESES for c in spec.criteria} <= set(analysis.st.METRICS)


def test_without_quantization_or_mitigation_every_hypothesis_is_inconclusive(tmp_path):
    folder = write_run(tmp_path / "run", WORLDS["supported"], phases=("baseline",))
    result = analysis.analyse(folder, n_resamples=RESAMPLES, progress=False)
    assert all(h.verdict == INCONCLUSIVE and h.reason.startswith("no data")
               for h in result.hypotheses)
    assert result.run.missing_files == ["quantization_results.csv", "mitigation_results.csv"]


def test_missing_mitigation_results_still_gives_every_output(tmp_path):
    folder = write_run(tmp_path / "run", WORLDS["supported"],
                       phases=("baseline", "quantization"))
    outputs = run_analysis(folder, n_resamples=RESAMPLES, progress=False, figures=False)
    hypotheses = json.loads(outputs["hypotheses.json"].read_text())["hypotheses"]
    verdicts = _verdicts(hypotheses)
    assert verdicts["H3"] == verdicts["H4"] == INCONCLUSIVE
    assert verdicts["H1"] == verdicts["H2"] == SUPPORTED
    report = outputs["report.md"].read_text()
    assert "`mitigation_results.csv` is missing" in report
    assert set(pd.read_csv(outputs["stats.csv"])["comparison"]) == {
        "config", "vs_fp32", "qat_vs_ptq", "int4_vs_int8"}


def test_stats_table_is_tidy_and_adjusted_within_families(supported_run):
    folder, _ = supported_run
    stats = pd.read_csv(folder / "analysis" / "stats.csv")
    assert list(stats.columns[:10]) == st.STAT_KEYS
    change = stats[(stats["comparison"] == "vs_fp32") & (stats["metric"] == "dp_gap")]
    ptq4 = change[change["config_id"] == CNN_E]
    assert ptq4["estimate"].item() == pytest.approx(CNN_E_K / GROUP_SIZE, abs=1e-4)
    assert ptq4["low"].item() <= ptq4["estimate"].item() <= ptq4["high"].item()
    assert (change["p_holm"] >= change["p_value"] - 1e-9).all()
    assert (change["p_bh"] <= change["p_holm"] + 1e-9).all()
    assert change["family"].unique().tolist() == ["vs_fp32/dp_gap"]
    assert change["p_equivalent"].between(0, 1).all()  # dp_gap has a margin: TOST p for each
    accuracy = stats[(stats["comparison"] == "vs_fp32") & (stats["metric"] == "accuracy")]
    assert (accuracy["effect_size"] < 0).all()  # Cohen's h of a loss is negative
    assert "synthetic/cnn_x/ptq_static/w2a8/seed=0" not in set(stats["config_id"])  # failed row


def test_per_group_drop_and_flips_come_from_the_damaged_group(supported_run):
    folder, _ = supported_run
    per_group = pd.read_csv(folder / "analysis" / "per_group.csv")
    one = per_group[per_group["config_id"] == CNN_E].set_index("group")
    assert one.loc["Female/Old", "accuracy_drop"] == pytest.approx(CNN_E_K / GROUP_SIZE, abs=1e-4)
    assert one.loc["Female/Old", "flip_share"] == pytest.approx(1.0)
    assert one.loc["Female/Old", "flip_excess"] == pytest.approx(4.0)
    assert one.loc["Male/Old", "accuracy_drop"] == pytest.approx(0.0)
    ratios = pd.read_csv(folder / "analysis" / "tables" / "group_drop_ratios.csv")
    assert set(ratios["worst_group"]) == {"Female/Old"}
    assert np.isinf(ratios["worst_to_least"]).all()  # the other groups lost nothing


def test_recommendation_rests_on_verdicts_lists_deployable_apart_and_reports_ties(supported_run):
    folder, _ = supported_run
    rows = pd.read_csv(folder / "analysis" / "tables" / "recommendation.csv", keep_default_na=False)
    result = analysis.analyse(folder, n_resamples=RESAMPLES, progress=False)
    table = result.table
    largest = table.loc[table["method"] == "fp32", "size_mib"].max()
    assert sorted(set(rows["size_budget_mib"].astype(float))) == pytest.approx(
        [f * largest for f in st.DEFAULT_BUDGET_FRACTIONS], rel=1e-3)
    chosen = rows[rows["config_id"] != ""]
    assert set(chosen["dp_verdict"]) <= {vd.EQUIVALENT, vd.BETTER}
    worse = set(table.loc[table["dp_verdict"] == vd.WORSE, "config_id"])
    assert worse and not worse & set(chosen["config_id"])  # a widened gap never ships
    budgets = chosen["size_budget_mib"].astype(float)
    full = chosen[budgets == budgets.max()]
    deployable = full[full["deployable"].astype(str) == "True"]
    # the seven FP32 models predict alike: one ranks first and the others tie with it
    assert len(deployable) == 7 and deployable["config_id"].str.endswith("/fp32/seed=0").all()
    assert (deployable["p_vs_best"].iloc[1:].astype(float) > 0.05).all()
    assert (full.loc[full["deployable"].astype(str) == "False", "execution"] == "simulated").all()
    small = st.recommend(table, settings=st.AnalysisSettings(size_budgets_mib=[1e-6]))
    assert small["config_id"].tolist() == ["", ""] and small["n_candidates"].tolist() == [0, 0]


def test_report_names_no_number_absent_from_the_written_tables(supported_run):
    folder, outputs = supported_run
    report = outputs["report.md"].read_text()
    assert "SYNTHETIC DATA" in report
    assert all(f"### H{i}" in report for i in range(1, 7))
    written = [p for name, p in outputs.items() if name.endswith((".csv", ".json"))]
    sources = "\n".join(p.read_text() for p in [*written, folder / "config.yaml"])
    known = {_normal(n) for n in NUMBER.findall(sources)}
    in_report = {_normal(n) for n in NUMBER.findall(report)}
    assert len(in_report) > 20
    assert in_report <= known, sorted(in_report - known)


NUMBER = re.compile(r"(?<![\w.\-])-?\d+(?:\.\d+)?(?:e[+-]\d+)?(?!\w)(?!\.\d)")


def _normal(token: str) -> str:
    return format_number(float(token))


def test_outputs_exist_and_tables_are_latex(supported_run):
    folder, outputs = supported_run
    for name in ("stats.csv", "per_group.csv", "hypotheses.json", "summary.json", "report.md",
                 "tables/quantization.tex", "tables/hypotheses.tex", "figures/pareto.png",
                 "figures/pareto.pdf", "figures/hypotheses.png"):
        assert outputs[name].is_file() and outputs[name].stat().st_size > 0, name
    tex = outputs["tables/quantization.tex"].read_text()
    assert tex.count(r"\\") >= 1 + 7 * 2 + 3 and r"ptq\_static" in tex and "\\toprule" in tex


def test_analysis_is_deterministic(supported_run, tmp_path):
    folder, outputs = supported_run
    first = outputs["stats.csv"].read_text()
    again = run_analysis(folder, n_resamples=RESAMPLES, progress=False, figures=False)
    assert again["stats.csv"].read_text() == first
    assert again["hypotheses.json"].read_text() == outputs["hypotheses.json"].read_text()


def test_bad_input_gives_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_analysis(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="holds none of baseline_results.csv"):
        run_analysis(tmp_path)
    pd.DataFrame({"config_id": ["a"], "arch": ["x"]}).to_csv(tmp_path / "baseline_results.csv")
    with pytest.raises(ValueError, match=r"lacks the columns \['dataset', 'method'\]"):
        run_analysis(tmp_path)
    pd.DataFrame({"config_id": ["a", "a"], "dataset": "d", "arch": "x", "method": "fp32"}).to_csv(
        tmp_path / "baseline_results.csv")
    with pytest.raises(ValueError, match=r"ids \['a'\] appear in more than one result row"):
        run_analysis(tmp_path)
    folder = write_run(tmp_path / "run", WORLDS["rejected"], phases=("baseline",))
    with pytest.raises(ValueError, match="alpha=1.5"):
        run_analysis(folder, alpha=1.5)
    with pytest.raises(ValueError, match=r"size_budgets_mib=\[-1\]"):
        run_analysis(folder, size_budgets_mib=[-1], figures=False, progress=False,
                     n_resamples=RESAMPLES)


def test_settings_travel_as_one_object_and_keywords_build_the_same(tmp_path):
    folder = write_run(tmp_path / "run", WORLDS["supported"])
    settings = st.AnalysisSettings(n_resamples=RESAMPLES, seed=3, margins={"dp_gap": 0.05})
    assert settings.margins == vd.check_margins({"dp_gap": 0.05})  # defaults filled in
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.alpha = 0.1
    run = analysis.load_run(folder)
    assert analysis.settings_of(run, n_resamples=RESAMPLES, seed=3,
                                margins={"dp_gap": 0.05}) == settings
    with pytest.warns(DeprecationWarning):
        assert analysis.settings_of(run, fairness_tolerance=0.05).margins["dp_gap"] == 0.05
    with pytest.raises(ValueError) as error:
        st.AnalysisSettings(alpha=0)
    assert str(error.value) == st.BAD_ALPHA.format(alpha=0)


def test_analysis_never_imports_torch():
    code = ("import sys, analysis, visualizations; "
            "sys.exit('torch' in sys.modules or 'matplotlib.pyplot' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(analysis.__file__).parent,
                          timeout=120).returncode == 0


def test_rows_of_another_runtime_are_deployable_but_never_a_pairing_reference(tmp_path):
    folder = write_run(tmp_path / "run", WORLDS["supported"])
    results = pd.read_csv(folder / "quantization_results.csv")
    torch_row = results[results["config_id"] == CNN_E.replace("w4a8", "w8a8")].iloc[0]
    ort_id = torch_row["config_id"] + "/backend=onnxruntime"
    save_predictions(folder, ort_id, damaged(round(CNN_E_K / 40)))
    results = pd.concat([results, torch_row.to_frame().T.assign(config_id=ort_id,
                                                                execution="onnxruntime_int8")])
    results.to_csv(folder / "quantization_results.csv", index=False)
    result = analysis.analyse(folder, n_resamples=RESAMPLES, progress=False)
    paired = result.pairs[result.pairs["comparison"].isin(["qat_vs_ptq", "int4_vs_int8"])]
    assert ort_id not in set(paired["reference_id"]) | set(paired["config_id"])
    assert ort_id in set(result.pairs.loc[result.pairs["comparison"] == "vs_fp32", "config_id"])
    chosen = result.recommendation[result.recommendation["config_id"] == ort_id]
    assert len(chosen) and chosen["deployable"].all()
    assert set(chosen["runtime"]) == {st.DEPLOYABLE_EXECUTIONS["onnxruntime_int8"]}


def test_one_architecture_at_chance_is_left_out_and_named_while_the_others_are_judged(tmp_path):
    folder = write_run(tmp_path / "run", WORLDS["supported"])
    rng = np.random.default_rng(1)
    save_predictions(folder, "synthetic/cnn_e/fp32/seed=0",
                     fp32_predictions().assign(y_pred=lambda t: rng.integers(0, 2, len(t))))
    h2 = analysis.analyse(folder, n_resamples=RESAMPLES, progress=False).hypotheses[1]
    assert h2.verdict == SUPPORTED and h2.holds == "holds for 6 of 6"
    assert "left out, cnn_e: no verdict" in h2.reason
    cnn_e = [r for r in h2.per_architecture if r.arch == "cnn_e"]
    assert len(cnn_e) == 1 and not cnn_e[0].usable and cnn_e[0].criteria == []


def test_units_on_different_test_sets_get_independent_replicate_blocks():
    # two seeds drew different test splits: their units share no sample, so no covariance
    tables = {"a": damaged(40), "a_ref": fp32_predictions(), "b": damaged(80),
              "b_ref": fp32_predictions()}
    for name in ("b", "b_ref"):
        tables[name] = tables[name].assign(sample_id=lambda t: "other-" + t["sample_id"])
    rows = pd.DataFrame({"config_id": ["a", "b"], "reference_id": ["a_ref", "b_ref"],
                         "dataset": "synthetic", "arch": ["x", "x"]})
    inputs = hy.HypothesisInputs(store=PredictionStore(tables.__getitem__),
                                 settings=st.AnalysisSettings(n_resamples=300))
    replicates = hy._replicates(rows, "dp_gap", inputs)
    assert replicates.shape == (300, 2) and np.isfinite(replicates).all()
    assert abs(np.corrcoef(replicates.T)[0, 1]) < 0.2  # drawn independently
    same = hy._replicates(rows.assign(config_id=["a", "a"], reference_id=["a_ref", "a_ref"]),
                          "dp_gap", inputs)
    np.testing.assert_allclose(same[:, 0], same[:, 1])  # one test set: shared resamples


# ------------------------------------------------------------------- the answer, report.html, cards

CALIBRATION_COUNTS = '{"Female/Old": 128, "Female/Young": 128, "Male/Old": 128, "Male/Young": 128}'


@pytest.fixture(scope="module")
def shipping_run(tmp_path_factory):
    """The supported world plus one deployable INT8 model that predicts like its FP32 model,
    with its artifact on disk: the answer ships it and it gets a card."""
    folder = write_run(tmp_path_factory.mktemp("ship") / "run", WORLDS["supported"],
                       phases=("baseline", "quantization"))
    arch, params, _ = SUPPORTED_ARCHS[-1]
    model = _model_writer(folder, arch, params * 4 / 2 ** 20)
    artifact = folder / "models" / "int8.pt"
    artifact.parent.mkdir(parents=True)
    artifact.write_bytes(b"an int8 model " * 100)
    shipped = model("ptq_static", 8, 0, "ptq_static/w8a8/calib=random-512/draw=9/seed=0",
                    execution="real_int8", model_path="models/int8.pt", speedup_b1=2.5,
                    cpu_capability="AVX512", calibration_group_counts=CALIBRATION_COUNTS,
                    draw=9)
    path = folder / st.RESULT_FILES["quantization"]
    pd.concat([pd.read_csv(path), pd.DataFrame([shipped])]).to_csv(path, index=False)
    outputs = run_analysis(folder, n_resamples=RESAMPLES, progress=False)
    return folder, outputs, shipped["config_id"]


def _first_section(page: str) -> str:
    """The text of the first <section> of report.html."""
    from html.parser import HTMLParser

    class First(HTMLParser):
        def __init__(self):
            super().__init__()
            self.depth, self.done, self.text = 0, False, []

        def handle_starttag(self, tag, attrs):
            if tag == "section" and not self.done:
                self.depth += 1

        def handle_endtag(self, tag):
            if tag == "section" and self.depth:
                self.depth -= 1
                self.done = self.done or self.depth == 0

        def handle_data(self, data):
            if self.depth and not self.done:
                self.text.append(data)
    parser = First()
    parser.feed(page)
    return re.sub(r"\s+", " ", "".join(parser.text))


def external_references(page: str) -> list[str]:
    """src / href of script, style, link and img elements that point outside the file."""
    from html.parser import HTMLParser

    class References(HTMLParser):
        found: list = []

        def handle_starttag(self, tag, attrs):
            if tag in ("script", "style", "img", "link", "iframe", "object", "embed"):
                for name, value in attrs:
                    if name in ("src", "href", "data") and value and not value.startswith("data:"):
                        self.found.append(f"{tag} {name}={value}")
    parser = References()
    parser.found = []
    parser.feed(page)
    parser.close()
    return parser.found


def test_the_answer_comes_first_and_ships_the_deployable_model(shipping_run):
    folder, outputs, shipped = shipping_run
    head = "\n".join(outputs["report.md"].read_text().splitlines()[:30])
    assert f"Ship `{shipped}`" in head and "SYNTHETIC DATA" in head
    assert "worst-hit group" in head and "Δaccuracy vs FP32" in head and "ΔDP gap vs FP32" in head
    page = outputs["report.html"].read_text()
    assert not external_references(page)
    first = _first_section(page)
    assert f"Ship {shipped}" in first and "SYNTHETIC DATA" in first
    order = [page.index(f'id="{name}"') for name in ("answer", "per_group", "pareto", "mitigation",
                                                      "hypotheses", "methods", "config")]
    assert order == sorted(order)
    assert page.count("data:image/png;base64,") >= 4  # the figures travel inside the file
    summary = json.loads(outputs["summary.json"].read_text())
    assert summary["answer"]["status"] == "ship"


def test_each_card_holds_the_numbers_of_stats_and_per_group_and_the_artifacts_sha256(shipping_run):
    import hashlib

    folder, outputs, shipped = shipping_run
    cards = [p for name,
             p in outputs.items() if name.startswith("cards/") and name.endswith(".json")]
    assert cards
    stats = pd.read_csv(outputs["stats.csv"], dtype=str, keep_default_na=False)
    per_group = pd.read_csv(outputs["per_group.csv"], dtype=str, keep_default_na=False)
    for path in cards:
        card = json.loads(path.read_text())
        artifact = card["model_details"]["artifact"]
        if artifact["path"]:
            digest = hashlib.sha256((folder / artifact["path"]).read_bytes()).hexdigest()
            assert artifact["sha256"] == digest
        rows = stats[(stats["comparison"] == "vs_fp32") & (stats["config_id"] == card["config_id"])]
        for metric, change in card["changes_vs_fp32"].items():
            row = rows[rows["metric"] == metric].iloc[0]
            for key, column in (("estimate", "estimate"), ("low", "low"), ("high", "high"),
                                ("p_value", "p_value"), ("p_equivalent", "p_equivalent")):
                assert format_number(change[key]) == row[column], (metric, key)
        groups = per_group[per_group["config_id"] == card["config_id"]].set_index("group")
        assert len(card["per_group"]) == len(groups) > 0
        for group in card["per_group"]:
            for column in ("n", "accuracy", "accuracy_low", "accuracy_high", "tpr", "tpr_low",
                           "tpr_high", "fpr", "fpr_low", "fpr_high"):
                assert format_number(group[column]) == groups.loc[group["group"], column], column
    card = json.loads(next(p for p in cards if "draw=9" in p.name).read_text())
    assert card["config_id"] == shipped
    assert card["calibration"]["group_counts"] == json.loads(CALIBRATION_COUNTS)
    assert card["calibration"]["kind"] == "random" and card["calibration"]["size"] == 512
    assert card["model_details"]["speedup_b1_vs_fastest_fp32"] == 2.5
    assert card["changes_vs_fp32"]["dp_gap"]["verdict"] == vd.EQUIVALENT
    assert card["evaluation_data"]["synthetic"] and card["caveats"]
    assert (folder / "analysis" / "cards" / path.name.replace(".json", ".md")).is_file()
    card_html = folder / "analysis" / "cards" / path.name.replace(".json", ".html")
    assert not external_references(card_html.read_text())


def test_without_compressed_results_the_answer_names_the_missing_phase(tmp_path):
    folder = write_run(tmp_path / "run", WORLDS["supported"], phases=("baseline",))
    outputs = run_analysis(folder, n_resamples=RESAMPLES, progress=False, figures=False)
    head = "\n".join(outputs["report.md"].read_text().splitlines()[:30])
    assert "Nothing can be recommended, because a phase is missing" in head
    assert "Nothing can be recommended" in _first_section(outputs["report.html"].read_text())
