"""Model cards (Mitchell et al., 2019) for the artifacts the analysis recommends shipping.

One card per compressed configuration that the production recommendation lists as deployable
here (``stats_tables.recommend``, any size budget): ``analysis/cards/<name>.json`` (the numbers)
and ``.md`` / ``.html`` (the same for reading). The sections follow Model Cards: model details
(architecture, method, bits, runtime, the artifact's path and sha256, size, speed-up against the
fastest FP32, CPU kind), calibration (kind, size, the set's group counts), per-group accuracy /
TPR / FPR with intervals and n, the changes against FP32 (ΔDP gap, ΔEO gap, Δaccuracy) with
intervals and verdicts, the evaluation data (with the synthetic banner) and caveats.

Every number is copied from the analysis tables: the changes from ``stats.csv`` (rows
``comparison == "vs_fp32"`` of the configuration), the per-group numbers from ``per_group.csv``;
nothing is recomputed. Torch-free.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import pandas as pd

import answer as answer_module
import verdicts as vd
from results import atomic_write_text
from stats_tables import DEPLOYABLE_EXECUTIONS, format_number

CARD_CHANGES = ("accuracy", "dp_gap", "eo_gap")
PER_GROUP_COLUMNS = ("n", "accuracy", "accuracy_low", "accuracy_high", "tpr", "tpr_low",
                     "tpr_high", "fpr", "fpr_low", "fpr_high", "accuracy_drop",
                     "accuracy_drop_low", "accuracy_drop_high", "small_group")
CALIBRATION_COUNTS = "calibration_group_counts"
"""The result-row column with the calibration set's group counts, when the run recorded it."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _value(value):
    """A JSON-ready scalar: numpy types unwrapped, NaN as None."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _calibration(row: pd.Series) -> dict:
    calibration = str(row.get("calibration", "none"))
    kind, size = row.get("calibration_kind"), row.get("calibration_size")
    found = re.match(r"^([A-Za-z_]+)-(\d+)$", calibration)
    if not isinstance(kind, str) or not kind:
        kind = found.group(1) if found else calibration
    if size is None or (isinstance(size, float) and math.isnan(size)):
        size = int(found.group(2)) if found else None
    counts = row.get(CALIBRATION_COUNTS)
    if isinstance(counts, str) and counts.strip():
        try:
            counts = json.loads(counts)
        except ValueError:
            pass
    elif not isinstance(counts, dict):
        counts = "unknown (the run did not record the calibration set's group counts)"
    return {"calibration": calibration, "kind": kind, "size": _value(size),
            "group_counts": counts}


def _changes(stats: pd.DataFrame, row: pd.Series, analysis) -> dict:
    """ΔDP gap, ΔEO gap and Δaccuracy against FP32 from the configuration's stats.csv rows, with
    the verdict of each (``verdicts.verdict`` on its p-values; INCONCLUSIVE where the FP32
    model is not clearly above chance)."""
    rows = stats[(stats["comparison"] == "vs_fp32") & (stats["config_id"] == row["config_id"])]
    low = analysis.table.set_index("config_id")["balanced_accuracy_low"]
    above = vd.is_above_chance(float(low.get(row.get("reference_id"), math.nan)),
                               analysis.settings.min_balanced_accuracy)
    changes = {}
    for metric in CARD_CHANGES:
        found = rows[rows["metric"] == metric]
        if found.empty:
            continue
        r = found.iloc[0]
        verdict = (vd.verdict(r["estimate"], r["p_value"], r["p_equivalent"],
                              alpha=analysis.settings.alpha,
                              better_when_higher=vd.higher_is_better(metric))
                   if above else vd.INCONCLUSIVE)
        changes[metric] = {"reference_id": r["reference_id"], "estimate": _value(r["estimate"]),
                           "low": _value(r["low"]), "high": _value(r["high"]),
                           "p_value": _value(r["p_value"]),
                           "p_equivalent": _value(r["p_equivalent"]),
                           "margin": analysis.settings.margins.get(metric), "verdict": verdict}
    return changes


def card(analysis, row: pd.Series, stats: pd.DataFrame, per_group: pd.DataFrame) -> dict:
    """The card of one configuration (a row of the configuration table)."""
    run_dir = analysis.run.run_dir
    artifact = answer_module.artifact_of(row, run_dir)
    path = run_dir / artifact if artifact else None
    groups = per_group[per_group["config_id"] == row["config_id"]]
    small = groups.loc[groups["small_group"].astype(str).str.lower() == "true", "group"].tolist() \
        if "small_group" in groups else []
    synthetic = answer_module.is_synthetic(analysis)
    caveats = []
    if small:
        caveats.append(f"groups below {analysis.settings.min_group_size} test samples: "
                       + ", ".join(small) + "; their intervals are wide")
    if row.get("execution") not in DEPLOYABLE_EXECUTIONS:
        caveats.append("simulated: needs low-bit integer kernels this machine lacks")
    if synthetic:
        caveats.append("synthetic evaluation data: the numbers say nothing about real people")
    if path is None or not path.is_file():
        caveats.append("no artifact file saved by the run; rebuild it from the config id")
    return {
        "config_id": row["config_id"],
        "model_details": {
            "architecture": row["arch"], "method": row["method"],
            "bits": answer_module.bits_label(row), "execution": row["execution"],
            "runtime": DEPLOYABLE_EXECUTIONS.get(row["execution"], "simulated"),
            "artifact": {"path": artifact or None,
                         "sha256": sha256_of(path) if path is not None and path.is_file() else None,
                         "bytes": path.stat().st_size if path is not None and path.is_file()
                         else None},
            "size_mib": _value(row.get("size_mib")), "compression": _value(row.get("compression")),
            "speedup_b1_vs_fastest_fp32": _value(row.get("speedup_b1")),
            "fp32_reference_b1": _value(row.get("fp32_reference_b1")),
            "cpu_kind": _value(row.get("cpu_capability")), "vnni": _value(row.get("vnni"))},
        "calibration": _calibration(row),
        "per_group": [{"group": g["group"], **{c: _value(g[c]) for c in PER_GROUP_COLUMNS
                                               if c in g}} for _, g in groups.iterrows()],
        "changes_vs_fp32": _changes(stats, row, analysis),
        "evaluation_data": {"dataset": row["dataset"], "synthetic": synthetic,
                            "banner": answer_module.SYNTHETIC_BANNER if synthetic else None,
                            "n_test": _value(groups["n"].sum()) if len(groups) else None},
        "caveats": caveats}


def recommended_ids(analysis) -> list[str]:
    """Compressed configurations the recommendation lists as deployable here, any budget."""
    rows = analysis.recommendation
    chosen = rows[(rows["config_id"] != "") & rows["config_id"].notna()
                  & (rows["deployable"].astype(str).str.lower() == "true")
                  & (rows["method"] != "fp32")]
    return list(dict.fromkeys(chosen["config_id"]))


def markdown(c: dict) -> str:
    """A card for reading, every number as ``format_number`` writes it in the tables."""
    d, cal = c["model_details"], c["calibration"]
    art = d["artifact"]
    lines = [f"# Model card: `{c['config_id']}`", ""]
    if c["evaluation_data"]["synthetic"]:
        lines += [f"> **{answer_module.SYNTHETIC_TITLE}** {answer_module.SYNTHETIC_BANNER}", ""]
    lines += ["## Model details", "",
              f"- architecture: {d['architecture']}; method: {d['method']}; bits: {d['bits']}",
              f"- runtime: {d['runtime']} (`{d['execution']}`)",
              f"- artifact: `{art['path']}`, sha256 `{art['sha256']}`" if art["path"] else
              "- artifact: none saved by the run",
              f"- size: {format_number(d['size_mib'])} MiB (compression "
              f"{format_number(d['compression'])}×)",
              "- speed-up at batch 1 against the fastest FP32: "
              + (f"{format_number(d['speedup_b1_vs_fastest_fp32'])}×"
                 if d["speedup_b1_vs_fastest_fp32"] is not None else "not measured"),
              f"- CPU kind: {d['cpu_kind'] or 'unknown'}" + (", VNNI" if d["vnni"] is True else ""),
              "", "## Calibration", "",
              f"- {cal['calibration']}: kind {cal['kind']}, size {format_number(cal['size'])}",
              f"- group counts: {cal['group_counts']}", "",
              "## Per-group performance (test set)", "",
              "| group | n | accuracy | TPR | FPR | accuracy drop vs FP32 |",
              "|---|---|---|---|---|---|"]
    for g in c["per_group"]:
        def iv(name):
            return (f"{format_number(g.get(name))} [{format_number(g.get(name + '_low'))}, "
                    f"{format_number(g.get(name + '_high'))}]")
        lines.append(f"| {g['group']} | {format_number(g['n'])} | {iv('accuracy')} | {iv('tpr')} "
                     f"| {iv('fpr')} | {iv('accuracy_drop')} |")
    lines += ["", "## Changes against FP32 (paired intervals)", ""]
    for metric, ch in c["changes_vs_fp32"].items():
        lines.append(f"- Δ{metric}: {format_number(ch['estimate'])} [{format_number(ch['low'])}, "
                     f"{format_number(ch['high'])}], p {format_number(ch['p_value'])}, TOST p "
                     f"{format_number(ch['p_equivalent'])} (margin {format_number(ch['margin'])}):"
                     f" **{ch['verdict']}**")
    ev = c["evaluation_data"]
    lines += ["", "## Evaluation data", "",
              f"- dataset: {ev['dataset']}" + (" (SYNTHETIC)" if ev["synthetic"] else "")
              + f"; test samples: {format_number(ev['n_test'])}", "", "## Caveats", ""]
    lines += [f"- {caveat}" for caveat in c["caveats"]] or ["- none recorded"]
    return "\n".join(lines) + "\n"


def write_cards(analysis, out: Path, *, stats: pd.DataFrame, per_group: pd.DataFrame) -> dict:
    """Write ``out/cards/<name>.json``, ``.md`` and ``.html`` for every recommended deployable
    compressed configuration; returns the written files by their path under ``out``."""
    import report_html  # the HTML converter of the report

    by_id = analysis.table.set_index("config_id", drop=False)
    written = {}
    for config_id in recommended_ids(analysis):
        c = card(analysis, by_id.loc[config_id], stats, per_group)
        name = answer_module.card_name(config_id)
        text = markdown(c)
        for suffix, content in (
                (".json", json.dumps(c, indent=1, default=str) + "\n"), (".md", text),
                (".html", report_html.render({"card": text}, out, title=f"Model card {config_id}",
                                             status="ship"))):
            written[f"cards/{name}{suffix}"] = atomic_write_text(out / "cards" / f"{name}{suffix}",
                                                                 content)
    return written
