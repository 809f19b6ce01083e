"""The effect the synthetic benchmark plants, with its known answer beside the verdict the run
reached (the report's *Planted effects* section; docs/synthetic.md, *Planted effects*).

``lighting``: ``data.synthetic.exposure`` gives one group (``synthetic.planted_groups``) a
contrast the other groups do not share. Known answer: static PTQ at ``PLANT_BITS`` (4-bit
activations, whose ranges the brighter images set) costs the lower-contrast side more accuracy.
In the default config the planted group is the dimmer one, so it loses more than the other
groups together (WORSE); were it the brighter one, it would lose less (BETTER). The change is
the group's accuracy drop (FP32 − quantized) minus the other groups' size-weighted drop, per
static PTQ configuration at those bits (every calibration draw of the calibration study), from
the paired per-group drops of ``per_group.csv``: each group's standard error read off its
bootstrap interval (half-width / z), the groups' disjoint samples adding their variances. How
the plant was chosen, and the seeds it was run on: docs/synthetic.md, docs/findings.md.

The claim is made once, pooled over the architectures the run judged it on (FP32 above chance):
the mean of their changes, with the mean of their standard errors as the error (an architecture
with several configurations, e.g. calibration draws, adds their spread, ``arch_change``). The
configurations share one test set, so their errors are correlated; the standard deviation of a
mean is at most the mean of the standard deviations whatever the correlation, so this error is
an upper bound and the test conservative. The pooled row gets the verdict rules of
``verdicts`` (TOST at the accuracy margin); the per-architecture rows beside it are shown, not
claimed. A run without the cell gets a row saying so (``matches`` empty), never a verdict.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

import synthetic
import verdicts as vd

PLANT_BITS = (8, 4)
"""(weight bits, activation bits) of the static PTQ cell the planted answer is claimed at."""
ALL = "all (pooled)"
"""The ``arch`` of the row that carries a plant's claim."""
LIGHTING_ANSWER = ("static PTQ at w{w}a{a} costs {group} ({side} contrast than the other groups) "
                   "{more} accuracy than the other groups ({verdict})")
NOT_RUN = "not judged: the run has no {what}"
COLUMNS = ["plant", "group", "arch", "where", "known_answer", "known_verdict", "n_configs",
           "change", "change_low", "change_high", "verdict", "matches"]


def plant_checks(config: dict, per_group: pd.DataFrame, table: pd.DataFrame, *, alpha: float,
                 ci: float, margin: float, min_balanced_accuracy: float) -> pd.DataFrame:
    """The plant's claim pooled over architectures and the per-architecture rows beside it
    (``COLUMNS``). Empty when the run's data are not the synthetic set or plant nothing.
    ``config``: the run's config.yaml as a dict. An architecture whose FP32 balanced-accuracy
    lower bound is not above ``min_balanced_accuracy`` takes no part, as in every verdict."""
    data = config.get("data") or {}
    if data.get("dataset", "synthetic") != "synthetic":
        return pd.DataFrame(columns=COLUMNS)
    group = synthetic.planted_groups(data.get("synthetic"))["lighting"]
    if group is None:
        return pd.DataFrame(columns=COLUMNS)
    known = lighting_verdict(data.get("synthetic"), group)
    w, a = PLANT_BITS
    answer = LIGHTING_ANSWER.format(
        w=w, a=a, group=group, side="higher" if known == vd.BETTER else "lower",
        more="less" if known == vd.BETTER else "more", verdict=known)
    changes = drop_changes(group, per_group, table, ci, min_balanced_accuracy)
    rows = _claim("lighting", group, answer, known, changes,
                  f"static PTQ at w{w}a{a}", alpha=alpha, ci=ci, margin=margin)
    return pd.DataFrame(rows, columns=COLUMNS)


def lighting_verdict(knobs: dict | None, group: str) -> str:
    """BETTER where ``group`` has the higher contrast (it loses less), else WORSE."""
    gains = synthetic.contrast_gains(knobs)
    others = {v for g, v in gains.items() if g != group}
    return vd.BETTER if gains[group] > max(others) else vd.WORSE


def drop_changes(group: str, per_group: pd.DataFrame, table: pd.DataFrame, ci: float,
                 min_balanced_accuracy: float) -> pd.DataFrame:
    """Per static PTQ configuration at ``PLANT_BITS`` (every calibration draw) whose FP32
    reference is above chance: arch, where, the drop difference and its error
    (``drop_difference``)."""
    if per_group.empty or table.empty:
        return pd.DataFrame(columns=["arch", "where", "change", "se"])
    w, a = PLANT_BITS
    rows = table[(table["method"] == "ptq_static")
                 & (pd.to_numeric(table["weight_bits"], errors="coerce") == w)
                 & (pd.to_numeric(table["act_bits"], errors="coerce") == a)
                 & table["config_id"].isin(per_group["config_id"])]
    low = table.set_index("config_id")["balanced_accuracy_low"]
    rows = rows[np.array([vd.is_above_chance(low.get(ref, math.nan), min_balanced_accuracy)
                          for ref in rows["reference_id"]], dtype=bool)]
    changes = [drop_difference(per_group[per_group["config_id"] == r.config_id], group, ci=ci)
               for r in rows.itertuples()]
    return pd.DataFrame({
        "arch": rows["arch"].to_numpy(),
        "where": [f"static PTQ w{w}a{a}, calibration {r.calibration}" for r in rows.itertuples()],
        "change": [c[0] for c in changes], "se": [c[1] for c in changes]})


def _claim(plant, group, answer, known, changes, what, *, alpha, ci, margin) -> list[dict]:
    head = dict(plant=plant, group=group, known_answer=answer, known_verdict=known)
    if changes.empty:
        return [{**head, "arch": ALL, "where": NOT_RUN.format(what=what), "n_configs": 0,
                 "change": math.nan, "change_low": math.nan, "change_high": math.nan,
                 "verdict": "", "matches": None}]
    per_arch = changes.groupby("arch", sort=True).apply(arch_change, include_groups=False)
    judge = dict(alpha=alpha, ci=ci, margin=margin, known=known)
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
           known: str) -> dict:
    """A drop difference (lower is better for the group) with a normal standard error: its
    interval, verdict and whether the verdict is the ``known`` one."""
    z = stats.norm.ppf(0.5 + ci / 2)
    if not se > 0:
        p_difference = p_equivalent = 1.0
    else:
        p_difference = float(2 * stats.norm.sf(abs(estimate) / se))
        p_equivalent = float(max(stats.norm.sf((estimate + margin) / se),
                                 stats.norm.sf((margin - estimate) / se)))
    verdict = vd.verdict(estimate, p_difference, p_equivalent, alpha=alpha,
                         better_when_higher=False)
    return {"change": estimate, "change_low": estimate - z * se,
            "change_high": estimate + z * se, "verdict": verdict, "matches": verdict == known}


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
