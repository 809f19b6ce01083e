"""The effects the synthetic benchmark plants, each with its known answer beside the verdict the
run reached (the report's *Planted effects* section; docs/synthetic.md, *Planted effects*).

Two knobs of the synthetic set plant an effect on one group (``synthetic.planted_groups``), and
both answers are claimed at 4-bit activations (``PLANT_ACT_BITS``), where the range matters:

- ``lighting``: ``data.synthetic.exposure`` gives one group a contrast the others do not have,
  so its activations run past the ranges a calibration set dominated by the other groups sets.
  Known answer: a composed calibration kind is BETTER than random calibration for that group's
  accuracy. Read from the calibration study's cells (change: kind − random, per draw).
- ``weak_cue``: ``data.synthetic.cue_strength`` makes one group's smile cue the faintest.
  Known answer: static PTQ costs that group more accuracy than the other groups together
  (WORSE). The change is the group's accuracy drop (FP32 − quantized) minus the other groups'
  size-weighted drop, per static PTQ configuration (every calibration draw), from the paired
  per-group drops of ``per_group.csv``: each group's standard error read off its bootstrap
  interval (half-width / z), the groups' disjoint samples adding their variances.

Each claim is made once, pooled over the architectures the run judged it on: the mean of their
changes, with the mean of their standard errors as the error (an architecture with several
configurations, e.g. calibration draws, adds their spread, ``arch_change``). The configurations
share one test set, so their errors are correlated; the standard deviation of a mean is at most
the mean of the standard deviations whatever the correlation, so this error is an upper bound
and the test conservative. The pooled row gets the verdict rules of ``verdicts`` (TOST at the
accuracy margin); the per-architecture rows beside it are shown, not claimed. A plant whose
cell the run did not include gets a row saying so (``matches`` empty), never a verdict.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

import synthetic
import verdicts as vd

PLANT_ACT_BITS = 4
"""Activation bits where both planted answers are claimed (4-bit activations)."""
ALL = "all (pooled)"
"""The ``arch`` of the row that carries a plant's claim."""
LIGHTING_ANSWER = "composed calibration BETTER than random for {group} accuracy"
WEAK_CUE_ANSWER = "static PTQ costs {group} more accuracy than the other groups (WORSE)"
NOT_RUN = "not judged: the run has no {what}"
COLUMNS = ["plant", "group", "arch", "where", "known_answer", "known_verdict", "n_configs",
           "change", "change_low", "change_high", "verdict", "matches"]


def plant_checks(config: dict, calibration: pd.DataFrame, per_group: pd.DataFrame,
                 table: pd.DataFrame, *, alpha: float, ci: float, margin: float) -> pd.DataFrame:
    """Per plant: its claim pooled over architectures and the per-architecture rows beside it
    (``COLUMNS``). Empty when the run's data are not the synthetic set or plant nothing.
    ``config``: the run's config.yaml as a dict."""
    data = config.get("data") or {}
    if data.get("dataset", "synthetic") != "synthetic":
        return pd.DataFrame(columns=COLUMNS)
    planted = synthetic.planted_groups(data.get("synthetic"))
    options = dict(alpha=alpha, ci=ci, margin=margin)
    rows = []
    if planted["lighting"]:
        group = planted["lighting"]
        rows += _claim("lighting", group, LIGHTING_ANSWER.format(group=group), vd.BETTER,
                       lighting_changes(calibration, ci), "calibration study", **options)
    if planted["weak_cue"]:
        group = planted["weak_cue"]
        rows += _claim("weak_cue", group, WEAK_CUE_ANSWER.format(group=group), vd.WORSE,
                       weak_cue_changes(group, per_group, table, ci), "static PTQ", **options)
    return pd.DataFrame(rows, columns=COLUMNS)


def lighting_changes(calibration: pd.DataFrame, ci: float) -> pd.DataFrame:
    """Per calibration-study cell at ``PLANT_ACT_BITS``: arch, where, change and its error."""
    if calibration.empty:
        return pd.DataFrame(columns=["arch", "where", "change", "se"])
    cells = calibration[(calibration["scope"] == "cell")
                        & (calibration["metric"] == "group_accuracy")
                        & (pd.to_numeric(calibration["act_bits"], errors="coerce")
                           == PLANT_ACT_BITS)]
    z = stats.norm.ppf(0.5 + ci / 2)
    return pd.DataFrame({
        "arch": cells["arch"],
        "where": [f"{r.calibration_kind} vs random, w{r.weight_bits}a{r.act_bits} {r.observer}, "
                  f"{int(r.calibration_size)} images, {int(r.n_draws)} draws"
                  for r in cells.itertuples()],
        "change": cells["change"], "se": (cells["change_high"] - cells["change_low"]) / (2 * z)})


def weak_cue_changes(group: str, per_group: pd.DataFrame, table: pd.DataFrame,
                     ci: float) -> pd.DataFrame:
    """Per static PTQ configuration at ``PLANT_ACT_BITS`` (every draw): arch, where, the drop
    difference and its error (``drop_difference``)."""
    if per_group.empty or table.empty:
        return pd.DataFrame(columns=["arch", "where", "change", "se"])
    rows = table[(table["method"] == "ptq_static")
                 & (pd.to_numeric(table["act_bits"], errors="coerce") == PLANT_ACT_BITS)
                 & table["config_id"].isin(per_group["config_id"])]
    changes = [drop_difference(per_group[per_group["config_id"] == r.config_id], group, ci=ci)
               for r in rows.itertuples()]
    return pd.DataFrame({
        "arch": rows["arch"].to_numpy(),
        "where": [f"w{r.weight_bits}a{r.act_bits}, every calibration draw"
                  for r in rows.itertuples()],
        "change": [c[0] for c in changes], "se": [c[1] for c in changes]})


def _claim(plant, group, answer, known, changes, what, *, alpha, ci, margin) -> list[dict]:
    head = dict(plant=plant, group=group, known_answer=answer, known_verdict=known)
    if changes.empty:
        return [{**head, "arch": ALL, "where": NOT_RUN.format(
            what=f"{what} at {PLANT_ACT_BITS}-bit activations"), "n_configs": 0,
            "change": math.nan, "change_low": math.nan, "change_high": math.nan,
            "verdict": "", "matches": None}]
    per_arch = changes.groupby("arch", sort=True).apply(arch_change, include_groups=False)
    judge = dict(alpha=alpha, ci=ci, margin=margin, better_when_higher=known == vd.BETTER)
    rows = [{**head, "arch": ALL, "where": f"mean over {len(per_arch)} architectures",
             "n_configs": int(per_arch["n_configs"].sum()),
             **judged(per_arch["change"].mean(), per_arch["se"].mean(), **judge)}]
    for arch, r in per_arch.iterrows():
        rows.append({**head, "arch": arch, "where": r["where"],
                     "n_configs": int(r["n_configs"]), **judged(r["change"], r["se"], **judge),
                     "matches": None})
    return rows


def arch_change(changes: pd.DataFrame) -> pd.Series:
    """One architecture's changes (e.g. one per calibration draw) as their mean, with the mean
    of their errors (the shared test set's part, bounded) and their spread over configurations
    (``s² / n``) as its error."""
    n = len(changes)
    spread = changes["change"].var(ddof=1) / n if n > 1 else 0.0
    return pd.Series({"where": changes["where"].iloc[0], "n_configs": n,
                      "change": changes["change"].mean(),
                      "se": math.sqrt(changes["se"].mean() ** 2 + spread)})


def judged(estimate: float, se: float, *, alpha: float, ci: float, margin: float,
           better_when_higher: bool) -> dict:
    """A change with a normal standard error: its interval, verdict and whether it matches."""
    z = stats.norm.ppf(0.5 + ci / 2)
    if not se > 0:
        p_difference = p_equivalent = 1.0
    else:
        p_difference = float(2 * stats.norm.sf(abs(estimate) / se))
        p_equivalent = float(max(stats.norm.sf((estimate + margin) / se),
                                 stats.norm.sf((margin - estimate) / se)))
    verdict = vd.verdict(estimate, p_difference, p_equivalent, alpha=alpha,
                         better_when_higher=better_when_higher)
    expected = vd.BETTER if better_when_higher else vd.WORSE
    return {"change": estimate, "change_low": estimate - z * se,
            "change_high": estimate + z * se, "verdict": verdict, "matches": verdict == expected}


def drop_difference(groups: pd.DataFrame, group: str, *, ci: float) -> tuple[float, float]:
    """(estimate, standard error) of ``group``'s accuracy drop minus the size-weighted drop of
    the other groups, from one configuration's ``per_group`` rows: each group's error is read
    off its paired bootstrap interval (half-width / z), and the groups' disjoint samples add
    their variances."""
    z = stats.norm.ppf(0.5 + ci / 2)
    se = (groups["accuracy_drop_high"] - groups["accuracy_drop_low"]).to_numpy(float) / (2 * z)
    drops, n = groups["accuracy_drop"].to_numpy(float), groups["n"].to_numpy(float)
    own = (groups["group"] == group).to_numpy()
    weights = np.where(own, 0.0, n) / n[~own].sum()
    estimate = drops[own].sum() - (weights * drops).sum()
    return float(estimate), math.sqrt((se[own] ** 2).sum() + ((weights * se) ** 2).sum())
