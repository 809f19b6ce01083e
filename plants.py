"""The effects the synthetic benchmark plants, each with its known answer beside the verdict the
run reached (the report's *Planted effects* section; docs/synthetic.md, *Planted effects*).

Two knobs of the synthetic set plant an effect on one group (``synthetic.planted_groups``):

- ``lighting``: ``data.synthetic.exposure`` gives one group a contrast the others do not have,
  so its activations run past the ranges a calibration set dominated by the other groups sets.
  Known answer: at 4-bit activations, each composed calibration kind is BETTER than random
  calibration for that group's accuracy (the calibration study's verdict, per architecture).
- ``weak_cue``: ``data.synthetic.cue_strength`` makes one group's smile cue the faintest, so
  more of its test faces lie near the decision boundary. Known answer: static PTQ at
  ``WEAK_CUE_BITS`` costs that group more accuracy than the other groups together (WORSE).

The weak-cue change is the group's accuracy drop (FP32 − quantized) minus the other groups'
pooled drop, from the paired per-group drops of ``per_group.csv``: its standard error combines
the groups' bootstrap intervals (disjoint samples, normal approximation), Holm across the
architectures, TOST at the accuracy margin, the verdict rules of ``verdicts``. A plant whose
cell the run did not include gets a row saying so (``matches`` empty), never a verdict.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

import synthetic
import verdicts as vd

LIGHTING_ACT_BITS = 4
"""Activation bits where the lighting plant's known answer is claimed (the range matters)."""
WEAK_CUE_BITS = (4, 8)
"""(weight, activation) bits of static PTQ where the weak-cue plant's answer is claimed."""
LIGHTING_ANSWER = ("{kind} calibration BETTER than random for {group} accuracy at "
                   f"{LIGHTING_ACT_BITS}-bit activations")
WEAK_CUE_ANSWER = ("static PTQ w{w}a{a} costs {group} more accuracy than the other groups "
                   "(drop difference WORSE)")
NOT_RUN = "not judged: the run has no {what}"
COLUMNS = ["plant", "group", "arch", "where", "known_answer", "known_verdict", "change",
           "change_low", "change_high", "verdict", "matches"]


def plant_checks(config: dict, calibration: pd.DataFrame, per_group: pd.DataFrame,
                 table: pd.DataFrame, *, alpha: float, ci: float, margin: float) -> pd.DataFrame:
    """One row per (plant, architecture, cell): the known answer, the verdict reached and
    whether they match (``COLUMNS``). Empty when the run's data are not the synthetic set or
    plant nothing. ``config``: the run's config.yaml as a dict."""
    data = config.get("data") or {}
    if data.get("dataset", "synthetic") != "synthetic":
        return pd.DataFrame(columns=COLUMNS)
    planted = synthetic.planted_groups(data.get("synthetic"))
    rows = []
    if planted["lighting"]:
        rows += lighting_rows(planted["lighting"], calibration)
    if planted["weak_cue"]:
        rows += weak_cue_rows(planted["weak_cue"], per_group, table, alpha=alpha, ci=ci,
                              margin=margin)
    return pd.DataFrame(rows, columns=COLUMNS)


def _row(plant, group, arch, where, answer, known, change=(math.nan,) * 3, verdict=""):
    matches = (verdict == known) if verdict else None
    return dict(zip(COLUMNS, (plant, group, arch, where, answer, known, *change, verdict,
                              matches)))


def lighting_rows(group: str, calibration: pd.DataFrame) -> list[dict]:
    """The calibration study's focus-group verdicts at ``LIGHTING_ACT_BITS`` activations."""
    cells = calibration[(calibration.get("scope") == "cell")
                        & (calibration.get("metric") == "group_accuracy")] \
        if not calibration.empty else calibration
    cells = cells[pd.to_numeric(cells.get("act_bits"), errors="coerce") == LIGHTING_ACT_BITS] \
        if not cells.empty else cells
    if cells.empty:
        answer = LIGHTING_ANSWER.format(kind="composed", group=group)
        return [_row("lighting", group, "", NOT_RUN.format(
            what=f"calibration study at {LIGHTING_ACT_BITS}-bit activations"), answer,
            vd.BETTER)]
    return [_row("lighting", group, r.arch,
                 f"w{r.weight_bits}a{r.act_bits} {r.observer}, {r.calibration_size} images, "
                 f"{r.n_draws} draws", LIGHTING_ANSWER.format(kind=r.calibration_kind, group=group),
                 vd.BETTER, (r.change, r.change_low, r.change_high), r.verdict)
            for r in cells.itertuples()]


def weak_cue_rows(group: str, per_group: pd.DataFrame, table: pd.DataFrame, *, alpha: float,
                  ci: float, margin: float) -> list[dict]:
    """Per architecture: the weak-cue group's drop minus the others' at ``WEAK_CUE_BITS``."""
    w, a = WEAK_CUE_BITS
    answer = WEAK_CUE_ANSWER.format(w=w, a=a, group=group)
    chosen = _weak_cue_configs(per_group, table)
    if not chosen:
        return [_row("weak_cue", group, "", NOT_RUN.format(what=f"static PTQ at w{w}a{a}"),
                     answer, vd.WORSE)]
    changes = {arch: drop_difference(per_group[per_group["config_id"] == cid], group, ci=ci)
               for arch, cid in chosen.items()}
    estimates = [c[0] for c in changes.values()]
    p_difference = [c[3] for c in changes.values()]
    p_equivalent = [c[4](margin) for c in changes.values()]
    verdicts, _, _ = vd.holm_verdicts(estimates, p_difference, p_equivalent,
                                      [False] * len(changes), alpha=alpha)
    return [_row("weak_cue", group, arch, f"ptq_static w{w}a{a}, Holm across architectures",
                 answer, vd.WORSE, change[:3], verdict)
            for (arch, change), verdict in zip(changes.items(), verdicts)]


def _weak_cue_configs(per_group: pd.DataFrame, table: pd.DataFrame) -> dict[str, str]:
    """arch -> config_id of its static PTQ row at ``WEAK_CUE_BITS`` (the simulated one when a
    configuration also ran on integer kernels or a runtime)."""
    if per_group.empty or table.empty:
        return {}
    w, a = WEAK_CUE_BITS
    rows = table[(table["method"] == "ptq_static")
                 & (pd.to_numeric(table["weight_bits"], errors="coerce") == w)
                 & (pd.to_numeric(table["act_bits"], errors="coerce") == a)
                 & table["config_id"].isin(per_group["config_id"])]
    if "execution" in rows:
        rows = rows.sort_values("execution", key=lambda s: s.fillna("") != "simulated",
                                kind="stable")
    return dict(rows.drop_duplicates("arch")[["arch", "config_id"]].itertuples(index=False))


def drop_difference(groups: pd.DataFrame, group: str, *, ci: float):
    """(estimate, low, high, p_difference, p_equivalent(margin)) of ``group``'s accuracy drop
    minus the pooled drop of the other groups, from one configuration's ``per_group`` rows.

    Each group's standard error is read off its paired bootstrap interval (half-width / z);
    the groups hold disjoint samples, so the variances add; the pooled drop weights the other
    groups by their sizes."""
    z = stats.norm.ppf(0.5 + ci / 2)
    se = (groups["accuracy_drop_high"] - groups["accuracy_drop_low"]).to_numpy(float) / (2 * z)
    drops, n = groups["accuracy_drop"].to_numpy(float), groups["n"].to_numpy(float)
    own = (groups["group"] == group).to_numpy()
    weights = np.where(own, 0.0, n) / n[~own].sum()
    estimate = drops[own].sum() - (weights * drops).sum()
    error = math.sqrt((se[own] ** 2).sum() + ((weights * se) ** 2).sum())
    if not error > 0:
        return estimate, estimate, estimate, 1.0, lambda margin: 1.0
    p_difference = float(2 * stats.norm.sf(abs(estimate) / error))

    def p_equivalent(margin: float) -> float:
        return float(max(stats.norm.sf((estimate + margin) / error),
                         stats.norm.sf((margin - estimate) / error)))
    return estimate, estimate - z * error, estimate + z * error, p_difference, p_equivalent
