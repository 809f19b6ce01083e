"""Calibration composition study: does a composed calibration set beat random calibration?

Reads the mitigation rows of one run (never a model). A *treatment* row is a
``bias_aware_calibration`` row whose ``compare_to`` names its *control*: static PTQ on a random
calibration set of the same architecture, bits, observer, size and draw. Draw ``d`` of every
kind uses the same seed (``datasets.calibration_seed``), so (treatment, control) of one draw is a
paired unit and the draws are the units of replication.

A cell is (dataset, arch, weight_bits, act_bits, observer, calibration_size, calibration_kind).
For each cell and each criterion in ``CRITERIA`` the per-draw change (kind minus random, same
draw) is computed from the saved predictions and judged with the project's rules:
``unit_stats.pooled_interval`` (the t-interval over draws plus the test-sample error the draws
share, from ``shared_paired_replicates``), TOST at the criterion's margin, and
``verdicts.holm_verdicts`` across the cell's criteria. A cell with fewer than ``MIN_DRAWS``
draws is INCONCLUSIVE. An architecture's verdict per kind pools its cells: each draw's change is
averaged over the architecture's bits, observers and sizes of that kind, then judged the same
way. The measured calibration cost ratio (kind / random, median over draws with its range) is
reported beside the verdict, never as a criterion.

The *focus group* is the group ``data.synthetic.exposure`` plants a lighting difference on, when
the run has one (``synthetic.planted_groups``); otherwise the smallest group of the test set.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np
import pandas as pd

import fairness_metrics as fm
import synthetic
import unit_stats as us
import verdicts as vd
from prediction_store import PredictionStore

METHOD = "bias_aware_calibration"
CONTROL_KIND = "random"
MIN_DRAWS = 5
"""Fewest paired draws a cell (or an architecture) needs for a verdict."""
CRITERIA = ("group_accuracy", "worst_group_accuracy", "accuracy_gap", "dp_gap", "eo_gap")
"""Changes judged in every cell; ``group_accuracy`` is the focus group's accuracy."""
CELL_KEYS = ["dataset", "arch", "weight_bits", "act_bits", "observer", "calibration_size",
             "calibration_kind"]
ARCH_KEYS = ["dataset", "arch", "calibration_kind"]
ALL = "all"
"""The value of a pooled key in an architecture row."""
REPLICATES = 400
COLUMNS = CELL_KEYS + ["scope", "focus_group", "metric", "margin", "n_draws", "change",
                       "change_low", "change_high", "p_difference", "p_difference_holm",
                       "p_equivalent",
                       "p_equivalent_holm", "verdict", "note", "cost_ratio", "cost_ratio_low",
                       "cost_ratio_high"]
TOO_FEW_DRAWS = "{n} paired draws, fewer than the {minimum} a verdict needs"


def margin_for(metric: str, margins: dict) -> float:
    """A criterion's margin: ``margins[metric]`` when set, else the accuracy margin for the
    accuracy criteria (group, worst-group, gap)."""
    return float(margins.get(metric, margins["accuracy"]))


def direction(metric: str) -> bool:
    return True if metric == "group_accuracy" else vd.higher_is_better(metric)


def focus_group(config: dict, groups) -> str:
    """The group ``data.synthetic.exposure`` plants a lighting difference on
    (``synthetic.planted_groups``), else the smallest of ``groups`` (test-sample group labels)."""
    data = config.get("data") or {}
    if data.get("dataset", "synthetic") == "synthetic":
        planted = synthetic.planted_groups(data.get("synthetic"))["lighting"]
        if planted is not None:
            return planted
    names, counts = np.unique(np.asarray(groups, dtype=str), return_counts=True)
    return str(names[np.argmin(counts)])


def paired_units(configs: pd.DataFrame) -> pd.DataFrame:
    """One row per treatment with its control: cell keys, draw, config_id, reference_id, and
    both calibration costs. Empty when the run has no composition study."""
    if configs.empty or "compare_to" not in configs:
        return pd.DataFrame(columns=CELL_KEYS + ["draw", "config_id", "reference_id"])
    rows = _with_kind_and_size(configs)
    by_id = rows.set_index("config_id")
    treated = rows[(rows["method"] == METHOD) & rows["compare_to"].isin(by_id.index)].copy()
    control = by_id.loc[treated["compare_to"]]
    keep = (control["calibration_kind"].to_numpy() == CONTROL_KIND)
    treated, control = treated[keep], control[keep]
    cost = "calibration_cost_s" if "calibration_cost_s" in rows else "cost_s"
    units = treated[CELL_KEYS + ["draw", "config_id"]].assign(
        reference_id=treated["compare_to"].to_numpy(),
        cost_s=pd.to_numeric(treated[cost], errors="coerce").to_numpy(),
        reference_cost_s=pd.to_numeric(control[cost], errors="coerce").to_numpy())
    for key in CELL_KEYS:
        units[key] = units[key].fillna("")
    return units.sort_values(CELL_KEYS + ["draw"]).reset_index(drop=True)


def _with_kind_and_size(configs: pd.DataFrame) -> pd.DataFrame:
    """Rows with ``calibration_kind`` and ``calibration_size``; rows written before those
    columns existed get them from the ``<kind>-<size>`` calibration label."""
    rows = configs.copy()
    label = rows["calibration"].astype(str).str.rsplit("-", n=1)
    if "calibration_kind" not in rows:
        rows["calibration_kind"] = label.str[0]
    if "calibration_size" not in rows:
        rows["calibration_size"] = pd.to_numeric(label.str[1], errors="coerce").astype("Int64")
    for key in CELL_KEYS + ["draw", "compare_to", "cost_s"]:
        if key not in rows:
            rows[key] = np.nan
    return rows


def group_metrics(predictions: pd.DataFrame, group: str) -> dict:
    """The criteria of one prediction table: ``group``'s accuracy and the gaps over groups."""
    with warnings.catch_warnings():  # a group without positives has no TPR: not a criterion here
        warnings.simplefilter("ignore", fm.UndefinedRateWarning)
        table = fm.group_table(predictions["y_true"].to_numpy(), predictions["y_pred"].to_numpy(),
                               sensitive_features=predictions["group"].to_numpy(),
                               min_group_size=0)
    gaps = fm.fairness_gaps(table)
    values = {m: gaps[m] for m in CRITERIA if m != "group_accuracy"}
    values["group_accuracy"] = float(table["accuracy"].get(group, math.nan))
    return values


def study(configs: pd.DataFrame, store: PredictionStore, *, config: dict,
          margins: dict, alpha: float = 0.05, ci: float = 0.95, n_resamples: int = 2000,
          seed: int = 0) -> pd.DataFrame:
    """The composition study of a run: one row per (cell or architecture, criterion), with the
    paired per-draw change (``change`` with ``change_low``/``change_high``), Holm-adjusted
    p-values, verdict and the cost ratio
    (``COLUMNS``). ``configs``: the run's analysable result rows; ``store``: their prediction
    tables; ``config``: the run's config.yaml as a dict."""
    units = paired_units(configs)
    if units.empty:
        return pd.DataFrame(columns=COLUMNS)
    first = units["config_id"].iloc[0]
    focus = focus_group(config, store.table(first)["group"])
    deltas, replicates = _unit_changes(units, store, first, focus, min(REPLICATES, n_resamples),
                                       seed)
    options = dict(margins=margins, alpha=alpha, ci=ci, focus=focus)
    rows = []
    for key, members in units.groupby(CELL_KEYS, sort=False).groups.items():
        positions = units.index.get_indexer(members)
        rows += _judge(dict(zip(CELL_KEYS, key), scope="cell"), units.iloc[positions],
                       deltas.iloc[positions], {m: r[:, positions] for m, r in replicates.items()},
                       **options)
    for key, members in units.groupby(ARCH_KEYS, sort=False).groups.items():
        positions = units.index.get_indexer(members)
        own = units.iloc[positions]
        draws = own["draw"].to_numpy()
        labels = list(dict.fromkeys(draws.tolist()))
        per_draw = deltas.iloc[positions].groupby(draws, sort=False).mean().loc[labels]
        pooled = {m: np.column_stack([r[:, positions][:, draws == d].mean(axis=1) for d in labels])
                  for m, r in replicates.items()}
        head = {k: ALL for k in CELL_KEYS} | dict(zip(ARCH_KEYS, key)) | {"scope": "architecture"}
        rows += _judge(head, own, per_draw, pooled, **options)
    return pd.DataFrame(rows, columns=COLUMNS)


def _unit_changes(units, store: PredictionStore, first: str, focus, n_replicates, seed):
    """Per unit (treatment - control) of every criterion, and per criterion the shared-resample
    bootstrap changes (B, units), every prediction aligned with ``first``'s sample order."""
    changes, pairs = [], []
    for treatment, control in zip(units["config_id"], units["reference_id"]):
        pair = store.pair(treatment, control, order=first)
        new, old = group_metrics(pair.predictions, focus), group_metrics(pair.reference, focus)
        changes.append({m: new[m] - old[m] for m in CRITERIA})
        pairs.append(pair.arrays()[1:3])  # (y_pred, y_reference)
    y_true, groups = store.table(first)["y_true"].to_numpy(), store.table(first)["group"].to_numpy()
    replicates = {}
    for metric in CRITERIA:
        name, group = ("accuracy", focus) if metric == "group_accuracy" else (metric, fm.OVERALL)
        replicates[metric] = us.shared_paired_replicates(y_true, pairs, groups, name, group=group,
                                                         n_resamples=n_replicates, seed=seed)
    return pd.DataFrame(changes, columns=list(CRITERIA)), replicates


def _judge(head: dict, units: pd.DataFrame, deltas: pd.DataFrame, replicates: dict, *,
           margins: dict, alpha: float, ci: float, focus: str) -> list[dict]:
    """One row per criterion: pooled interval, TOST, Holm across the criteria, the verdict."""
    n_draws = len(deltas)
    evidence = [us.pooled_interval(deltas[m].to_numpy(dtype=float), replicates[m], ci=ci,
                                   margin=margin_for(m, margins)) for m in CRITERIA]
    verdicts, p_difference, p_equivalent = vd.holm_verdicts(
        [e.estimate for e in evidence], [e.p_difference for e in evidence],
        [e.p_equivalent for e in evidence], [direction(m) for m in CRITERIA], alpha=alpha)
    note = TOO_FEW_DRAWS.format(n=n_draws, minimum=MIN_DRAWS) if n_draws < MIN_DRAWS else ""
    cost = cost_ratio(units)
    return [{**head, "focus_group": focus, "metric": m, "margin": margin_for(m, margins),
             "n_draws": n_draws, "change": e.estimate, "change_low": e.low, "change_high": e.high,
             "p_difference": e.p_difference, "p_difference_holm": float(d),
             "p_equivalent": e.p_equivalent, "p_equivalent_holm": float(q),
             "verdict": vd.INCONCLUSIVE if note else v, "note": note or e.note, **cost}
            for m, e, v, d, q in zip(CRITERIA, evidence, verdicts, p_difference, p_equivalent)]


def cost_ratio(units: pd.DataFrame) -> dict:
    """Calibration cost of the kind / of random, per draw: median and range over the draws."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = (units["cost_s"].to_numpy(dtype=float)
                  / units["reference_cost_s"].to_numpy(dtype=float))
    ratios = ratios[np.isfinite(ratios)]
    if not ratios.size:
        return {"cost_ratio": math.nan, "cost_ratio_low": math.nan, "cost_ratio_high": math.nan}
    return {"cost_ratio": float(np.median(ratios)), "cost_ratio_low": float(ratios.min()),
            "cost_ratio_high": float(ratios.max())}


def verdict_table(result: pd.DataFrame, fmt: Callable = str) -> pd.DataFrame:
    """One line per cell or architecture for reading: each criterion as
    ``change [low, high] VERDICT``, the draws and the cost ratio ``median [min, max]``."""
    if result.empty:
        return pd.DataFrame()
    keys = ["scope"] + CELL_KEYS + ["focus_group", "n_draws"]
    rows = []
    ordered = result.sort_values("scope", key=lambda s: s != "architecture", kind="stable")
    for key, frame in ordered.groupby(keys, sort=False):
        row = dict(zip(keys, key))
        for _, r in frame.iterrows():
            row[f"Δ {r['metric']}"] = (f"{fmt(r['change'])} [{fmt(r['change_low'])}, "
                                       f"{fmt(r['change_high'])}] {r['verdict']}")
        first = frame.iloc[0]
        row["cost ratio vs random"] = (f"{fmt(first['cost_ratio'])} "
                                       f"[{fmt(first['cost_ratio_low'])}, "
                                       f"{fmt(first['cost_ratio_high'])}]")
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.rename(columns={"Δ group_accuracy": "Δ focus-group accuracy"})
