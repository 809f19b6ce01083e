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
    return pd.DataFrame({"config_id": ["a/w8", "a/w4", "b/w4"], "delta_dp_gap": [0.001, 0.05, -0.03],
                         "delta_dp_gap_low": [-0.01, 0.02, -0.06],
                         "delta_dp_gap_high": [0.012, 0.08, 0.0],
                         "verdict": ["EQUIVALENT", "WORSE", "INCONCLUSIVE"], "margin": 0.02})


def hypotheses() -> pd.DataFrame:
    return pd.DataFrame({"id": ["H1", "H2", "H3"],
                         "statistic": ["mean Spearman rho", "Δaccuracy (fraction)", "ΔDP gap"],
                         "estimate": [-0.8, 0.01, np.nan], "low": [np.nan, -0.002, np.nan],
                         "high": [np.nan, 0.02, np.nan],
                         "verdict": ["INCONCLUSIVE", "SUPPORTED", "REJECTED"],
                         "holds": ["", "holds for 1 of 2", "holds for 0 of 1"]})


def baseline() -> pd.DataFrame:
    return pd.DataFrame({"arch": ["cnn", "vit_s"], "accuracy": ["0.9 [0.88, 0.92]"] * 2,
                         "size_mib": ["10", "12.5"]})


FIGURES = {
    "pareto": (viz.plot_pareto, configurations),
    "heatmaps": (viz.plot_heatmaps, lambda: configurations().query("method != 'fp32'")),
    "group_drops": (viz.plot_group_drops, per_group),
    "dp_changes": (viz.plot_dp_changes, dp_changes),
    "mitigation": (viz.plot_mitigation, configurations),
    "hypotheses": (viz.plot_hypotheses, hypotheses),
    "baseline": (viz.plot_baseline_table, baseline),
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
