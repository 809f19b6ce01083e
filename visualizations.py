"""Figures of the analysis phase, drawn from result tables only.

Each ``plot_*`` function takes a table (the ones ``analysis`` writes) and an output path, writes
the figure as PNG (for reading) and PDF (for papers) beside each other, and returns both paths.
Series differ by colour (the Okabe-Ito palette, safe for the common colour-vision deficiencies)
and by marker or hatch, so a figure also reads in black-and-white print. Every panel that has
nothing to draw says why. Statistical figures draw the intervals the analysis tables hold (paired
bootstrap, t-intervals over draws) as given; seaborn would recompute its own intervals from raw
observations, which these tables do not hold, so matplotlib alone serves. The module draws on
``matplotlib.figure.Figure`` with the Agg canvas and never touches pyplot, so it leaves a notebook's
backend and global state alone.
"""
from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

logger = logging.getLogger(__name__)

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
HATCHES = ("", "///", "...", "xxx", "\\\\\\", "ooo", "---", "+++", "|||", "**")
GREYS = ("0.15", "0.45", "0.7", "0.9")
COLOURS = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000",
           "#F0E442")
"""Okabe & Ito's palette: distinguishable with the common colour-vision deficiencies."""
VERDICT_MARKERS = {"SUPPORTED": "o", "REJECTED": "X", "INCONCLUSIVE": "s"}
VERDICT_COLOURS = {"SUPPORTED": "#0072B2", "REJECTED": "#D55E00", "INCONCLUSIVE": "#999999",
                   "EQUIVALENT": "#0072B2", "BETTER": "#009E73", "WORSE": "#D55E00"}
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


# ----------------------------------------------------------------------------- helpers

def _empty(ax, why: str) -> None:
    """Say in the panel why it is empty."""
    ax.text(0.5, 0.5, "\n".join(textwrap.wrap(why, 80)), transform=ax.transAxes, ha="center",
            va="center", fontsize=8, color="0.25")
    ax.set_xticks([])
    ax.set_yticks([])


def _short_name(config_id: str) -> str:
    """A configuration id without its dataset (the panel's title names it)."""
    return "/".join(str(config_id).split("/")[1:]) or str(config_id)


def _plain_log_axis(axis) -> None:
    """Log-scale ticks as plain numbers at 1, 2 and 5 per decade, minor ticks unlabelled, so
    labels never overlap."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


# ----------------------------------------------------------------------------- figures

PARETO_NUMBERED = 40
"""Up to this many configurations per dataset every point is numbered; above it only the
Pareto-optimal ones are (a full study's 200 numbers would cover the panels)."""
SHARED_LABEL = 5
"""Points that coincide share one label; it shows this many numbers, then ``+N``."""


def plot_pareto(table: pd.DataFrame, path: str | Path) -> list[Path]:
    """Accuracy against DP gap and against size, one row of panels per dataset. Each
    configuration is numbered beside its point and named in the key under the panels (above
    ``PARETO_NUMBERED`` per dataset: the Pareto-optimal ones only, the key says how many more);
    colour and marker = method; the non-dominated configurations (``pareto``) are filled, the
    others hollow. Points that coincide share one label ("1,4")."""
    _require(table, ["dataset", "method", "accuracy", "dp_gap", "size_mib", "pareto"],
             "plot_pareto")
    table = table.reset_index(drop=True)
    if "config_id" not in table:
        table = table.assign(config_id=_bits_label(table) if "weight_bits" in table
                             else table["method"])
    datasets = sorted(table["dataset"].unique())
    methods = sorted(table["method"].unique())
    markers, colours = _styles(methods, MARKERS), _styles(methods, COLOURS)
    keys, panels = [], []
    for dataset in datasets:
        rows = table[table["dataset"] == dataset].sort_values(["method", "config_id"])
        named = rows if len(rows) <= PARETO_NUMBERED else rows[rows["pareto"].astype(bool)]
        numbers = {index: len(keys) + k + 1 for k, index in enumerate(named.index)}
        keys += [f"{numbers[i]}: {_short_name(rows.at[i, 'config_id'])}"
                 + (" (Pareto)" if rows.at[i, "pareto"] else "") for i in named.index]
        if len(named) < len(rows):
            keys.append(f"{dataset}: {len(rows) - len(named)} configurations off the Pareto front "
                        "drawn hollow, unnumbered (analysis/stats.csv lists them)")
        panels.append((dataset, rows, numbers))
    figure = Figure(layout="constrained", figsize=(11, 4.2 * len(datasets) + 0.14 * len(keys)))
    axes = figure.subplots(len(datasets), 2, squeeze=False)
    for row, (dataset, rows, numbers) in zip(axes, panels):
        for ax, x in zip(row, ("dp_gap", "size_mib")):
            for method in methods:
                for on_front, points in rows[rows["method"] == method].groupby("pareto"):
                    ax.scatter(points[x], points["accuracy"], marker=markers[method], s=55,
                               edgecolors=colours[method], linewidths=1.4,
                               facecolors=colours[method] if on_front else "none", zorder=3)
            for (px, py), at in rows.groupby([x, "accuracy"]).groups.items():
                shown = sorted((numbers[i] for i in at if i in numbers))
                if shown:
                    ax.annotate(_shared_label(shown), (px, py), xytext=(4, 4),
                                textcoords="offset points", fontsize=7)
            ax.set_ylabel("accuracy (fraction)")
            ax.grid(True, linestyle=":", color="0.7")
        row[0].set_xlabel("DP gap (max − min selection rate, fraction)")
        row[1].set_xlabel("size (MiB, log scale)")
        row[1].set_xscale("log")
        _plain_log_axis(row[1].xaxis)
        row[0].set_title(f"{dataset}: accuracy vs DP gap (filled = Pareto-optimal)", fontsize=9)
        row[1].set_title(f"{dataset}: accuracy vs size (filled = Pareto-optimal)", fontsize=9)
    handles = [Line2D([], [], linestyle="", marker=markers[m], markeredgecolor=colours[m],
                      markerfacecolor=colours[m], label=m) for m in methods]
    figure.legend(handles=handles, loc="outside upper center", ncol=min(len(handles), 4),
                  frameon=False, fontsize=8)
    columns = 2 if len(keys) > 8 else 1
    per_column = -(-len(keys) // columns)
    key_text = ["\n".join(keys[c * per_column:(c + 1) * per_column]) for c in range(columns)]
    for c, text in enumerate(key_text):
        figure.text(0.01 + 0.5 * c, 0, text, fontsize=7, va="top", ha="left", family="monospace")
    return save_figure(figure, path)


def _shared_label(numbers: list[int]) -> str:
    """``1,4,9`` for coinciding points; past ``SHARED_LABEL`` numbers, ``1,4,9,12,15 +7``."""
    head = ",".join(str(n) for n in numbers[:SHARED_LABEL])
    return head + (f" +{len(numbers) - SHARED_LABEL}" if len(numbers) > SHARED_LABEL else "")


def plot_heatmaps(table: pd.DataFrame, path: str | Path) -> list[Path]:
    """Accuracy and ΔDP gap (vs FP32) over architecture × method/bits, values written in the
    cells, one panel above the other; ΔDP gap on a diverging scale centred on 0 (orange: the gap
    widened, purple: it narrowed)."""
    _require(table, ["arch", "method", "weight_bits", "act_bits", "accuracy", "delta_dp_gap"],
             "plot_heatmaps")
    rows = table.assign(setting=_bits_label(table))
    panels = {"accuracy": ("accuracy (fraction, mean over configurations)", "cividis"),
              "delta_dp_gap": ("ΔDP gap vs FP32 (fraction, mean)", "PuOr_r")}
    n_settings, n_archs = rows["setting"].nunique(), rows["arch"].nunique()
    figure = Figure(layout="constrained", figsize=(min(3 + 0.9 * n_settings, 14),
                                                   2 * (1.6 + 0.45 * n_archs) + 1.6))
    axes = figure.subplots(2, 1, squeeze=False)[:, 0]
    for ax, (column, (label, cmap)) in zip(axes, panels.items()):
        grid = rows.pivot_table(index="arch", columns="setting", values=column, aggfunc="mean")
        values = grid.to_numpy(dtype=float)
        if column == "delta_dp_gap":
            bound = np.nanmax(np.abs(values)) if np.isfinite(values).any() else 1.0
            norm = TwoSlopeNorm(0.0, -bound or -1e-9, bound or 1e-9)
            image = ax.imshow(values, cmap=cmap, aspect="auto", norm=norm)
        else:
            image = ax.imshow(values, cmap=cmap, aspect="auto")
        _annotate_cells(ax, values, image)
        ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=35, ha="right", fontsize=8)
        ax.set_yticks(range(grid.shape[0]), grid.index, fontsize=9)
        ax.set_ylabel("architecture")
        ax.set_title(label, fontsize=9)
        figure.colorbar(image, ax=ax, shrink=0.9)
    axes[-1].set_xlabel("method and bits (w = weights, a = activations)")
    return save_figure(figure, path)


def _annotate_cells(ax, values: np.ndarray, image) -> None:
    """Write each cell's value in black or white, whichever contrasts with the cell."""
    for (i, j), value in np.ndenumerate(values):
        if np.isnan(value):
            ax.text(j, i, "n/a", ha="center", va="center", fontsize=8, color="0.4")
            continue
        red, green, blue, _ = image.cmap(image.norm(value))
        light = 0.299 * red + 0.587 * green + 0.114 * blue > 0.5
        ax.text(j, i, f"{value:.3g}", ha="center", va="center", fontsize=9,
                color="black" if light else "white")


def _point_ranges(ax, positions, estimate, low, high, *, colour, marker, label) -> None:
    """Estimates as points with their interval as a line: a zero estimate stays visible."""
    estimate, low, high = (np.asarray(v, dtype=float) for v in (estimate, low, high))
    error = np.vstack([estimate - low, high - estimate])
    error = np.where(np.isfinite(error), np.maximum(error, 0), 0)
    ax.errorbar(positions, estimate, yerr=error, fmt=marker, color=colour, markersize=6,
                capsize=3, elinewidth=1.2, markeredgecolor="black", markeredgewidth=0.5,
                label=label, linestyle="")


def plot_group_drops(per_group: pd.DataFrame, path: str | Path) -> list[Path]:
    """Accuracy drop vs FP32 of each intersectional group per method/bits, as a point with the
    paired-bootstrap interval (several configurations of one cell, e.g. calibration draws: mean
    drop and mean bounds); one panel per (dataset, architecture); groups differ by colour and
    marker. A drop of 0 is a point on the zero line."""
    _require(per_group, ["dataset", "arch", "method", "weight_bits", "act_bits", "group",
                         "accuracy_drop", "accuracy_drop_low", "accuracy_drop_high"],
             "plot_group_drops")
    rows = per_group.assign(setting=_bits_label(per_group))
    panels = sorted(set(zip(rows["dataset"], rows["arch"])))
    groups = sorted(rows["group"].unique())
    colours, markers = _styles(groups, COLOURS), _styles(groups, MARKERS)
    figure = Figure(layout="constrained", figsize=(max(7, 0.9 * rows["setting"].nunique() + 2),
                                                   3.4 * len(panels) + 0.6))
    axes = figure.subplots(len(panels), 1, squeeze=False)[:, 0]
    width = 0.7 / max(len(groups), 1)
    for ax, (dataset, arch) in zip(axes, panels):
        cell = rows[(rows["dataset"] == dataset) & (rows["arch"] == arch)]
        grid = cell.pivot_table(index="setting", columns="group", aggfunc="mean",
                                values=["accuracy_drop", "accuracy_drop_low",
                                        "accuracy_drop_high"])
        ax.axhline(0, color="black", linewidth=0.8)
        for k, group in enumerate(groups):
            if ("accuracy_drop", group) not in grid:
                continue
            _point_ranges(ax, np.arange(len(grid)) + (k - (len(groups) - 1) / 2) * width,
                          grid[("accuracy_drop", group)], grid[("accuracy_drop_low", group)],
                          grid[("accuracy_drop_high", group)], colour=colours[group],
                          marker=markers[group], label=group)
        for x in np.arange(len(grid) - 1) + 0.5:
            ax.axvline(x, color="0.85", linewidth=0.6)
        ax.set_xticks(range(len(grid)), grid.index, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("accuracy drop vs FP32\n(fraction; > 0: the group lost)")
        ax.set_title(f"{dataset}/{arch}: per-group accuracy drop with paired interval", fontsize=9)
        ax.grid(True, axis="y", linestyle=":", color="0.8")
    handles = [Line2D([], [], linestyle="", marker=markers[g], color=colours[g],
                      markeredgecolor="black", markeredgewidth=0.5, label=g) for g in groups]
    figure.legend(handles=handles, loc="outside upper center", ncol=min(len(groups), 6),
                  fontsize=9, frameon=False, title="group")
    return save_figure(figure, path)


def plot_backends(groups: pd.DataFrame, path: str | Path) -> list[Path]:
    """One panel per (dataset, architecture, calibration, seed): each group's accuracy drop vs
    FP32 under each runtime's INT8 model, a point with its paired interval; runtimes differ by
    colour and marker."""
    _require(groups, ["dataset", "arch", "calibration", "seed", "execution", "group",
                      "accuracy_drop", "accuracy_drop_low", "accuracy_drop_high"], "plot_backends")
    cells = sorted(set(zip(groups["dataset"], groups["arch"], groups["calibration"],
                           groups["seed"])))
    executions = sorted(groups["execution"].unique())
    colours, markers = _styles(executions, COLOURS), _styles(executions, MARKERS)
    figure = Figure(layout="constrained", figsize=(7.5, 3.0 * len(cells) + 0.5))
    axes = figure.subplots(len(cells), 1, squeeze=False)[:, 0]
    width = 0.6 / len(executions)
    for ax, (dataset, arch, calibration, seed) in zip(axes, cells):
        cell = groups[(groups["dataset"] == dataset) & (groups["arch"] == arch)
                      & (groups["calibration"] == calibration) & (groups["seed"] == seed)]
        names = sorted(cell["group"].unique())
        ax.axhline(0, color="black", linewidth=0.8)
        for k, execution in enumerate(executions):
            rows = cell[cell["execution"] == execution].set_index("group").reindex(names)
            _point_ranges(ax, np.arange(len(names)) + (k - (len(executions) - 1) / 2) * width,
                          rows["accuracy_drop"], rows["accuracy_drop_low"],
                          rows["accuracy_drop_high"], colour=colours[execution],
                          marker=markers[execution], label=execution)
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_ylabel("accuracy drop vs FP32\n(> 0: the group lost)")
        ax.set_title(f"{dataset}/{arch} ({calibration}, seed {seed}): per-group accuracy drop "
                     "of each runtime's INT8 model, paired interval", fontsize=9)
        ax.grid(True, axis="y", linestyle=":", color="0.8")
    handles = [Line2D([], [], linestyle="", marker=markers[e], color=colours[e], label=e)
               for e in executions]
    figure.legend(handles=handles, loc="outside upper center", ncol=len(executions), fontsize=8,
                  frameon=False)
    return save_figure(figure, path)


CHANGE_MARKERS = {"WORSE": "v", "BETTER": "^", "EQUIVALENT": "o", "INCONCLUSIVE": "s"}


def plot_dp_changes(changes: pd.DataFrame, path: str | Path) -> list[Path]:
    """Each configuration's DP-gap change vs FP32 with its paired interval; colour and marker =
    its verdict (filled when EQUIVALENT or BETTER); the ±margin band shaded."""
    _require(changes, ["config_id", "delta_dp_gap", "delta_dp_gap_low", "delta_dp_gap_high",
                       "verdict", "margin"], "plot_dp_changes")
    rows = changes.sort_values("config_id").reset_index(drop=True)
    figure = Figure(layout="constrained", figsize=(11, 0.28 * len(rows) + 1.6))
    ax = figure.subplots()
    margin = float(rows["margin"].iloc[0])
    ax.axvspan(-margin, margin, color="#0072B2", alpha=0.12, linewidth=0)
    for i, row in rows.iterrows():
        error = [[max(row.delta_dp_gap - row.delta_dp_gap_low, 0)],
                 [max(row.delta_dp_gap_high - row.delta_dp_gap, 0)]]
        filled = row.verdict in ("EQUIVALENT", "BETTER")
        colour = VERDICT_COLOURS.get(row.verdict, "#999999")
        ax.errorbar([row.delta_dp_gap], [i], xerr=error, capsize=2, color=colour,
                    fmt=CHANGE_MARKERS.get(row.verdict, "s"), markersize=6,
                    markeredgecolor=colour, markerfacecolor=colour if filled else "white")
    ax.axvline(0, color="0.5", linestyle="--", linewidth=0.8)
    ax.set_yticks(range(len(rows)), rows["config_id"], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"ΔDP gap vs FP32 (fraction), paired interval; shaded: ±margin {margin:g}")
    handles = [Line2D([], [], linestyle="", marker=m, color=VERDICT_COLOURS[v], label=v,
                      markerfacecolor=VERDICT_COLOURS[v] if v in ("EQUIVALENT", "BETTER")
                      else "white")
               for v, m in CHANGE_MARKERS.items()]
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return save_figure(figure, path)


MITIGATION_PANELS = {"accuracy": "accuracy (fraction)", "dp_gap": "DP gap (fraction)",
                     "size_mib": "size (MiB)", "cost_s": "cost (s)"}


def plot_mitigation(table: pd.DataFrame, path: str | Path) -> list[Path]:
    """Accuracy, DP gap, size and cost per method: the mean over its configurations as a point
    with its value written beside it, the line spanning the lowest to the highest; each panel's
    axis spans the values (not from 0), so differences show; methods differ by colour and
    marker. A panel without values says so."""
    _require(table, ["method", *MITIGATION_PANELS], "plot_mitigation")
    methods = sorted(table["method"].unique())
    colours, markers = _styles(methods, COLOURS), _styles(methods, MARKERS)
    figure = Figure(layout="constrained", figsize=(13, 0.45 * len(methods) + 2.2))
    axes = figure.subplots(1, len(MITIGATION_PANELS), sharey=True)
    positions = np.arange(len(methods))
    for ax, (column, label) in zip(axes, MITIGATION_PANELS.items()):
        stats = table.groupby("method")[column].agg(["mean", "min", "max"]).reindex(methods)
        ax.set_title(label, fontsize=9)
        ax.grid(True, axis="x", linestyle=":", color="0.8")
        if stats["mean"].isna().all():
            ax.text(0.5, 0.5, f"no {column} recorded", transform=ax.transAxes, ha="center",
                    va="center", fontsize=8, color="0.3")
        for position, method in zip(positions, methods):
            mean, low, high = stats.loc[method, ["mean", "min", "max"]]
            if not np.isfinite(mean):
                continue
            ax.plot([low, high], [position, position], color=colours[method], linewidth=2)
            ax.plot([mean], [position], marker=markers[method], color=colours[method],
                    markeredgecolor="black", markersize=7, linestyle="")
            ax.annotate(f"{mean:.3g}", (mean, position), xytext=(0, 6), textcoords="offset points",
                        ha="center", fontsize=7)
        ax.margins(x=0.2)
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.tick_params(axis="x", labelsize=7)
    axes[0].set_yticks(positions, methods, fontsize=8)
    axes[0].invert_yaxis()
    figure.suptitle("mitigations against the plain-PTQ configurations they are compared with "
                    "(point: mean; line: lowest to highest)", fontsize=10)
    return save_figure(figure, path)


def plot_hypotheses(hypotheses: pd.DataFrame, path: str | Path) -> list[Path]:
    """One panel per hypothesis, one row per criterion: the change with its interval, the ±margin
    band of its TOST shaded, colour and marker = the criterion's verdict, and under it the test
    that gave the verdict (TOST and difference p-values, Holm). The panel title holds the
    hypothesis's verdict; a panel without an estimate says why (the hypothesis's reason)."""
    _require(hypotheses, ["id", "label", "estimate", "low", "high", "verdict"],
             "plot_hypotheses")
    frame = hypotheses.reset_index(drop=True)
    for column, default in (("margin", np.nan), ("test", ""), ("reason", ""),
                            ("hypothesis_verdict", None), ("holds", "")):
        if column not in frame:
            frame[column] = frame["verdict"] if default is None else default
    ids = list(dict.fromkeys(frame["id"]))
    has_estimate = {h: bool(np.isfinite(frame.loc[frame["id"] == h,
                                                  "estimate"].astype(float)).any())
                    for h in ids}
    heights = [(1.0 + 0.55 * len(frame[frame["id"] == h])) if has_estimate[h] else 0.75
               for h in ids]
    figure = Figure(layout="constrained", figsize=(9, sum(heights) + 0.3))
    axes = figure.subplots(len(ids), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, hypothesis in zip(axes, ids):
        rows = frame[frame["id"] == hypothesis].reset_index(drop=True)
        first = rows.iloc[0]
        holds = first["holds"] if isinstance(first["holds"], str) and first["holds"] else ""
        ax.set_title(f"{hypothesis}: {first['hypothesis_verdict']}"
                     + (f" ({holds})" if holds else ""), loc="left", fontsize=9, weight="bold")
        if not np.isfinite(rows["estimate"].astype(float)).any():
            _empty(ax, f"no estimate: {first['reason'] or 'no data'}")
            continue
        margins = rows["margin"].astype(float)
        for margin in margins[np.isfinite(margins)].unique():
            ax.axvspan(-margin, margin, color="#0072B2", alpha=0.12, linewidth=0)
        ax.axvline(0, color="0.5", linestyle="--", linewidth=0.8)
        labels = []
        for i, row in rows.iterrows():
            colour = VERDICT_COLOURS.get(row["verdict"], "#999999")
            marker = CHANGE_MARKERS.get(row["verdict"], VERDICT_MARKERS.get(row["verdict"], "s"))
            if np.isfinite(row["estimate"]):
                has = np.isfinite(row["low"]) and np.isfinite(row["high"])
                error = ([[max(row["estimate"] - row["low"], 0)],
                          [max(row["high"] - row["estimate"], 0)]] if has else None)
                ax.errorbar([row["estimate"]], [i], xerr=error, fmt=marker, color=colour,
                            markersize=7, capsize=4, markeredgecolor="black",
                            markeredgewidth=0.5)
            margin = (f"; margin ±{row['margin']:g} shaded" if np.isfinite(row["margin"])
                      else "; no margin")
            labels.append("\n".join(textwrap.wrap(f"{row['label']}: {row['verdict']}", 45))
                          + "\n" + "\n".join(textwrap.wrap(f"{row['test']}{margin}", 55)))
        ax.set_yticks(range(len(rows)), labels, fontsize=7)
        ax.set_ylim(len(rows) - 0.5, -0.5)
        if "statistic" in rows and isinstance(first["statistic"], str):
            ax.set_xlabel(first["statistic"], fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(True, axis="x", linestyle=":", color="0.8")
    return save_figure(figure, path)


def plot_method_comparison(table: pd.DataFrame, path: str | Path) -> Path:
    """The notebook comparison (``comparison.compare_quantization_methods``): accuracy and DP
    gap of each method with its bootstrap interval, one row per method so long labels fit, the
    two panels sharing the labels. Written as PNG only; returns its path."""
    _require(table, ["label", "accuracy", "accuracy_low", "accuracy_high", "dp_gap",
                     "dp_gap_low", "dp_gap_high"], "plot_method_comparison")
    path = Path(path)
    rows = table.reset_index(drop=True)
    colours, markers = _styles(list(rows["label"]), COLOURS), _styles(list(rows["label"]), MARKERS)
    figure = Figure(layout="constrained", figsize=(9, 0.45 * len(rows) + 1.6))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2, sharey=True)
    labels = ["\n".join(textwrap.wrap(str(label), 40)) for label in rows["label"]]
    for ax, metric in zip(axes, ("accuracy", "dp_gap")):
        for i, row in rows.iterrows():
            error = [[max(row[metric] - row[f"{metric}_low"], 0)],
                     [max(row[f"{metric}_high"] - row[metric], 0)]]
            ax.errorbar([row[metric]], [i], xerr=error, fmt=markers[row["label"]],
                        color=colours[row["label"]], capsize=4, markersize=7)
        ax.set_title(f"{metric} (fraction) with bootstrap interval", fontsize=9)
        ax.grid(True, axis="x", linestyle=":", color="0.8")
        ax.margins(x=0.15)
    axes[0].set_yticks(range(len(rows)), labels, fontsize=8)
    axes[0].invert_yaxis()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path
