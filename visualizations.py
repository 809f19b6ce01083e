"""Figures of the analysis phase, drawn from result tables only.

Each ``plot_*`` function takes a table (the ones ``analysis`` writes) and an output path, writes
the figure as PNG (for reading) and PDF (for papers) beside each other, and returns both paths.
Figures are readable in black-and-white print: series differ by marker or hatch, not by colour
alone. The module draws on ``matplotlib.figure.Figure`` with the Agg canvas and never touches
pyplot, so it leaves a notebook's backend and global state alone.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
HATCHES = ("", "///", "...", "xxx", "\\\\\\", "ooo", "---", "+++", "|||", "**")
GREYS = ("0.15", "0.45", "0.7", "0.9")
VERDICT_MARKERS = {"SUPPORTED": "o", "REJECTED": "X", "INCONCLUSIVE": "s"}
VERDICT_SHADES = {"SUPPORTED": "black", "REJECTED": "0.45", "INCONCLUSIVE": "white"}
DPI = 150


def save_figure(figure: Figure, path: str | Path) -> list[Path]:
    """Write ``figure`` as ``<path>.png`` and ``<path>.pdf`` (any suffix of ``path`` replaced)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    written = []
    for suffix in (".png", ".pdf"):
        target = path.with_suffix(suffix)
        figure.savefig(target, dpi=DPI, bbox_inches="tight")
        written.append(target)
    logger.debug("figure written: %s", written)
    return written


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        raise ValueError(f"{what} needs the columns {absent}, missing from the table given "
                         f"(it has {sorted(map(str, frame.columns))}); pass the table analysis "
                         "wrote for this figure")
    if frame.empty:
        raise ValueError(f"{what} got an empty table; there is nothing to draw")


def _styles(labels: Sequence[str], palette: Sequence[str]) -> dict[str, str]:
    return {label: palette[i % len(palette)] for i, label in enumerate(labels)}


def _bits_label(frame: pd.DataFrame) -> pd.Series:
    bits = frame["weight_bits"].map(lambda b: f"{b:g}" if isinstance(b, float) else str(b))
    return frame["method"] + " w" + bits + "a" + frame["act_bits"].astype(str)


# ----------------------------------------------------------------------------- figures

def plot_pareto(table: pd.DataFrame, path: str | Path) -> list[Path]:
    """Accuracy against DP gap and against size, one row of panels per dataset; the
    non-dominated configurations (``pareto``) filled black, the others hollow; marker = method."""
    _require(table, ["dataset", "method", "accuracy", "dp_gap", "size_mib", "pareto"],
             "plot_pareto")
    datasets = sorted(table["dataset"].unique())
    markers = _styles(sorted(table["method"].unique()), MARKERS)
    figure = Figure(layout="constrained", figsize=(10, 4 * len(datasets)))
    axes = figure.subplots(len(datasets), 2, squeeze=False)
    for row, dataset in zip(axes, datasets):
        rows = table[table["dataset"] == dataset]
        for method, marker in markers.items():
            for on_front, points in rows[rows["method"] == method].groupby("pareto"):
                style = dict(marker=marker, s=45, edgecolors="black", linewidths=0.8,
                             facecolors="black" if on_front else "none")
                row[0].scatter(points["dp_gap"], points["accuracy"], **style)
                row[1].scatter(points["size_mib"], points["accuracy"], **style)
        row[0].set_xlabel("DP gap (max − min selection rate, fraction)")
        row[1].set_xlabel("size (MiB, log scale)")
        row[1].set_xscale("log")
        for ax in row:
            ax.set_ylabel("accuracy (fraction)")
            ax.set_title(f"{dataset}: filled = Pareto-optimal")
            ax.grid(True, linestyle=":", color="0.7")
    handles = [axes[0][0].scatter([], [], marker=m, facecolors="none", edgecolors="black",
                                  label=method) for method, m in markers.items()]
    figure.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4),
                  frameon=False)
    return save_figure(figure, path)


def plot_heatmaps(table: pd.DataFrame, path: str | Path) -> list[Path]:
    """Accuracy and ΔDP gap (vs FP32) over architecture × method/bits, values written in the cells."""
    _require(table, ["arch", "method", "weight_bits", "act_bits", "accuracy", "delta_dp_gap"],
             "plot_heatmaps")
    rows = table.assign(setting=_bits_label(table))
    panels = {"accuracy": "accuracy (fraction)", "delta_dp_gap": "ΔDP gap vs FP32 (fraction)"}
    figure = Figure(layout="constrained", figsize=(max(8, 1.1 * rows["setting"].nunique() * 2), 3 + 0.6 * rows["arch"].nunique()))
    axes = figure.subplots(1, 2, squeeze=False)[0]
    for ax, (column, label) in zip(axes, panels.items()):
        grid = rows.pivot_table(index="arch", columns="setting", values=column, aggfunc="mean")
        image = ax.imshow(grid.to_numpy(dtype=float), cmap="Greys", aspect="auto")
        _annotate_cells(ax, grid.to_numpy(dtype=float), image)
        ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=45, ha="right")
        ax.set_yticks(range(grid.shape[0]), grid.index)
        ax.set_xlabel("method and bits (w = weights, a = activations)")
        ax.set_ylabel("architecture")
        figure.colorbar(image, ax=ax, label=label)
    return save_figure(figure, path)


def _annotate_cells(ax, values: np.ndarray, image) -> None:
    """Write each cell's value, white on dark cells and black on light ones."""
    for (i, j), value in np.ndenumerate(values):
        if np.isnan(value):
            ax.text(j, i, "n/a", ha="center", va="center", fontsize=7, color="0.4")
            continue
        shade = image.norm(value) if image.norm.vmax != image.norm.vmin else 0.0
        ax.text(j, i, f"{value:.3g}", ha="center", va="center", fontsize=8,
                color="white" if shade > 0.5 else "black")


def plot_group_drops(per_group: pd.DataFrame, path: str | Path) -> list[Path]:
    """Accuracy drop vs FP32 of each intersectional group per architecture and method/bits, with
    the paired-bootstrap interval as an error bar (several configurations of one cell, e.g.
    calibration draws: mean drop and mean bounds); one panel per (dataset, architecture);
    groups differ by hatch."""
    _require(per_group, ["dataset", "arch", "method", "weight_bits", "act_bits", "group",
                         "accuracy_drop", "accuracy_drop_low", "accuracy_drop_high"],
             "plot_group_drops")
    rows = per_group.assign(setting=_bits_label(per_group))
    panels = sorted(set(zip(rows["dataset"], rows["arch"])))
    groups = sorted(rows["group"].unique())
    hatches, greys = _styles(groups, HATCHES), _styles(groups, GREYS)
    figure = Figure(layout="constrained", figsize=(max(6, 1.5 * rows["setting"].nunique()),
                                                   3.2 * len(panels)))
    axes = figure.subplots(len(panels), 1, squeeze=False)[:, 0]
    width = 0.8 / len(groups)
    for ax, (dataset, arch) in zip(axes, panels):
        cell = rows[(rows["dataset"] == dataset) & (rows["arch"] == arch)]
        grid = cell.pivot_table(index="setting", columns="group", aggfunc="mean",
                                values=["accuracy_drop", "accuracy_drop_low",
                                        "accuracy_drop_high"])
        for k, group in enumerate(groups):
            if ("accuracy_drop", group) not in grid:
                continue
            drop = grid[("accuracy_drop", group)]
            error = [drop - grid[("accuracy_drop_low", group)],
                     grid[("accuracy_drop_high", group)] - drop]
            ax.bar(np.arange(len(grid)) + (k - (len(groups) - 1) / 2) * width, drop, width,
                   yerr=error, capsize=2, label=group, hatch=hatches[group], color=greys[group],
                   edgecolor="black", error_kw={"elinewidth": 0.8})
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(grid)), grid.index, rotation=30, ha="right")
        ax.set_ylabel("accuracy drop vs FP32 (fraction)")
        ax.set_title(f"{dataset}/{arch}: per-group accuracy drop, paired interval "
                     "(positive = the group lost)", fontsize=9)
        ax.legend(fontsize=7, ncol=2)
    return save_figure(figure, path)


def plot_backends(groups: pd.DataFrame, path: str | Path) -> list[Path]:
    """One panel per (dataset, architecture, calibration, seed): each group's accuracy drop vs
    FP32 under each runtime's INT8 model, with its paired interval; runtimes differ by hatch."""
    _require(groups, ["dataset", "arch", "calibration", "seed", "execution", "group",
                      "accuracy_drop", "accuracy_drop_low", "accuracy_drop_high"], "plot_backends")
    cells = sorted(set(zip(groups["dataset"], groups["arch"], groups["calibration"],
                           groups["seed"])))
    executions = sorted(groups["execution"].unique())
    hatches, greys = _styles(executions, HATCHES), _styles(executions, GREYS)
    figure = Figure(layout="constrained", figsize=(7, 3.0 * len(cells)))
    axes = figure.subplots(len(cells), 1, squeeze=False)[:, 0]
    width = 0.8 / len(executions)
    for ax, (dataset, arch, calibration, seed) in zip(axes, cells):
        cell = groups[(groups["dataset"] == dataset) & (groups["arch"] == arch)
                      & (groups["calibration"] == calibration) & (groups["seed"] == seed)]
        names = sorted(cell["group"].unique())
        for k, execution in enumerate(executions):
            rows = cell[cell["execution"] == execution].set_index("group").reindex(names)
            drop = rows["accuracy_drop"]
            error = [drop - rows["accuracy_drop_low"], rows["accuracy_drop_high"] - drop]
            ax.bar(np.arange(len(names)) + (k - (len(executions) - 1) / 2) * width, drop, width,
                   yerr=error, capsize=2, label=execution, hatch=hatches[execution],
                   color=greys[execution], edgecolor="black", error_kw={"elinewidth": 0.8})
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel("accuracy drop vs FP32")
        ax.set_title(f"{dataset}/{arch} ({calibration}, seed {seed}): per-group accuracy drop "
                     "of each runtime's INT8 model, paired interval", fontsize=9)
        ax.legend(fontsize=7)
    return save_figure(figure, path)


CHANGE_MARKERS = {"WORSE": "v", "BETTER": "^", "EQUIVALENT": "o", "INCONCLUSIVE": "s"}


def plot_dp_changes(changes: pd.DataFrame, path: str | Path) -> list[Path]:
    """Each configuration's DP-gap change vs FP32 with its paired interval; marker shape =
    its verdict (filled when EQUIVALENT or BETTER); dotted lines at +-margin."""
    _require(changes, ["config_id", "delta_dp_gap", "delta_dp_gap_low", "delta_dp_gap_high",
                       "verdict", "margin"], "plot_dp_changes")
    rows = changes.sort_values("config_id").reset_index(drop=True)
    figure = Figure(layout="constrained", figsize=(8, 0.25 * len(rows) + 1.5))
    ax = figure.subplots()
    for i, row in rows.iterrows():
        error = [[row.delta_dp_gap - row.delta_dp_gap_low],
                 [row.delta_dp_gap_high - row.delta_dp_gap]]
        filled = row.verdict in ("EQUIVALENT", "BETTER")
        ax.errorbar([row.delta_dp_gap], [i], xerr=error, capsize=2, color="black",
                    fmt=CHANGE_MARKERS.get(row.verdict, "s"), markersize=5,
                    markerfacecolor="black" if filled else "white")
    margin = float(rows["margin"].iloc[0])
    for x in (-margin, margin):
        ax.axvline(x, color="0.4", linestyle=":", linewidth=0.9)
    ax.axvline(0, color="0.6", linestyle="--", linewidth=0.8)
    ax.set_yticks(range(len(rows)), rows["config_id"], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel(f"ΔDP gap vs FP32 (fraction), paired interval; dotted: ±margin {margin:g}")
    handles = [ax.errorbar([], [], fmt=m, color="black", label=v,
                           markerfacecolor="black" if v in ("EQUIVALENT", "BETTER") else "white")
               for v, m in CHANGE_MARKERS.items()]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return save_figure(figure, path)


MITIGATION_PANELS = {"accuracy": "accuracy (fraction)", "dp_gap": "DP gap (fraction)",
                     "size_mib": "size (MiB)", "cost_s": "cost (s)"}


def plot_mitigation(table: pd.DataFrame, path: str | Path) -> list[Path]:
    """Accuracy, DP gap, size and cost per method (mean over its configurations; the line spans
    the lowest to the highest); methods differ by hatch."""
    _require(table, ["method", *MITIGATION_PANELS], "plot_mitigation")
    methods = sorted(table["method"].unique())
    hatches, greys = _styles(methods, HATCHES), _styles(methods, GREYS)
    figure = Figure(layout="constrained", figsize=(12, 3.5))
    axes = figure.subplots(1, len(MITIGATION_PANELS))
    for ax, (column, label) in zip(axes, MITIGATION_PANELS.items()):
        stats = table.groupby("method")[column].agg(["mean", "min", "max"]).reindex(methods)
        positions = np.arange(len(methods))
        for position, method in zip(positions, methods):
            ax.bar(position, stats.loc[method, "mean"], color=greys[method],
                   hatch=hatches[method], edgecolor="black")
        ax.errorbar(positions, stats["mean"], yerr=[stats["mean"] - stats["min"],
                                                    stats["max"] - stats["mean"]],
                    fmt="none", ecolor="black", capsize=3)
        ax.set_xticks(positions, methods, rotation=40, ha="right", fontsize=8)
        ax.set_ylabel(label)
    figure.suptitle("mitigations against the plain-PTQ configurations they are compared with")
    return save_figure(figure, path)


def plot_hypotheses(hypotheses: pd.DataFrame, path: str | Path) -> list[Path]:
    """Each hypothesis's headline estimate with its interval, one panel each (own scale and
    unit); the verdict written beside the id and marked by shape and fill (filled black =
    SUPPORTED, grey X = REJECTED, hollow square = INCONCLUSIVE); Holm p-value and the
    per-architecture count in the title when the table has them; dashed line at 0."""
    _require(hypotheses, ["id", "statistic", "estimate", "low", "high", "verdict"],
             "plot_hypotheses")
    figure = Figure(layout="constrained", figsize=(8, 1.2 * len(hypotheses) + 0.5))
    axes = figure.subplots(len(hypotheses), 1, squeeze=False)[:, 0]
    for ax, row in zip(axes, hypotheses.itertuples()):
        ax.axvline(0, color="0.5", linestyle="--", linewidth=0.8)
        if np.isfinite(row.estimate):
            has_interval = np.isfinite(row.low) and np.isfinite(row.high)
            error = [[row.estimate - row.low], [row.high - row.estimate]] if has_interval else None
            ax.errorbar([row.estimate], [0], xerr=error, fmt=VERDICT_MARKERS.get(row.verdict, "o"),
                        color="black", markerfacecolor=VERDICT_SHADES.get(row.verdict, "white"),
                        capsize=4, markersize=8)
        else:
            ax.text(0.5, 0.5, "no estimate", transform=ax.transAxes, ha="center", va="center")
        ax.set_yticks([])
        ax.set_ylabel(f"{row.id}\n{row.verdict}", rotation=0, labelpad=40, va="center",
                      fontsize=8, weight="bold")
        ax.set_xlabel(row.statistic, fontsize=8)
        p_value = getattr(row, "p_value", np.nan)
        holds = getattr(row, "holds", "")
        ax.set_title(row.verdict + (f", p = {p_value:.3g}" if np.isfinite(p_value) else "")
                     + (f", {holds}" if isinstance(holds, str) and holds else ""),
                     loc="right", fontsize=8)
    return save_figure(figure, path)


def plot_baseline_table(table: pd.DataFrame, path: str | Path) -> list[Path]:
    """The FP32 baseline table drawn as a figure (cells as given: pass formatted text)."""
    _require(table, ["arch"], "plot_baseline_table")
    figure = Figure(layout="constrained", figsize=(min(2 + 1.3 * table.shape[1], 24), 0.6 + 0.35 * (len(table) + 1)))
    ax = figure.subplots()
    ax.axis("off")
    cells = ax.table(cellText=table.astype(str).to_numpy(), colLabels=list(table.columns),
                     loc="center", cellLoc="center")
    cells.auto_set_font_size(False)
    cells.set_fontsize(7)
    cells.auto_set_column_width(list(range(table.shape[1])))
    for (row, _), cell in cells.get_celld().items():
        if row == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("0.9")
    return save_figure(figure, path)
