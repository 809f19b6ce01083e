"""The answer a reader comes for: which compressed model to ship, and what it costs each group --
or why nothing can be recommended.

Built from the tables the analysis already computed (the configuration table, the per-group
table and the production recommendation of ``stats_tables.recommend``); it computes no new
statistic. ``report`` writes it first in ``report.md`` and ``report.html`` and into
``summary.json`` (key ``answer``); ``cards`` writes a card for each deployable artifact it names.

The choice, per dataset and apart for deployable and simulated configurations: walk the size
budgets of the recommendation from the largest down and take the first whose ranked set (the
most accurate qualifying configuration and those tied with it) holds a compressed
configuration. Those compressed configurations are the answer, listed as ties when there are
several; whether the FP32 model ties with them is said beside them.
"""
from __future__ import annotations

import math
import re

import pandas as pd

import verdicts as vd
from stats_tables import DEPLOYABLE_EXECUTIONS, RESULT_FILES, format_number

QUALIFYING = (vd.EQUIVALENT, vd.BETTER)
ARTIFACT_COLUMNS = ("artifact", "model_path")
"""Result-row columns that name a saved artifact, relative to the run folder."""


def card_name(config_id: str) -> str:
    """The file name of a configuration's model card (``analysis/cards/<name>.md``): every run
    of characters other than letters, digits, ``.``, ``_``, ``=`` and ``-`` becomes ``__``."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "__", config_id).strip("_")


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def bits_label(row) -> str:
    weight = format_number(row.get("weight_bits"))
    act = format_number(row.get("act_bits"))
    return f"w{weight}a{act}" if weight and act else ""


def artifact_of(row, run_dir) -> str:
    """The saved artifact of a configuration, relative to the run folder, or "" when the run
    saved none: the row's ``artifact`` / ``model_path``, else the FP32 checkpoint."""
    for column in ARTIFACT_COLUMNS:
        value = row.get(column)
        if isinstance(value, str) and value and value != "nan":
            return value
    if row.get("method") == "fp32":
        path = f"checkpoints/{row.get('dataset')}/{row.get('arch')}.pt"
        if (run_dir / path).is_file():
            return path
    return ""


def accuracy_verdict(row, alpha: float, above_chance: bool = True) -> str:
    """The four-way verdict of the configuration's accuracy change against FP32 (the same rule
    as the DP-gap verdict, with the accuracy margin entered through its TOST p-value);
    INCONCLUSIVE when its FP32 baseline is not clearly above chance."""
    if row.get("method") == "fp32":
        return vd.EQUIVALENT
    if not above_chance:
        return vd.INCONCLUSIVE
    return vd.verdict(_number(row.get("delta_accuracy")), _number(row.get("delta_accuracy_p")),
                      _number(row.get("delta_accuracy_p_equivalent")), alpha=alpha,
                      better_when_higher=True)


def worst_group(per_group: pd.DataFrame, config_id: str) -> dict:
    """The group whose accuracy dropped most against FP32, with its paired interval and n."""
    rows = per_group[per_group["config_id"] == config_id] if len(per_group) else per_group
    if rows.empty or rows["accuracy_drop"].isna().all():
        return {}
    worst = rows.loc[rows["accuracy_drop"].astype(float).idxmax()]
    return {"group": worst["group"], "accuracy_drop": worst["accuracy_drop"],
            "accuracy_drop_low": worst["accuracy_drop_low"],
            "accuracy_drop_high": worst["accuracy_drop_high"], "n": worst["n"]}


def _entry(row: pd.Series, analysis) -> dict:
    """One configuration of the answer: what it is and its changes against FP32."""
    alpha = analysis.settings.alpha
    entry = {"config_id": row["config_id"], "dataset": row["dataset"], "arch": row["arch"],
             "method": row["method"], "bits": bits_label(row), "execution": row["execution"],
             "runtime": DEPLOYABLE_EXECUTIONS.get(row["execution"],
                                                  "needs low-bit integer kernels this machine "
                                                  "lacks"),
             "artifact": artifact_of(row, analysis.run.run_dir),
             "size_mib": row.get("size_mib"), "compression": row.get("compression"),
             "speedup_b1": row.get("speedup_b1"), "accuracy": row.get("accuracy"),
             "accuracy_low": row.get("accuracy_low"), "accuracy_high": row.get("accuracy_high")}
    for metric in ("accuracy", "dp_gap", "eo_gap"):
        for suffix in ("", "_low", "_high"):
            entry[f"delta_{metric}{suffix}"] = row.get(f"delta_{metric}{suffix}")
    low = analysis.table.set_index("config_id")["balanced_accuracy_low"]
    reference = row.get("reference_id") if row["method"] != "fp32" else row["config_id"]
    above = vd.is_above_chance(_number(low.get(reference, math.nan)),
                               analysis.settings.min_balanced_accuracy)
    entry["accuracy_verdict"] = accuracy_verdict(row, alpha, above)
    entry["dp_verdict"] = row.get("dp_verdict")
    entry["worst_group"] = worst_group(analysis.per_group, row["config_id"])
    entry["card"] = (f"cards/{card_name(row['config_id'])}.md"
                     if row["execution"] in DEPLOYABLE_EXECUTIONS else "")
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in entry.items()}


def _pick(recommended: pd.DataFrame, deployable: bool) -> tuple[float, list[str], bool]:
    """(budget, compressed config ids of the first budget whose ranked set holds one, whether
    FP32 ties with them); (nan, [], False) when no budget's set holds a compressed one."""
    rows = recommended[(recommended["deployable"] == deployable)
                       & (recommended["config_id"] != "")]
    for budget in sorted(rows["size_budget_mib"].unique(), reverse=True):
        chosen = rows[rows["size_budget_mib"] == budget]
        compressed = chosen[chosen["method"] != "fp32"]
        if len(compressed):
            return (budget, compressed["config_id"].tolist(),
                    bool((chosen["method"] == "fp32").any()))
    return math.nan, [], False


def _above_chance(table: pd.DataFrame, threshold: float) -> pd.Series:
    fp32 = table[table["method"] == "fp32"]
    return pd.Series([vd.is_above_chance(_number(v), threshold)
                      for v in fp32["balanced_accuracy_low"]], index=fp32.index, dtype=bool)


def _reasons(analysis, dataset: str, models: pd.DataFrame, deployable_ids: list[str],
             simulated_ids: list[str]) -> list[str]:
    """Why nothing deployable can be recommended for one dataset (empty when something can)."""
    settings = analysis.settings
    missing = analysis.run.missing_files
    if RESULT_FILES["quantization"] in missing and RESULT_FILES["mitigation"] in missing:
        return [f"a phase is missing: neither {RESULT_FILES['quantization']} nor "
                f"{RESULT_FILES['mitigation']} exists (the quantization and mitigation phases did "
                "not run), so there is no compressed model to judge"]
    fp32 = models[models["method"] == "fp32"]
    if fp32.empty:
        return [f"a phase is missing: no FP32 baseline of {dataset} was analysed "
                f"({RESULT_FILES['baseline']}), so no change can be judged"]
    above = _above_chance(models, settings.min_balanced_accuracy)
    if not above.any():
        bounds = "; ".join(
            f"{r.arch}: balanced accuracy {format_number(r.balanced_accuracy)} "
            f"[{format_number(r.balanced_accuracy_low)}, {format_number(r.balanced_accuracy_high)}]"
            for r in fp32.itertuples())
        return [f"the FP32 model is at chance ({bounds}; a lower bound at or below "
                f"{format_number(settings.min_balanced_accuracy)} is chance), so every change "
                "against it is INCONCLUSIVE: train it longer or on more data"]
    if deployable_ids:
        return []
    compressed = models[models["method"] != "fp32"]
    counts = compressed["dp_verdict"].value_counts()
    verdict_counts = ", ".join(f"{counts[v]} {v}" for v in vd.VERDICTS if v in counts)
    qualifying = compressed[compressed["dp_verdict"].isin(QUALIFYING)]
    margin = format_number(settings.margins["dp_gap"])
    if qualifying.empty:
        return [f"no compressed configuration is EQUIVALENT within the DP-gap margin ({margin}) "
                f"or BETTER than FP32 (of {len(compressed)}: {verdict_counts})"]
    if simulated_ids and not qualifying["execution"].isin(DEPLOYABLE_EXECUTIONS).any():
        return [f"the compressed configurations that qualify ({len(qualifying)}) all run "
                "simulated: they need low-bit integer kernels this machine lacks (see the "
                "simulated answer below)"]
    return [f"the compressed configurations that qualify ({len(qualifying)}) are less accurate "
            "than FP32 (paired swap test, p ≤ alpha) and none fits a smaller size budget"]


def answer(analysis) -> dict:
    """The answer of the run: ``status`` "ship" (some dataset has a deployable compressed
    configuration to ship) or "nothing", ``synthetic``, and per dataset the deployable choice,
    the simulated one apart, and the reasons when nothing deployable qualifies."""
    table = analysis.table
    synthetic = is_synthetic(analysis)
    recommended = analysis.recommendation
    datasets = []
    for dataset, models in table.groupby("dataset", sort=True):
        rows = recommended[recommended["dataset"] == dataset]
        rows = rows.assign(deployable=rows["deployable"].astype(str).str.lower() == "true")
        by_id = models.set_index("config_id")
        choices = {}
        for kind, deployable in (("deployable", True), ("simulated", False)):
            budget, ids, fp32_ties = _pick(rows, deployable)
            choices[kind] = {"size_budget_mib": None if math.isnan(budget) else budget,
                             "fp32_ties": fp32_ties,
                             "configurations": [_entry(_row(by_id, c), analysis) for c in ids]}
        reasons = _reasons(analysis, dataset, models,
                           [c["config_id"] for c in choices["deployable"]["configurations"]],
                           [c["config_id"] for c in choices["simulated"]["configurations"]])
        if reasons and any("at chance" in r or "phase is missing" in r for r in reasons):
            choices["simulated"]["configurations"] = []
        datasets.append({"dataset": dataset, "status": "nothing" if reasons else "ship",
                         "reasons": reasons, **choices})
    status = "ship" if any(d["status"] == "ship" for d in datasets) else "nothing"
    return {"status": status, "synthetic": synthetic,
            "dp_gap_margin": analysis.settings.margins["dp_gap"],
            "accuracy_margin": analysis.settings.margins.get("accuracy"),
            "alpha": analysis.settings.alpha, "datasets": datasets}


def _row(by_id: pd.DataFrame, config_id: str) -> pd.Series:
    row = by_id.loc[config_id].copy()
    row["config_id"] = config_id
    return row


def is_synthetic(analysis) -> bool:
    """Whether the run's data is synthetic (its config, a dataset named so, or a flagged row).

    Shared: ``report`` and ``cards`` label synthetic results with it."""
    configured = (analysis.run.config.get("data") or {}).get("dataset")
    flagged = analysis.run.configs.get("synthetic", pd.Series(dtype=object))
    return bool(configured == "synthetic" or "synthetic" in set(analysis.table["dataset"])
                or flagged.astype(str).str.lower().eq("true").any())


# ----------------------------------------------------------------------------- text

def interval(entry: dict, name: str) -> str:
    """``estimate [low, high]`` of ``name`` in an answer entry."""
    return (f"{format_number(entry.get(name))} [{format_number(entry.get(f'{name}_low'))}, "
            f"{format_number(entry.get(f'{name}_high'))}]")


def headline(result: dict) -> str:
    """One sentence: "Ship …" or "Nothing can be recommended, because …"."""
    parts = []
    for d in result["datasets"]:
        chosen = d["deployable"]["configurations"]
        prefix = f"{d['dataset']}: " if len(result["datasets"]) > 1 else ""
        if chosen:
            names = " or ".join(f"`{c['config_id']}`" for c in chosen)
            tie = " (tied: any of them)" if len(chosen) > 1 else ""
            parts.append(f"{prefix}Ship {names}{tie}.")
        else:
            parts.append(f"{prefix}Nothing can be recommended, because "
                         + "; and ".join(d["reasons"]) + ".")
    return " ".join(parts)


def entry_lines(entry: dict) -> list[str]:
    """The facts of one answer entry, one per line (Markdown), every number from the tables."""
    worst = entry.get("worst_group") or {}
    size = f"{format_number(entry['size_mib'])} MiB"
    if entry.get("compression") is not None:
        size += f" ({format_number(entry['compression'])}× smaller than FP32)"
    lines = [f"configuration `{entry['config_id']}`: {entry['arch']}, {entry['method']} "
             f"{entry['bits']}",
             f"runtime: {entry['runtime']} (`{entry['execution']}`)"
             + (f"; model card: [{entry['card']}]({entry['card']})" if entry.get("card") else ""),
             "artifact: " + (f"`{entry['artifact']}`" if entry["artifact"] else
                             "none saved by this run (rebuild it from the config id)"),
             f"size: {size}",
             "speedup (batch 1, against the fastest FP32 here): "
             + (f"{format_number(entry['speedup_b1'])}×" if entry.get("speedup_b1") is not None
                else "not measured for this configuration"),
             f"Δaccuracy vs FP32: {interval(entry, 'delta_accuracy')}: {entry['accuracy_verdict']}",
             f"ΔDP gap vs FP32: {interval(entry, 'delta_dp_gap')}: {entry['dp_verdict']}"]
    if worst and not _number(worst["accuracy_drop"]) > 0:
        lines.append(f"worst-hit group: none lost accuracy (largest drop "
                     f"{format_number(worst['accuracy_drop'])} "
                     f"[{format_number(worst['accuracy_drop_low'])}, "
                     f"{format_number(worst['accuracy_drop_high'])}], {worst['group']}, "
                     f"n = {format_number(worst['n'])})")
    elif worst:
        lines.append(f"worst-hit group: {worst['group']} (n = {format_number(worst['n'])}), "
                     f"accuracy drop {format_number(worst['accuracy_drop'])} "
                     f"[{format_number(worst['accuracy_drop_low'])}, "
                     f"{format_number(worst['accuracy_drop_high'])}]")
    return lines


SYNTHETIC_TITLE = "SYNTHETIC DATA."
SYNTHETIC_BANNER = ("This run used the generated synthetic CelebA-format dataset, "
                    "not real faces. Its numbers show that the pipeline works; they say nothing "
                    "about how a real face-attribute classifier treats real people.")


def markdown(result: dict) -> str:
    """The answer section of report.md (its first lines)."""
    lines = ["## The answer", ""]
    if result["synthetic"]:
        lines += [f"> **{SYNTHETIC_TITLE}** {SYNTHETIC_BANNER}", ""]
    lines += [f"**{headline(result)}**", ""]
    for d in result["datasets"]:
        if len(result["datasets"]) > 1:
            lines += [f"### {d['dataset']}", ""]
        deployable, simulated = d["deployable"], d["simulated"]
        for i, entry in enumerate(deployable["configurations"]):
            lines.append(("Deployable here" if i == 0 else "Tied with it") + ":")
            lines += [f"- {line}" for line in entry_lines(entry)]
        if deployable["configurations"]:
            lines.append(f"- within the size budget {format_number(deployable['size_budget_mib'])}"
                         " MiB" + ("; the FP32 model ties with it in accuracy"
                                   if deployable["fp32_ties"] else ""))
            lines.append("")
        if simulated["configurations"]:
            names = "; ".join(f"`{c['config_id']}` (Δaccuracy {interval(c, 'delta_accuracy')}, "
                              f"ΔDP gap {interval(c, 'delta_dp_gap')} {c['dp_verdict']})"
                              for c in simulated["configurations"])
            lines += [f"Simulated only (needs low-bit integer kernels this machine lacks, not "
                      f"deployable here): {names}.", ""]
    lines.append(f"Rule: a configuration qualifies when its DP-gap change against FP32 is "
                 f"EQUIVALENT within the margin {format_number(result['dp_gap_margin'])} or "
                 "BETTER; the most accurate of those ships, ties listed as ties (details in the "
                 "Production recommendation section).")
    return "\n".join(lines)
