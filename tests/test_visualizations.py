"""Tests of visualizations.py: every figure is written as a readable PNG and a PDF from a small
hand-made table, and a table that lacks what a figure needs gets a clear error."""
import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

import visualizations as viz


def configurations() -> pd.DataFrame:
    rows = []
    for arch, shift in (("cnn", 0.0), ("vit_s", 0.05)):
        rows.append(dict(dataset="synthetic", arch=arch, method="fp32", weight_bits=32,
                         act_bits="32", accuracy=0.9, dp_gap=0.05, delta_dp_gap=0.0,
                         size_mib=10.0, cost_s=0.0, pareto=True))
        for bits, loss in ((8, 0.01), (4, 0.08)):
            rows.append(dict(dataset="synthetic", arch=arch, method="ptq_static", weight_bits=bits,
                             act_bits="8", accuracy=0.9 - loss - shift, dp_gap=0.05 + loss + shift,
                             delta_dp_gap=loss + shift, size_mib=10.0 * bits / 32, cost_s=2.0,
                             pareto=bits == 8 and arch == "cnn"))
    rows.append(dict(dataset="synthetic", arch="cnn", method="mixed_precision", weight_bits=4,
                     act_bits="8", accuracy=0.88, dp_gap=0.06, delta_dp_gap=0.01, size_mib=3.0,
                     cost_s=20.0, pareto=True))
    return pd.DataFrame(rows)


def per_group() -> pd.DataFrame:
    groups = ["Female/Old", "Female/Young", "Male/Old", "Male/Young"]
    return pd.DataFrame([dict(dataset="synthetic", arch=arch, method="ptq_static",
                              weight_bits=bits, act_bits="8", group=group,
                              accuracy_drop=drop * (i + 1), accuracy_drop_low=drop * i - 0.01,
                              accuracy_drop_high=drop * (i + 2) + 0.01)
                         for arch in ("cnn", "vit_s") for bits, drop in ((8, 0.001), (4, 0.02))
                         for i, group in enumerate(groups)])


def dp_changes() -> pd.DataFrame:
    return pd.DataFrame({"config_id": ["a/w8", "a/w4", "b/w4"],
                         "delta_dp_gap": [0.001, 0.05, -0.03],
                         "delta_dp_gap_low": [-0.01, 0.02, -0.06],
                         "delta_dp_gap_high": [0.012, 0.08, 0.0],
                         "verdict": ["EQUIVALENT", "WORSE", "INCONCLUSIVE"], "margin": 0.02})


def hypotheses() -> pd.DataFrame:
    """The table report._hypothesis_figure_table gives: one row per criterion, or one per
    hypothesis without criteria (then its reason says why there is no estimate)."""
    return pd.DataFrame({"id": ["H1", "H2", "H2", "H3"],
                         "statistic": ["mean Spearman rho", "Δaccuracy (fraction)",
                                       "Δaccuracy (fraction)", "ΔDP gap"],
                         "label": ["mean Spearman rho", "QAT is more accurate",
                                   "the gain is modest", "balanced calibration lowers the DP gap"],
                         "estimate": [np.nan, 0.01, 0.01, 0.004],
                         "low": [np.nan, -0.002, -0.002, -0.02], "high": [np.nan, 0.02, 0.02, 0.03],
                         "verdict": ["INCONCLUSIVE", "INCONCLUSIVE", "EQUIVALENT", "REJECTED"],
                         "hypothesis_verdict": ["INCONCLUSIVE", "INCONCLUSIVE", "INCONCLUSIVE",
                                                "REJECTED"],
                         "margin": [np.nan, 0.01, 0.05, 0.02],
                         "test": ["", "TOST p = 0.9, difference p = 0.4 (Holm)",
                                  "TOST p = 0.01, difference p = 0.4 (Holm)",
                                  "TOST p = 0.01, difference p = 0.63 (Holm)"],
                         "reason": ["no data: needs 3 architectures", "", "", ""],
                         "holds": ["", "holds for 0 of 1", "holds for 0 of 1", "holds for 0 of 1"]})


def comparison() -> pd.DataFrame:
    return pd.DataFrame({"label": ["FP32", "ptq_static(bits=w4a8, calibration=balanced, "
                                           "observer=histogram)"],
                         "accuracy": [0.9, 0.85], "accuracy_low": [0.88, 0.82],
                         "accuracy_high": [0.92, 0.88], "dp_gap": [0.05, 0.0],
                         "dp_gap_low": [0.03, 0.0], "dp_gap_high": [0.07, 0.02]})


FIGURES = {
    "pareto": (viz.plot_pareto, configurations),
    "heatmaps": (viz.plot_heatmaps, lambda: configurations().query("method != 'fp32'")),
    "group_drops": (viz.plot_group_drops, per_group),
    "dp_changes": (viz.plot_dp_changes, dp_changes),
    "mitigation": (viz.plot_mitigation, configurations),
    "hypotheses": (viz.plot_hypotheses, hypotheses),
}


@pytest.mark.parametrize("name", FIGURES)
def test_each_figure_is_written_as_readable_png_and_pdf(name, tmp_path):
    plot, table = FIGURES[name]
    paths = plot(table(), tmp_path / "figures" / name)
    assert [p.name for p in paths] == [f"{name}.png", f"{name}.pdf"]
    image = imread(paths[0])
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 0  # something was drawn, not a blank canvas
    assert paths[1].read_bytes()[:5] == b"%PDF-" and paths[1].stat().st_size > 1000


def test_suffix_of_the_output_path_is_replaced(tmp_path):
    paths = viz.plot_hypotheses(hypotheses(), tmp_path / "chart.svg")
    assert sorted(p.name for p in paths) == ["chart.pdf", "chart.png"]


def _drawn(monkeypatch) -> dict:
    """Keep the Figure each plot function saves, to look inside it."""
    drawn, save = {}, viz.save_figure

    def keep(figure, path):
        drawn["figure"] = figure
        return save(figure, path)
    monkeypatch.setattr(viz, "save_figure", keep)
    return drawn


def test_the_notebook_comparison_fits_its_labels_without_layout_warnings(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "constrained_layout not applied"
        path = viz.plot_method_comparison(comparison(), tmp_path / "comparison.png")
    image = imread(path)
    assert image.shape[0] > 100 and image.std() > 0


def test_pareto_log_axis_labels_plain_numbers_and_the_key_numbers_every_point(tmp_path,
                                                                              monkeypatch):
    drawn = _drawn(monkeypatch)
    table = configurations()
    table["config_id"] = [f"synthetic/{a}/{m}/w{b}/seed=0" for a, m, b
                          in zip(table["arch"], table["method"], table["weight_bits"])]
    viz.plot_pareto(table, tmp_path / "pareto")
    size_axis = drawn["figure"].axes[1]
    labels = [t.get_text() for t in size_axis.get_xticklabels() if t.get_text()]
    assert labels and all("times" not in label and "^" not in label for label in labels)
    texts = "\n".join(t.get_text() for t in drawn["figure"].texts)
    assert all(f"{i + 1}: " in texts for i in range(len(table)))  # the key names every point


def test_an_empty_hypothesis_panel_says_why_and_margin_bands_are_drawn(tmp_path, monkeypatch):
    drawn = _drawn(monkeypatch)
    viz.plot_hypotheses(hypotheses(), tmp_path / "h")
    h1, h2, h3 = drawn["figure"].axes
    assert "no data: needs 3 architectures" in " ".join(t.get_text() for t in h1.texts)
    assert len(h2.patches) == 2 and len(h3.patches) == 1  # the ±margin bands
    assert "TOST p = 0.01" in " ".join(t.get_text() for t in h3.get_yticklabels())


def test_black_and_white_styles_are_distinct_per_series():
    methods = [f"method_{i}" for i in range(len(viz.MARKERS))]
    assert len(set(viz._styles(methods, viz.MARKERS).values())) == len(methods)
    groups = [f"group_{i}" for i in range(len(viz.HATCHES))]
    assert len(set(viz._styles(groups, viz.HATCHES).values())) == len(groups)


def test_missing_columns_and_empty_tables_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"plot_pareto needs the columns \['pareto'\]"):
        viz.plot_pareto(configurations().drop(columns="pareto"), tmp_path / "p")
    with pytest.raises(ValueError, match="plot_mitigation got an empty table"):
        viz.plot_mitigation(configurations().iloc[:0], tmp_path / "m")
    with pytest.raises(ValueError, match=r"plot_group_drops needs the columns "
                                         r"\['accuracy_drop_low', 'accuracy_drop_high'\]"):
        viz.plot_group_drops(per_group().drop(columns=["accuracy_drop_low",
                                                       "accuracy_drop_high"]), tmp_path / "g")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_a_full_study_numbers_only_its_pareto_front(tmp_path, monkeypatch):
    drawn = _drawn(monkeypatch)
    n = viz.PARETO_NUMBERED + 10
    table = pd.DataFrame(dict(dataset="synthetic", method="ptq_static", accuracy=0.5, dp_gap=0.1,
                              size_mib=1.0, pareto=[i < 3 for i in range(n)],
                              config_id=[f"synthetic/cnn/ptq_static/w{i}/seed=0"
                                         for i in range(n)]))
    viz.plot_pareto(table, tmp_path / "pareto")
    texts = "\n".join(t.get_text() for t in drawn["figure"].texts)
    assert "1: " in texts and "3: " in texts and "4: " not in texts
    assert f"{n - 3} configurations off the Pareto front" in texts
    labels = [t.get_text() for t in drawn["figure"].axes[0].texts]
    assert labels == ["1,2,3"]  # every point coincides; only the front is numbered
    assert viz._shared_label(list(range(1, 9))) == "1,2,3,4,5 +3"
