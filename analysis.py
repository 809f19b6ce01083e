"""Analysis phase: statistics, hypotheses, Pareto frontiers, tables and the report.

Reads one finished run folder — the result CSVs and the per-sample prediction tables — and never
runs a model (torch is not imported), so results made on a GPU cluster can be analysed on a laptop:

    from analysis import run_analysis
    outputs = run_analysis("results/default")  # {"stats.csv": Path(".../analysis/stats.csv"), ...}

Every metric, interval and test is recomputed from the prediction tables with ``fairness_metrics``.
Outputs, in ``<run_dir>/analysis/``:

- ``stats.csv``: tidy, one row per (comparison, configuration, metric); see ``statistics_table``.
- ``hypotheses.json``: H1–H6, each with its test, estimate, interval or p-value, effect size and a
  verdict computed by the decision rules documented in ``evaluate_hypotheses``.
- ``per_group.csv``: each group's accuracy drop and share of the flipped predictions, per configuration.
- ``summary.json``, ``tables/*.csv`` + ``tables/*.tex``, ``figures/*.png`` + ``.pdf``, ``report.md``.

Every number written anywhere goes through ``format_number``, so the report, the CSVs and the
LaTeX tables show the same digits.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import yaml
from scipy import stats as scipy_stats
from tqdm.auto import tqdm

import fairness_metrics as fm
from results import atomic_write_frame, atomic_write_text, load_predictions, predictions_path

logger = logging.getLogger(__name__)

RESULT_FILES = {"baseline": "baseline_results.csv", "quantization": "quantization_results.csv",
                "mitigation": "mitigation_results.csv"}
REQUIRED_COLUMNS = ("config_id", "dataset", "arch", "method")
OPTIONAL_COLUMNS = ("weight_bits", "act_bits", "calibration", "observer", "seed", "execution",
                    "status", "error", "params", "size_mib", "fp32_size_mib", "compression",
                    "latency_ms_b1", "cost_s", "train_time_s", "compare_to", "draw", "variant")
METRICS = fm.METRICS
SUPPORTED, REJECTED, INCONCLUSIVE = "SUPPORTED", "REJECTED", "INCONCLUSIVE"
DEFAULT_BUDGET_FRACTIONS = (0.125, 0.25, 0.5, 1.0)
"""Size budgets when none are given: these fractions of the dataset's largest FP32 model."""
EXACT_PERMUTATION_LIMIT = 200_000
"""Permutation tests enumerate every ordering up to this many; beyond it they sample n_resamples."""


# ----------------------------------------------------------------------------- number formatting

def format_number(value) -> str:
    """Write one value the way every analysis output does.

    Integers in full, other numbers with 4 significant digits, ``nan`` / ``inf`` spelled out, text
    unchanged, missing values as an empty string.
    """
    if value is None or value is pd.NA:
        return ""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        return str(value)
    number = float(value)
    if math.isnan(number):
        return "nan"
    if math.isinf(number):
        return "inf" if number > 0 else "-inf"
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return f"{number:.4g}"


def write_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a table atomically with every cell through ``format_number``."""
    return atomic_write_frame(path, frame.map(format_number))


def write_json(payload, path: str | Path) -> Path:
    """Write JSON atomically; NaN becomes null and ±inf the strings "inf" / "-inf"."""
    return atomic_write_text(path, json.dumps(_jsonable(payload), indent=1) + "\n")


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else format_number(value)
    return value


_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                   "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                   "^": r"\textasciicircum{}", "Δ": r"$\Delta$", "−": "$-$", "≤": r"$\le$",
                   "≥": r"$\ge$", "×": r"$\times$"}


def latex_escape(text: str) -> str:
    """Escape the characters LaTeX treats specially."""
    return "".join(_LATEX_SPECIALS.get(char, char) for char in str(text))


def latex_table(frame: pd.DataFrame, *, caption: str, label: str) -> str:
    """A booktabs table ready for ``\\input`` (needs ``\\usepackage{booktabs,graphicx}``)."""
    align = "".join("r" if pd.api.types.is_numeric_dtype(frame[c]) else "l" for c in frame.columns)
    header = " & ".join(latex_escape(c) for c in frame.columns) + r" \\"
    body = [" & ".join(latex_escape(format_number(v)) for v in row) + r" \\"
            for row in frame.itertuples(index=False)]
    return "\n".join([
        r"% generated by analysis.py; needs \usepackage{booktabs,graphicx}",
        r"\begin{table}[htbp]", r"\centering", rf"\caption{{{latex_escape(caption)}}}",
        rf"\label{{{label}}}", r"\resizebox{\linewidth}{!}{%", rf"\begin{{tabular}}{{{align}}}",
        r"\toprule", header, r"\midrule", *body, r"\bottomrule", r"\end{tabular}}", r"\end{table}", ""])


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table, every cell through ``format_number``."""
    def row(cells) -> str:
        return "| " + " | ".join(format_number(c).replace("|", r"\|") for c in cells) + " |"
    lines = [row(frame.columns), "|" + "---|" * len(frame.columns)]
    lines += [row(values) for values in frame.itertuples(index=False)]
    return "\n".join(lines)


def with_intervals(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Fold each ``c, c_low, c_high`` triple into one text column ``c [low, high]``, for display."""
    frame = frame.copy()
    for column in columns:
        low, high = frame.pop(f"{column}_low"), frame.pop(f"{column}_high")
        frame[column] = [f"{format_number(e)} [{format_number(lo)}, {format_number(hi)}]"
                         for e, lo, hi in zip(frame[column], low, high)]
    return frame


# ----------------------------------------------------------------------------- loading a run

@dataclass
class RunArtifacts:
    """What analysis reads from one run folder."""

    run_dir: Path
    config: dict
    configs: pd.DataFrame
    """Every result row of the phases that ran, with a ``phase`` column."""
    missing_files: list[str]


def load_run(run_dir: str | Path) -> RunArtifacts:
    """Read ``config.yaml`` and whichever of the three result tables exist in ``run_dir``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist: pass the folder a run wrote "
                                "(results/<run_name>), or run `python main.py --phase baseline` first")
    frames, missing = [], []
    for phase, name in RESULT_FILES.items():
        path = run_dir / name
        if path.is_file():
            frames.append(_read_results(path).assign(phase=phase))
        else:
            missing.append(name)
    if not frames:
        raise FileNotFoundError(f"{run_dir} holds none of {', '.join(RESULT_FILES.values())}: run "
                                "at least `python main.py --phase baseline` with this run's config")
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        missing.append("config.yaml")
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    if not isinstance(config, dict):
        raise ValueError(f"{config_path} holds {type(config).__name__}, expected a YAML mapping: "
                         "restore the config.yaml the run wrote")
    return RunArtifacts(run_dir, config, _normalise(pd.concat(frames, ignore_index=True)), missing)


def _read_results(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype={"config_id": str, "compare_to": str}).copy()
    absent = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if absent:
        raise ValueError(f"{path} lacks the columns {absent}; a result table needs at least "
                         f"{list(REQUIRED_COLUMNS)}: rerun the phase that wrote it")
    return frame


def _normalise(configs: pd.DataFrame) -> pd.DataFrame:
    duplicated = configs.loc[configs["config_id"].duplicated(), "config_id"].tolist()
    if duplicated:
        raise ValueError(f"configuration ids {duplicated[:3]} appear in more than one result row: "
                         "each id must be unique across the result tables; rerun with --force")
    configs = configs.reindex(columns=[*configs.columns,
                                       *[c for c in OPTIONAL_COLUMNS if c not in configs.columns]])
    text = {"status": "ok", "calibration": "none", "observer": "", "execution": "", "error": "",
            "compare_to": "", "variant": ""}
    for column, default in text.items():
        configs[column] = configs[column].astype(object).where(configs[column].notna(), default)
        configs[column] = configs[column].astype(str)
    configs["act_bits"] = configs["act_bits"].map(
        lambda bits: "" if pd.isna(bits) else format_number(bits)).astype(str)
    for column in ("weight_bits", "seed", "draw", "params", "size_mib", "cost_s"):
        configs[column] = pd.to_numeric(configs[column], errors="coerce")
    return configs.copy()  # one block again after the column-by-column edits


def _prediction_loader(run_dir: Path) -> Callable[[str], pd.DataFrame]:
    """``load(config_id)`` with a cache, so each prediction table is read once."""
    cache: dict[str, pd.DataFrame] = {}

    def load(config_id: str) -> pd.DataFrame:
        if config_id not in cache:
            cache[config_id] = load_predictions(run_dir, config_id)
        return cache[config_id]
    return load


# ----------------------------------------------------------------------------- what is compared

COMPARISONS = {
    "vs_fp32": "quantized or mitigated configuration minus the FP32 baseline of the same "
               "dataset, architecture and seed",
    "vs_ptq": "mitigation minus its compare_to configuration (plain PTQ at the same bits, or the "
              "random-calibration draw a balanced draw is paired with)",
    "qat_vs_ptq": "QAT minus static PTQ at the same dataset, architecture, bits and seed",
}


def comparison_pairs(configs: pd.DataFrame) -> pd.DataFrame:
    """Every comparison analysis makes: columns ``comparison, config_id, reference_id``.

    ``configs`` holds the analysable configurations; see ``COMPARISONS`` for the three kinds.
    """
    rows = []
    fp32 = configs[configs["method"] == "fp32"].sort_values(["seed", "config_id"])
    for row in configs[configs["method"] != "fp32"].itertuples():
        reference = _fp32_reference(row, fp32)
        if reference is not None:
            rows.append(("vs_fp32", row.config_id, reference))
    known = set(configs["config_id"])
    for row in configs[configs["compare_to"] != ""].itertuples():
        if row.compare_to in known:
            rows.append(("vs_ptq", row.config_id, row.compare_to))
        else:
            logger.warning("%s: compare_to %r is not an analysable configuration; skipped",
                           row.config_id, row.compare_to)
    for row in configs[configs["method"] == "qat"].itertuples():
        reference = _ptq_counterpart(row, configs)
        if reference is not None:
            rows.append(("qat_vs_ptq", row.config_id, reference))
    return pd.DataFrame(rows, columns=["comparison", "config_id", "reference_id"])


def _fp32_reference(row, fp32: pd.DataFrame) -> str | None:
    same_model = fp32[(fp32["dataset"] == row.dataset) & (fp32["arch"] == row.arch)]
    same_seed = same_model[same_model["seed"] == row.seed]
    if same_model.empty:
        logger.warning("%s: no FP32 baseline for %s/%s; no comparison with FP32",
                       row.config_id, row.dataset, row.arch)
        return None
    if same_seed.empty:
        logger.warning("%s: no FP32 baseline with seed %s; compared with %s", row.config_id,
                       format_number(row.seed), same_model["config_id"].iloc[0])
    return (same_seed if len(same_seed) else same_model)["config_id"].iloc[0]


def _ptq_counterpart(row, configs: pd.DataFrame) -> str | None:
    """Static PTQ at the same dataset/arch/bits/seed; random calibration first, then by id."""
    same = configs[(configs["method"] == "ptq_static") & (configs["dataset"] == row.dataset)
                   & (configs["arch"] == row.arch) & (configs["weight_bits"] == row.weight_bits)
                   & (configs["act_bits"] == row.act_bits) & (configs["seed"] == row.seed)]
    if same.empty:
        return None
    order = same.assign(not_random=~same["calibration"].str.startswith("random"))
    return order.sort_values(["not_random", "config_id"])["config_id"].iloc[0]


# ----------------------------------------------------------------------------- statistics

Summaries = dict  # (config_id, reference_id or None) -> (record, per_group) of summarize_predictions


def summarize_all(configs: pd.DataFrame, pairs: pd.DataFrame, load: Callable[[str], pd.DataFrame],
                  *, n_resamples: int, ci: float, seed: int, min_group_size: int,
                  progress: bool = True) -> Summaries:
    """``fairness_metrics.summarize_predictions`` for every configuration (against its FP32
    baseline when it has one) and for every other comparison pair, keyed (config_id, reference_id)."""
    fp32_of = _fp32_of(pairs)
    jobs = [(config_id, fp32_of.get(config_id)) for config_id in configs["config_id"]]
    jobs += [(row.config_id, row.reference_id)
             for row in pairs[pairs["comparison"] != "vs_fp32"].itertuples()]
    summaries = {}
    for config_id, reference_id in tqdm(jobs, desc="analysis: statistics", unit="table",
                                        disable=not progress):
        reference = load(reference_id) if reference_id else None
        summaries[(config_id, reference_id)] = fm.summarize_predictions(
            load(config_id), reference=reference, n_resamples=n_resamples, ci=ci, seed=seed,
            min_group_size=min_group_size)
    return summaries


def _fp32_of(pairs: pd.DataFrame) -> dict[str, str]:
    fp32 = pairs[pairs["comparison"] == "vs_fp32"]
    return dict(zip(fp32["config_id"], fp32["reference_id"]))


def configuration_table(configs: pd.DataFrame, pairs: pd.DataFrame,
                        summaries: Summaries) -> pd.DataFrame:
    """One row per analysable configuration: its result row with the metrics recomputed from its
    predictions (``m, m_low, m_high``, and ``delta_m…`` against FP32), ``reference_id`` (its
    FP32 baseline) and ``fp32_dp_gap`` (that baseline's DP gap; its own for an FP32 row)."""
    fp32_of = _fp32_of(pairs)
    records = pd.DataFrame([summaries[(c, fp32_of.get(c))][0] for c in configs["config_id"]],
                           index=configs.index)
    table = configs.drop(columns=[c for c in records.columns if c in configs.columns])
    table = table.join(records)
    table["reference_id"] = table["config_id"].map(fp32_of)
    dp_gap = table.set_index("config_id")["dp_gap"]
    table["fp32_dp_gap"] = table["reference_id"].map(dp_gap).where(
        table["method"] != "fp32", table["dp_gap"])
    return table


REFERENCE_ATTRIBUTES = ("params", "size_mib", "cost_s", "calibration", "accuracy", "dp_gap")
PAIR_ATTRIBUTES = ("phase", "dataset", "arch", "method", "weight_bits", "act_bits", "calibration",
                   "observer", "seed", "draw", "variant", "execution", "size_mib", "cost_s")


PAIR_STATISTICS = [*(f"{m}{s}" for m in METRICS for s in ("", "_low", "_high")),
                   *(f"delta_{m}{s}" for m in METRICS for s in ("", "_low", "_high", "_p")),
                   "flip_rate", "mcnemar_p"]


def pair_table(pairs: pd.DataFrame, table: pd.DataFrame, summaries: Summaries) -> pd.DataFrame:
    """The comparisons with their paired statistics (``delta_m``, ``_low``, ``_high``, ``_p``,
    ``flip_rate``, ``mcnemar_p``, the configuration's own metrics) and the attributes of both
    sides (``reference_<attribute>`` for the reference)."""
    by_id = table.set_index("config_id")
    records = pd.DataFrame([summaries[(row.config_id, row.reference_id)][0]
                            for row in pairs.itertuples()], index=pairs.index,
                           columns=PAIR_STATISTICS, dtype=float)
    attributes = by_id.loc[pairs["config_id"], list(PAIR_ATTRIBUTES)].set_index(pairs.index)
    reference = by_id.loc[pairs["reference_id"], list(REFERENCE_ATTRIBUTES)].set_index(pairs.index)
    return pd.concat([pairs, attributes, reference.add_prefix("reference_"), records], axis=1)


RATE_METRICS = ("accuracy", "balanced_accuracy", "selection_rate", "tpr", "fpr",
                "worst_group_accuracy")
"""Metrics that are proportions, so a change in them has a Cohen's h."""
STAT_KEYS = ["comparison", "family", "config_id", "reference_id", "dataset", "arch", "method",
             "weight_bits", "act_bits", "metric"]
STAT_VALUES = ["estimate", "low", "high", "p_value", "p_holm", "p_bh", "effect_size",
               "effect_size_kind"]


def statistics_table(table: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """The tidy ``stats.csv``: columns ``STAT_KEYS + STAT_VALUES``.

    ``comparison == "config"`` rows hold each configuration's metric with its bootstrap interval.
    The other rows hold paired changes (configuration minus reference; see ``COMPARISONS``) with
    their paired-bootstrap interval and p-value, plus a ``flip_rate`` row whose p-value is the
    exact McNemar test of the accuracy change. Effect size: Cohen's h = 2 asin(sqrt(p)) -
    2 asin(sqrt(p_ref)) for the proportions in ``RATE_METRICS``; a gap has no per-sample spread
    to standardise by, so its change is its own effect size (in probability units) and the
    column is empty. Family (for Holm and Benjamini–Hochberg): every p-value of one comparison
    kind and one metric, e.g. all ``vs_fp32`` changes of ``dp_gap``.
    """
    config_rows = _long_rows(table.assign(comparison="config", reference_id=""), prefix="")
    change_rows = _long_rows(pairs, prefix="delta_")
    flips = pairs.assign(metric="flip_rate", estimate=pairs["flip_rate"],
                         p_value=pairs["mcnemar_p"])
    stats = pd.concat([config_rows, change_rows, flips], ignore_index=True)
    stats["family"] = (stats["comparison"] + "/" + stats["metric"]).where(
        stats["comparison"] != "config", "")
    stats = stats.reindex(columns=STAT_KEYS + STAT_VALUES)
    stats["effect_size_kind"] = np.where(stats["effect_size"].notna(), "cohens_h", "")
    stats = _adjust_p_values(stats)
    order = {name: i for i, name in enumerate(["config", *COMPARISONS])}
    stats = stats.assign(_kind=stats["comparison"].map(order),
                         _metric=stats["metric"].map({m: i for i, m in enumerate(METRICS)}))
    stats = stats.sort_values(["_kind", "config_id", "reference_id", "_metric"], kind="stable")
    return stats.drop(columns=["_kind", "_metric"]).reset_index(drop=True)


def _long_rows(frame: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """One row per (row of frame, metric): estimate, low, high, p_value (and Cohen's h for changes)."""
    parts = []
    for metric in METRICS:
        column = prefix + metric
        part = frame[[c for c in STAT_KEYS if c in frame.columns]].assign(
            metric=metric, estimate=frame[column], low=frame[f"{column}_low"],
            high=frame[f"{column}_high"], p_value=frame.get(f"{column}_p", np.nan))
        if prefix and metric in RATE_METRICS:
            part["effect_size"] = cohens_h(frame[metric], frame[metric] - frame[column])
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def cohens_h(p, p_reference):
    """Cohen's h, the effect size of a change between two proportions."""
    clip = lambda x: np.clip(np.asarray(x, dtype=float), 0.0, 1.0)  # noqa: E731
    return 2 * np.arcsin(np.sqrt(clip(p))) - 2 * np.arcsin(np.sqrt(clip(p_reference)))


def _adjust_p_values(stats: pd.DataFrame) -> pd.DataFrame:
    stats = stats.copy()
    for family, rows in stats[stats["family"] != ""].groupby("family").groups.items():
        p = stats.loc[rows, "p_value"].to_numpy(dtype=float)
        stats.loc[rows, "p_holm"] = fm.holm(p)
        stats.loc[rows, "p_bh"] = fm.benjamini_hochberg(p)
    return stats


# ----------------------------------------------------------------------------- per-group analysis

GROUP_KEYS = ["dataset", "method", "weight_bits", "act_bits"]


def per_group_table(pairs: pd.DataFrame, summaries: Summaries) -> pd.DataFrame:
    """One row per (configuration compared with FP32, intersectional group).

    ``accuracy_drop`` = FP32 accuracy minus quantized accuracy in the group (positive: the group
    lost), with its paired-bootstrap interval; ``flip_share`` = the group's share of all
    predictions that changed; ``sample_share`` = its share of the samples; ``flip_excess`` =
    flip_share / sample_share (above 1: the group gets more than its share of the flips).
    """
    frames = []
    for row in pairs[pairs["comparison"] == "vs_fp32"].itertuples():
        long = summaries[(row.config_id, row.reference_id)][1]
        wide = long.pivot(index="group", columns="metric", values="value")
        flips = wide["flip_rate"] * wide["n"]
        frames.append(pd.DataFrame({
            "config_id": row.config_id, "reference_id": row.reference_id,
            **{key: getattr(row, key) for key in ["arch", *GROUP_KEYS]},
            "group": wide.index, "n": wide["n"], "sample_share": wide["n"] / wide["n"].sum(),
            "fp32_accuracy": wide["accuracy"] - wide["delta_accuracy"],
            "accuracy": wide["accuracy"], "accuracy_drop": -wide["delta_accuracy"],
            "accuracy_drop_low": -wide["delta_accuracy_high"],
            "accuracy_drop_high": -wide["delta_accuracy_low"], "flip_rate": wide["flip_rate"],
            "flip_share": flips / flips.sum() if flips.sum() > 0 else np.nan,
            "mcnemar_p": wide["mcnemar_p"]}).reset_index(drop=True))
    if not frames:
        return pd.DataFrame(columns=["config_id", "reference_id", "arch", *GROUP_KEYS, "group"])
    table = pd.concat(frames, ignore_index=True)
    table["flip_excess"] = table["flip_share"] / table["sample_share"]
    return table


def group_drop_means(per_group: pd.DataFrame) -> pd.DataFrame:
    """Each group's mean accuracy drop, flip share and sample share over the configurations of
    one (dataset, method, weight_bits, act_bits) cell; ``n_configs`` counts them."""
    if per_group.empty:
        return pd.DataFrame(columns=[*GROUP_KEYS, "group", "accuracy_drop"])
    grouped = per_group.groupby([*GROUP_KEYS, "group"], sort=True)
    means = grouped[["accuracy_drop", "flip_share", "sample_share"]].mean()
    return means.assign(n_configs=grouped.size()).reset_index()


def drop_ratio(worst: float, least: float, eps: float = 1e-9) -> float:
    """Worst-hit group's accuracy drop over the least-hit group's, guarded near zero.

    NaN when no group lost accuracy (worst ≤ eps); inf when the least-hit group lost nothing
    or gained (least ≤ eps) while another lost.
    """
    if not worst > eps:
        return math.nan
    return math.inf if least <= eps else worst / least


def drop_ratios(means: pd.DataFrame) -> pd.DataFrame:
    """Per cell of ``group_drop_means``: worst and least hit group, their drops and ``drop_ratio``."""
    rows = []
    for key, cell in means.groupby(GROUP_KEYS, sort=True):
        drops = cell.set_index("group")["accuracy_drop"]
        worst, least = drops.idxmax(), drops.idxmin()
        rows.append({**dict(zip(GROUP_KEYS, key)), "worst_group": worst,
                     "worst_drop": drops[worst], "least_group": least, "least_drop": drops[least],
                     "worst_to_least": drop_ratio(drops[worst], drops[least])})
    return pd.DataFrame(rows, columns=[*GROUP_KEYS, "worst_group", "worst_drop", "least_group",
                                       "least_drop", "worst_to_least"])


# ----------------------------------------------------------------------------- hypotheses

@dataclass(frozen=True)
class HypothesisRules:
    """Thresholds of the verdict rules (each rule is spelled out in ``evaluate_hypotheses``)."""

    alpha: float = 0.05
    """Significance level of the permutation tests (H1, H6)."""
    fairness_tolerance: float = 0.02
    """How much a DP gap may rise over FP32 and still count as kept (H4, H5, the recommendation)."""
    min_effect: float = 0.01
    """Smallest change worth having (probability units): an interval that rules it out rejects."""
    modest_gain: float = 0.05
    """Largest accuracy gain of QAT over PTQ that still counts as modest (H2)."""
    min_cost_ratio: float = 10.0
    """QAT cost / PTQ cost from which QAT counts as much more expensive (H2)."""
    max_calibration_cost_ratio: float = 1.5
    """Balanced / random calibration cost up to which balancing counts as free (H3)."""
    max_size_fraction: float = 0.5
    """Mixed-precision size / FP32 size up to which it counts as a fraction of the size (H4)."""
    sweet_spot_bits: int = 8
    lower_bits: int = 4
    min_architectures: int = 3
    """Fewest architectures a correlation across architectures is computed from (H1)."""
    transformer_markers: tuple[str, ...] = ("vit", "deit", "swin")
    """An architecture is a transformer (H6) when a ``_``-separated part of its name starts with
    one of these (``vit_small``, ``tiny_vit``); the rest are CNNs."""


HYPOTHESES = {
    "H1": ("Larger models are more resilient to quantization: the more parameters, the smaller "
           "the loss of accuracy and the rise of the DP gap.",
           "Spearman correlation across architectures of log(parameters) with |Δaccuracy| and "
           "with ΔDP gap (quantized − FP32), one correlation per (dataset, method, bits) cell; "
           "statistic: the mean correlation; two-sided exact permutation test that reorders the "
           "parameter counts (one ordering for all cells)."),
    "H2": ("QAT gives modest gains over PTQ at a much higher cost.",
           "Δaccuracy QAT − static PTQ at the same architecture, bits and seed (paired bootstrap "
           "per pair; mean over pairs with a bootstrap interval over pairs); median cost ratio "
           "QAT / PTQ."),
    "H3": ("Balanced calibration improves fairness at no training cost.",
           "ΔDP gap balanced − random calibration, paired by draw (mean over draws with a "
           "bootstrap interval over draws); median calibration cost ratio."),
    "H4": ("Mixed precision keeps most of the FP32 fairness at a fraction of the size.",
           "ΔDP gap mixed precision − FP32 (mean over configurations with a bootstrap interval); "
           "median size / FP32 size."),
    "H5": ("INT8 is the sweet spot: the DP gap barely moves at INT8 and rises more at INT4.",
           "ΔDP gap vs FP32 at INT8 (mean with interval); ΔDP(INT4) − ΔDP(INT8) for the same "
           "architecture, method, calibration and seed (mean with interval)."),
    "H6": ("Architecture predicts the behaviour: the CNNs behave alike and the transformer "
           "differs.",
           "ΔDP gap vs FP32 per (dataset, method, bits) cell; statistic: mean over cells of "
           "(transformer mean − CNN mean); two-sided exact permutation test that relabels which "
           "architectures are transformers (one labelling for all cells)."),
}


ESTIMATE_LABELS = {
    "H1": "mean Spearman rho, log(parameters) vs loss",
    "H2": "Δaccuracy, QAT − PTQ (fraction)",
    "H3": "ΔDP gap, balanced − random calibration",
    "H4": "ΔDP gap, mixed precision − FP32",
    "H5": "ΔDP gap at INT8 vs FP32",
    "H6": "ΔDP gap, transformer − CNN mean",
}
"""What each hypothesis's headline estimate measures, with its unit."""


def directional_verdict(low: float, high: float, sign: int, min_effect: float) -> str:
    """Verdict on a claimed change of sign ``sign`` (+1 up, -1 down) from its interval.

    SUPPORTED when the interval lies wholly on the claimed side of 0; REJECTED when it rules out
    a claimed change of ``min_effect`` or more; INCONCLUSIVE otherwise or when undefined.
    """
    if np.isnan(low) or np.isnan(high):
        return INCONCLUSIVE
    low, high = sorted((sign * low, sign * high))
    if low > 0:
        return SUPPORTED
    return REJECTED if high < min_effect else INCONCLUSIVE


def bound_verdict(low: float, high: float, limit: float, upper: bool = True) -> str:
    """Verdict on "value ≤ limit" (``upper``) or "value ≥ limit": SUPPORTED when the whole
    interval complies, REJECTED when none of it does, INCONCLUSIVE when it straddles the limit."""
    if np.isnan(low) or np.isnan(high):
        return INCONCLUSIVE
    if not upper:
        low, high, limit = -high, -low, -limit
    if high <= limit:
        return SUPPORTED
    return REJECTED if low > limit else INCONCLUSIVE


def pvalue_verdict(statistic: float, p_value: float, alpha: float, sign: int | None = None,
                   min_effect: float | None = None) -> str:
    """Verdict from a test: SUPPORTED when p ≤ alpha and the statistic has the claimed ``sign``
    (any sign when None); REJECTED when p ≤ alpha with the other sign, or when p > alpha and
    |statistic| < ``min_effect`` (no difference worth having); INCONCLUSIVE otherwise."""
    if np.isnan(p_value) or np.isnan(statistic):
        return INCONCLUSIVE
    if p_value <= alpha:
        return SUPPORTED if sign is None or np.sign(statistic) == sign else REJECTED
    if min_effect is not None and abs(statistic) < min_effect:
        return REJECTED
    return INCONCLUSIVE


def combine_verdicts(verdicts: Sequence[str]) -> str:
    """A hypothesis is REJECTED when any criterion is, SUPPORTED when all are, else INCONCLUSIVE."""
    verdicts = list(verdicts)
    if REJECTED in verdicts:
        return REJECTED
    return SUPPORTED if verdicts and all(v == SUPPORTED for v in verdicts) else INCONCLUSIVE


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class _Resampling:
    ci: float
    n_resamples: int
    seed: int

    def pooled(self, values, lows=None, highs=None) -> Interval:
        """Mean over units (pairs, draws, configurations) with an interval that covers both
        sources of doubt: the percentile bootstrap over the units (their spread) and, when the
        units have their own paired-bootstrap intervals, the mean of those bounds (test-set
        sampling, which units scored on the same test samples share). The wider of the two wins;
        a single unit without an interval of its own gives none (NaN), never a false certainty.
        """
        values = np.asarray(values, dtype=float)
        finite = np.isfinite(values)
        used = values[finite]
        if used.size == 0:
            return Interval(math.nan, math.nan, math.nan, 0)
        low, high = self._between_units(used)
        if lows is not None and highs is not None:  # fmin/fmax: a NaN side gives way
            low = float(np.fmin(low, np.mean(np.asarray(lows, dtype=float)[finite])))
            high = float(np.fmax(high, np.mean(np.asarray(highs, dtype=float)[finite])))
        return Interval(float(used.mean()), low, high, int(used.size))

    def pooled_change(self, frame: pd.DataFrame, metric: str) -> Interval:
        """``pooled`` over the rows of ``frame`` of ``delta_<metric>`` and its bounds."""
        change = f"delta_{metric}"
        return self.pooled(frame[change], frame[f"{change}_low"], frame[f"{change}_high"])

    def _between_units(self, used: np.ndarray) -> tuple[float, float]:
        if used.size < 2:  # one unit shows no spread; only its own interval can speak for it
            return math.nan, math.nan
        if np.ptp(used) == 0:  # identical units: the bootstrap has no spread to show
            return float(used[0]), float(used[0])
        result = scipy_stats.bootstrap((used,), np.mean, n_resamples=self.n_resamples,
                                       confidence_level=self.ci, method="percentile",
                                       rng=np.random.default_rng(self.seed))
        return float(result.confidence_interval.low), float(result.confidence_interval.high)


def evaluate_hypotheses(pairs: pd.DataFrame, rules: HypothesisRules = HypothesisRules(), *,
                        ci: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> list[dict]:
    """H1–H6 from the comparison table (``pair_table``), each a dict with ``id, claim, test,
    estimate, low, high, p_value, effect_size, effect_size_kind, n, verdict, reason, criteria,
    details``.

    Each hypothesis has criteria; each criterion gets a verdict from one of the explicit rules
    ``directional_verdict``, ``bound_verdict`` or ``pvalue_verdict`` with thresholds from
    ``rules`` (the rule text, with the numbers used, is stored with the criterion), and
    ``combine_verdicts`` joins them. The first criterion is the headline estimate. Without the
    data a hypothesis needs, its verdict is INCONCLUSIVE with the reason "no data: …".
    Effect sizes are Hedges' g (``fairness_metrics.hedges_g``) between the two sides' repeated
    runs, except H1 whose effect size is the mean Spearman correlation itself.
    """
    resampling = _Resampling(ci, n_resamples, seed)
    checks = (_h1_model_size, _h2_qat, _h3_balanced_calibration, _h4_mixed_precision,
              _h5_int8_sweet_spot, _h6_architecture)
    return [check(pairs, rules, resampling) for check in checks]


def _criterion(name: str, rule: str, interval: Interval, verdict: str) -> dict:
    return {"name": name, "rule": rule, "estimate": interval.estimate, "low": interval.low,
            "high": interval.high, "n": interval.n, "verdict": verdict}


def _point(value: float, n: int) -> Interval:
    return Interval(value, value, value, n)


def _hypothesis(hid: str, criteria: list[dict], *, p_value: float = math.nan,
                effect_size: float = math.nan, effect_size_kind: str = "hedges_g",
                details: dict | None = None) -> dict:
    claim, test = HYPOTHESES[hid]
    head = criteria[0]
    return {"id": hid, "claim": claim, "test": test, "statistic": ESTIMATE_LABELS[hid],
            "estimate": head["estimate"],
            "low": head["low"], "high": head["high"], "p_value": p_value,
            "effect_size": effect_size, "effect_size_kind": effect_size_kind, "n": head["n"],
            "verdict": combine_verdicts([c["verdict"] for c in criteria]),
            "reason": "; ".join(f"{c['name']}: {c['verdict']}" for c in criteria),
            "criteria": criteria, "details": details or {}}


def _no_data(hid: str, what: str) -> dict:
    claim, test = HYPOTHESES[hid]
    return {"id": hid, "claim": claim, "test": test, "statistic": ESTIMATE_LABELS[hid],
            "estimate": math.nan, "low": math.nan,
            "high": math.nan, "p_value": math.nan, "effect_size": math.nan,
            "effect_size_kind": "", "n": 0, "verdict": INCONCLUSIVE, "reason": f"no data: {what}",
            "criteria": [], "details": {}}


def _effect_size(a, b) -> float:
    """Hedges' g of two sets of runs; NaN when a side has fewer than two finite runs."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if min(np.isfinite(a).sum(), np.isfinite(b).sum()) < 2:
        return math.nan
    return fm.hedges_g(a, b)


def _median_ratio(frame: pd.DataFrame, column: str) -> Interval:
    """Median over the rows of ``column`` / ``reference_<column>`` (a point, no interval); a zero
    denominator gives inf, not an error."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = (frame[column].to_numpy(dtype=float)
                  / frame[f"reference_{column}"].to_numpy(dtype=float))
    ratios = ratios[~np.isnan(ratios)]
    return _point(float(np.median(ratios)) if ratios.size else math.nan, len(ratios))


def _quantized_vs_fp32(pairs: pd.DataFrame) -> pd.DataFrame:
    return pairs[(pairs["comparison"] == "vs_fp32") & (pairs["phase"] == "quantization")]


def _with_reference(frame: pd.DataFrame, metric: str) -> pd.Series:
    """The reference's value of a metric, from the configuration's value and the change."""
    return frame[metric] - frame[f"delta_{metric}"]


def _h1_model_size(pairs, rules, resampling) -> dict:
    quantized = _quantized_vs_fp32(pairs)
    params = quantized.groupby("arch")["reference_params"].median().dropna()
    cells = pd.concat([_arch_cells(quantized, "delta_accuracy", absolute=True),
                       _arch_cells(quantized, "delta_dp_gap")])
    cells = cells.reindex(columns=params.index).dropna()
    if cells.shape[1] < rules.min_architectures or cells.empty:
        return _no_data("H1", f"needs quantized-vs-FP32 changes of at least "
                              f"{rules.min_architectures} architectures with parameter counts "
                              "in a common (dataset, method, bits) cell")
    test = permutation_spearman(np.log(params[cells.columns].to_numpy()), cells.to_numpy(),
                                n_resamples=resampling.n_resamples, seed=resampling.seed)
    verdict = pvalue_verdict(test["statistic"], test["p_value"], rules.alpha, sign=-1)
    rule = (f"SUPPORTED if p ≤ alpha ({format_number(rules.alpha)}) and the mean correlation is "
            "negative; REJECTED if p ≤ alpha and it is positive; INCONCLUSIVE otherwise")
    n = cells.shape[1]
    criterion = _criterion("larger models lose less", rule,
                           Interval(test["statistic"], math.nan, math.nan, n), verdict)
    details = {"architectures": list(cells.columns), "n_architectures": n,
               "n_cells": int(cells.shape[0]), "n_orderings": test["n_orderings"],
               "exact": test["exact"], "min_attainable_p": test["min_p"],
               "min_attainable_p_fraction": test["min_p_fraction"],
               "per_cell_correlation": dict(zip(cells.index, test["per_row"])),
               "limitation": _permutation_limitation(n, test, rules.alpha, "orderings of the "
                                                     "parameter counts")}
    return _hypothesis("H1", [criterion], p_value=test["p_value"], effect_size=test["statistic"],
                       effect_size_kind="mean spearman rho", details=details)


def _permutation_limitation(n: int, test: dict, alpha: float, what: str) -> str:
    how = "an exact" if test["exact"] else "a sampled"
    text = (f"With {n} architectures {how} permutation test has {test['n_orderings']} {what}, "
            f"so its two-sided p-value cannot go below {test['min_p_fraction']} "
            f"(= {format_number(test['min_p'])}).")
    if test["min_p"] > alpha:
        text += (f" That is above alpha = {format_number(alpha)}: these data cannot support or "
                 "reject the claim by this test, whatever they show.")
    return text


def _h2_qat(pairs, rules, resampling) -> dict:
    qat = pairs[pairs["comparison"] == "qat_vs_ptq"]
    if qat.empty:
        return _no_data("H2", "no QAT configuration with a static-PTQ counterpart at the same "
                              "dataset, architecture, bits and seed")
    gain = resampling.pooled_change(qat, "accuracy")
    cost = _median_ratio(qat, "cost_s")
    criteria = [
        _criterion("QAT is more accurate than PTQ", _directional_rule(+1, rules), gain,
                   directional_verdict(gain.low, gain.high, +1, rules.min_effect)),
        _criterion("the gain is modest",
                   f"SUPPORTED if the interval's upper end ≤ modest_gain "
                   f"({format_number(rules.modest_gain)}); REJECTED if its lower end is above",
                   gain, bound_verdict(gain.low, gain.high, rules.modest_gain)),
        _criterion("QAT costs much more", f"SUPPORTED if the median cost ratio QAT / PTQ ≥ "
                   f"min_cost_ratio ({format_number(rules.min_cost_ratio)}); REJECTED if below",
                   cost, bound_verdict(cost.low, cost.high, rules.min_cost_ratio, upper=False))]
    return _hypothesis("H2", criteria,
                       effect_size=_effect_size(qat["accuracy"], _with_reference(qat, "accuracy")),
                       details={"delta_dp_gap": asdict(resampling.pooled_change(qat, "dp_gap")),
                                "pairs": list(qat["config_id"])})


def _directional_rule(sign: int, rules: HypothesisRules) -> str:
    side = "above" if sign > 0 else "below"
    return (f"SUPPORTED if the interval lies wholly {side} 0; REJECTED if it rules out a change "
            f"of min_effect ({format_number(rules.min_effect)}) or more in that direction; "
            "INCONCLUSIVE otherwise")


def _tolerance_rule(rules: HypothesisRules) -> str:
    return (f"SUPPORTED if the interval's upper end ≤ fairness_tolerance "
            f"({format_number(rules.fairness_tolerance)}); REJECTED if its lower end is above")


def _h3_balanced_calibration(pairs, rules, resampling) -> dict:
    balanced = pairs[(pairs["comparison"] == "vs_ptq")
                     & (pairs["method"] == "bias_aware_calibration")
                     & pairs["calibration"].str.startswith("balanced")
                     & pairs["reference_calibration"].str.startswith("random")]
    if balanced.empty:
        return _no_data("H3", "no balanced-calibration draw paired with a random-calibration draw")
    change = resampling.pooled_change(balanced, "dp_gap")
    cost = _median_ratio(balanced, "cost_s")
    criteria = [
        _criterion("balanced calibration lowers the DP gap", _directional_rule(-1, rules),
                   change, directional_verdict(change.low, change.high, -1, rules.min_effect)),
        _criterion("at no extra cost", f"SUPPORTED if the median cost ratio balanced / random ≤ "
                   f"max_calibration_cost_ratio ({format_number(rules.max_calibration_cost_ratio)}"
                   "); REJECTED if above", cost,
                   bound_verdict(cost.low, cost.high, rules.max_calibration_cost_ratio))]
    return _hypothesis("H3", criteria,
                       effect_size=_effect_size(balanced["dp_gap"],
                                                _with_reference(balanced, "dp_gap")),
                       details={"draws": list(balanced["config_id"])})


def _h4_mixed_precision(pairs, rules, resampling) -> dict:
    mixed = pairs[(pairs["comparison"] == "vs_fp32") & (pairs["method"] == "mixed_precision")]
    if mixed.empty:
        return _no_data("H4", "no mixed-precision configuration with an FP32 baseline")
    change = resampling.pooled_change(mixed, "dp_gap")
    size = _median_ratio(mixed, "size_mib")
    criteria = [
        _criterion("keeps the FP32 DP gap within tolerance", _tolerance_rule(rules), change,
                   bound_verdict(change.low, change.high, rules.fairness_tolerance)),
        _criterion("at a fraction of the size", f"SUPPORTED if the median size / FP32 size ≤ "
                   f"max_size_fraction ({format_number(rules.max_size_fraction)}); REJECTED if "
                   "above", size, bound_verdict(size.low, size.high, rules.max_size_fraction))]
    return _hypothesis("H4", criteria,
                       effect_size=_effect_size(mixed["dp_gap"], _with_reference(mixed, "dp_gap")),
                       details={"configurations": list(mixed["config_id"])})


UNIT_KEYS = ["dataset", "arch", "method", "act_bits", "calibration", "observer", "seed", "draw"]
"""What identifies one quantized model apart from its weight bits (H5 pairs INT4 with INT8)."""


def _h5_int8_sweet_spot(pairs, rules, resampling) -> dict:
    quantized = _quantized_vs_fp32(pairs)
    sweet = quantized[quantized["weight_bits"] == rules.sweet_spot_bits]
    lower = quantized[quantized["weight_bits"] == rules.lower_bits]
    paired = lower.merge(sweet, on=UNIT_KEYS, suffixes=("_lower", "_sweet"))
    if sweet.empty or paired.empty:
        return _no_data("H5", f"needs quantized models at {rules.sweet_spot_bits} and at "
                              f"{rules.lower_bits} weight bits with the same architecture, "
                              "method, calibration and seed")
    at_sweet = resampling.pooled_change(sweet, "dp_gap")
    # each pair's own interval for the difference: the widest the two paired intervals allow
    rise = resampling.pooled(paired["delta_dp_gap_lower"] - paired["delta_dp_gap_sweet"],
                             paired["delta_dp_gap_low_lower"] - paired["delta_dp_gap_high_sweet"],
                             paired["delta_dp_gap_high_lower"] - paired["delta_dp_gap_low_sweet"])
    criteria = [
        _criterion(f"small DP-gap change at {rules.sweet_spot_bits} bits", _tolerance_rule(rules),
                   at_sweet, bound_verdict(at_sweet.low, at_sweet.high, rules.fairness_tolerance)),
        _criterion(f"larger at {rules.lower_bits} bits", _directional_rule(+1, rules), rise,
                   directional_verdict(rise.low, rise.high, +1, rules.min_effect))]
    return _hypothesis("H5", criteria,
                       effect_size=_effect_size(paired["delta_dp_gap_lower"],
                                                paired["delta_dp_gap_sweet"]),
                       details={"n_pairs": len(paired)})


def _h6_architecture(pairs, rules, resampling) -> dict:
    cells = _arch_cells(_quantized_vs_fp32(pairs), "delta_dp_gap").dropna(axis=1, how="all")
    cells = cells.dropna()
    is_transformer = np.array([is_transformer_name(a, rules.transformer_markers)
                               for a in cells.columns])
    if cells.empty or is_transformer.sum() < 1 or (~is_transformer).sum() < 2:
        return _no_data("H6", "needs quantized-vs-FP32 DP-gap changes of at least one transformer "
                              "and two CNNs in a common (dataset, method, bits) cell")
    test = permutation_family_difference(cells.to_numpy(), is_transformer,
                                         n_resamples=resampling.n_resamples, seed=resampling.seed)
    verdict = pvalue_verdict(test["statistic"], test["p_value"], rules.alpha,
                             min_effect=rules.min_effect)
    rule = (f"SUPPORTED if p ≤ alpha ({format_number(rules.alpha)}); REJECTED if p > alpha and "
            f"|difference| < min_effect ({format_number(rules.min_effect)}); INCONCLUSIVE "
            "otherwise")
    n = cells.shape[1]
    criterion = _criterion("the transformer differs from the CNNs", rule,
                           Interval(test["statistic"], math.nan, math.nan, n), verdict)
    centred = cells.to_numpy() - cells.to_numpy().mean(axis=1, keepdims=True)
    details = {"transformers": list(cells.columns[is_transformer]),
               "cnns": list(cells.columns[~is_transformer]), "n_cells": int(cells.shape[0]),
               "cnn_spread": float(np.mean(np.std(cells.to_numpy()[:, ~is_transformer], axis=1,
                                                  ddof=1))),
               "n_labellings": test["n_orderings"], "exact": test["exact"],
               "min_attainable_p": test["min_p"],
               "min_attainable_p_fraction": test["min_p_fraction"],
               "limitation": _permutation_limitation(n, test, rules.alpha,
                                                     "labellings of the transformers")}
    return _hypothesis("H6", [criterion], p_value=test["p_value"],
                       effect_size=_effect_size(centred[:, is_transformer].ravel(),
                                                centred[:, ~is_transformer].ravel()),
                       details=details)


def is_transformer_name(arch: str, markers: Sequence[str]) -> bool:
    """Whether a ``_``-separated part of ``arch`` starts with one of ``markers``."""
    return any(part.startswith(tuple(markers)) for part in str(arch).split("_"))


CELL_KEYS = ["dataset", "method", "weight_bits", "act_bits"]


def _arch_cells(quantized: pd.DataFrame, column: str, absolute: bool = False) -> pd.DataFrame:
    """A (cell × architecture) table of the mean of ``column`` (over seeds and calibrations)."""
    if quantized.empty:
        return pd.DataFrame()
    values = quantized[column].abs() if absolute else quantized[column]
    cells = quantized.assign(value=values).pivot_table(index=CELL_KEYS, columns="arch",
                                                       values="value", aggfunc="mean")
    cells.index = [f"{column}:" + "/".join(format_number(k) for k in key) for key in cells.index]
    return cells


# ----------------------------------------------------------------------------- permutation tests

def permutation_spearman(x, y_rows, *, n_resamples: int = 2000, seed: int = 0) -> dict:
    """Mean Spearman correlation of ``x`` with each row of ``y_rows``, and its two-sided
    permutation p-value.

    ``x`` describes the columns (e.g. each architecture's log parameter count), so one ordering
    of ``x`` is applied to every row: the rows are not treated as independent evidence. Exact
    over all n! orderings up to ``EXACT_PERMUTATION_LIMIT``, else ``n_resamples`` random ones.
    Returns statistic, p_value, per_row, n_orderings, exact, min_p, min_p_fraction.
    """
    x_ranks = _standardized_ranks(np.asarray(x, dtype=float)[None, :])[0]
    y_ranks = _standardized_ranks(np.asarray(y_rows, dtype=float))
    y_ranks = y_ranks[np.isfinite(y_ranks).all(axis=1)]  # a constant row has no ranking
    n = x_ranks.size
    orderings = _orderings(n, math.factorial(n), n_resamples, seed,
                           lambda: itertools.permutations(range(n)),
                           lambda rng: rng.permutation(n))
    null = (x_ranks[orderings] @ y_ranks.T / n).mean(axis=1) if len(y_ranks) else np.array([])
    per_row = x_ranks @ y_ranks.T / n
    return {"per_row": per_row.tolist(),
            **_permutation_p(float(per_row.mean()) if per_row.size else math.nan, null,
                             math.factorial(n))}


def permutation_family_difference(values, is_member, *, n_resamples: int = 2000,
                                  seed: int = 0) -> dict:
    """Mean over rows of (mean of the member columns − mean of the others), and its two-sided
    permutation p-value over relabellings of which columns are members (one relabelling for all
    rows). Exact over all C(n, k) labellings up to ``EXACT_PERMUTATION_LIMIT``."""
    values, is_member = np.asarray(values, dtype=float), np.asarray(is_member, dtype=bool)
    n, k = is_member.size, int(is_member.sum())
    total = math.comb(n, k)
    labellings = _orderings(n, total, n_resamples, seed,
                            lambda: itertools.combinations(range(n), k),
                            lambda rng: rng.choice(n, size=k, replace=False))
    weights = np.full((len(labellings), n), -1.0 / (n - k))
    np.put_along_axis(weights, labellings[:, :k], 1.0 / k, axis=1)
    observed_weights = np.where(is_member, 1.0 / k, -1.0 / (n - k))
    null = (values @ weights.T).mean(axis=0)
    return _permutation_p(float((values @ observed_weights).mean()), null, total)


def _orderings(n: int, total: int, n_resamples: int, seed: int, enumerate_all, draw) -> np.ndarray:
    """Every permutation (or labelling) when there are at most EXACT_PERMUTATION_LIMIT, else
    ``n_resamples`` random ones, as an integer array."""
    if total <= EXACT_PERMUTATION_LIMIT:
        return np.array(list(enumerate_all()), dtype=int).reshape(total, -1)
    rng = np.random.default_rng(seed)
    return np.array([draw(rng) for _ in range(n_resamples)], dtype=int)


def _permutation_p(observed: float, null: np.ndarray, total: int) -> dict:
    """Two-sided p = share of the null at least as extreme as observed (sampled nulls count the
    observed arrangement too), and the smallest p these data could give."""
    exact = null.size == total
    if np.isnan(observed) or null.size == 0:
        return {"statistic": observed, "p_value": math.nan, "n_orderings": total, "exact": exact,
                "min_p": math.nan, "min_p_fraction": ""}
    tol = 1e-12
    hits = int(np.sum(np.abs(null) >= abs(observed) - tol))
    most_extreme = int(np.sum(np.abs(null) >= np.abs(null).max() - tol))
    if exact:
        p, min_p = Fraction(hits, total), Fraction(most_extreme, total)
    else:
        p, min_p = Fraction(hits + 1, null.size + 1), Fraction(1, null.size + 1)
    return {"statistic": observed, "p_value": float(p), "n_orderings": total, "exact": exact,
            "min_p": float(min_p), "min_p_fraction": str(min_p)}


def _standardized_ranks(rows: np.ndarray) -> np.ndarray:
    """Ranks within each row, centred and scaled to unit (population) variance; NaN if constant."""
    ranks = scipy_stats.rankdata(rows, axis=1)
    spread = ranks.std(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (ranks - ranks.mean(axis=1, keepdims=True)) / np.where(spread > 0, spread, np.nan)


# ----------------------------------------------------------------------------- Pareto and recommendation

def pareto_front(frame: pd.DataFrame, maximize: Sequence[str] = (),
                 minimize: Sequence[str] = ()) -> pd.Series:
    """Boolean mask (aligned with ``frame``) of the non-dominated rows.

    A row is dominated when another is at least as good on every objective and strictly better
    on one. Rows with a missing objective are never on the front. Equal rows are both kept.
    """
    objectives = [*maximize, *minimize]
    if not objectives:
        raise ValueError("pareto_front needs at least one objective: pass column names in "
                         "maximize=[...] and/or minimize=[...]")
    absent = [c for c in objectives if c not in frame.columns]
    if absent:
        raise ValueError(f"objective columns {absent} are not in the table; available: "
                         f"{sorted(map(str, frame.columns))}")
    costs = np.column_stack([-frame[c].to_numpy(dtype=float) for c in maximize]
                            + [frame[c].to_numpy(dtype=float) for c in minimize])
    complete = ~np.isnan(costs).any(axis=1)
    points = costs[complete]
    no_worse = (points[:, None, :] <= points[None, :, :]).all(axis=2)
    better = (points[:, None, :] < points[None, :, :]).any(axis=2)
    dominated = (no_worse & better).any(axis=0)  # [j, i]: row j dominates row i
    mask = np.zeros(len(frame), dtype=bool)
    mask[np.flatnonzero(complete)[~dominated]] = True
    return pd.Series(mask, index=frame.index, name="pareto")


PARETO_OBJECTIVES = {"maximize": ["accuracy"], "minimize": ["dp_gap", "size_mib"]}


def with_pareto(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with a ``pareto`` column: non-dominated in accuracy × DP gap × size, per dataset."""
    masks = [pareto_front(rows, **PARETO_OBJECTIVES) for _, rows in table.groupby("dataset")]
    return table.assign(pareto=pd.concat(masks) if masks else False)


def size_budgets(table: pd.DataFrame, budgets: Sequence[float] | None) -> list[float]:
    """The budgets given, checked, or DEFAULT_BUDGET_FRACTIONS of the largest FP32 model."""
    if budgets is None:
        fp32 = table.loc[table["method"] == "fp32", "size_mib"].dropna()
        largest = fp32.max() if len(fp32) else table["size_mib"].max()
        return [] if np.isnan(largest) else [f * largest for f in DEFAULT_BUDGET_FRACTIONS]
    bad = [b for b in budgets if not isinstance(b, (int, float)) or not b > 0]
    if bad:
        raise ValueError(f"size_budgets_mib={list(budgets)} holds {bad}; expected positive sizes "
                         "in MiB, e.g. [5, 25], or None for fractions of the FP32 size")
    return sorted(float(b) for b in budgets)


RECOMMENDATION_COLUMNS = ["dataset", "size_budget_mib", "n_candidates", "config_id", "arch",
                          "method", "weight_bits", "act_bits", "execution", "accuracy", "dp_gap",
                          "fp32_dp_gap", "size_mib"]


def recommend(table: pd.DataFrame, *, size_budgets_mib: Sequence[float] | None = None,
              fairness_tolerance: float = 0.02) -> pd.DataFrame:
    """Which configuration to ship, per dataset and size budget.

    Rule: among the configurations with ``size_mib`` ≤ budget and ``dp_gap`` ≤ the DP gap of
    their own FP32 baseline + ``fairness_tolerance``, the most accurate (ties: the smaller, then
    the first id). FP32 models compete too. Point estimates; a row with an empty ``config_id``
    means none qualifies.
    """
    rows = []
    for dataset, models in table.groupby("dataset", sort=True):
        fair = models[models["dp_gap"] <= models["fp32_dp_gap"] + fairness_tolerance]
        for budget in size_budgets(models, size_budgets_mib):
            candidates = fair[fair["size_mib"] <= budget]
            best = candidates.sort_values(["accuracy", "size_mib", "config_id"],
                                          ascending=[False, True, True]).head(1)
            choice = best.iloc[0].to_dict() if len(best) else {"config_id": ""}
            rows.append({**choice, "dataset": dataset, "size_budget_mib": budget,
                         "n_candidates": len(candidates)})
    return pd.DataFrame(rows).reindex(columns=RECOMMENDATION_COLUMNS)


# ----------------------------------------------------------------------------- display tables

def _bits(frame: pd.DataFrame) -> pd.Series:
    return "w" + frame["weight_bits"].map(format_number).astype(str) + "a" + frame["act_bits"]


def baseline_table(table: pd.DataFrame) -> pd.DataFrame:
    """FP32 models: size, speed, training time, accuracy and fairness with intervals."""
    fp32 = table[table["method"] == "fp32"]
    columns = ["dataset", "arch", "seed", "params", "size_mib", "latency_ms_b1", "train_time_s",
               *_with_bounds("accuracy", "dp_gap"), "eo_gap", "worst_group_accuracy"]
    return fp32.reindex(columns=columns).sort_values(["dataset", "arch", "seed"])


def quantization_table(table: pd.DataFrame) -> pd.DataFrame:
    """Quantized models with their change vs FP32. Latency only where integer kernels ran: a
    simulated (fake-quant) model's speed says nothing about a deployed one."""
    rows = table[table["phase"] == "quantization"].assign(bits=_bits)
    rows["latency_ms_b1"] = rows["latency_ms_b1"].where(rows["execution"] == "real_int8")
    columns = ["dataset", "arch", "method", "bits", "calibration", "draw", "seed", "execution",
               "size_mib", "compression", "latency_ms_b1", "cost_s", "accuracy",
               *_with_bounds("delta_accuracy"), "dp_gap", *_with_bounds("delta_dp_gap"),
               "flip_rate", "pareto"]
    return rows.reindex(columns=columns).sort_values(["dataset", "arch", "method", "bits",
                                                      "calibration", "draw", "seed"])


def mitigation_table(table: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """Mitigations: accuracy, DP gap, size, cost, change vs FP32 and vs plain PTQ (``ptq_delta_*``)."""
    rows = table[table["phase"] == "mitigation"].assign(bits=_bits)
    versus = pairs.loc[pairs["comparison"] == "vs_ptq",
                       ["config_id", *_with_bounds("delta_accuracy", "delta_dp_gap")]]
    versus = versus.set_index("config_id").add_prefix("ptq_").reset_index()
    rows = rows.merge(versus, on="config_id", how="left")
    columns = ["dataset", "arch", "method", "variant", "bits", "calibration", "draw",
               "size_mib", "cost_s", "accuracy", "dp_gap", "delta_dp_gap",
               *_with_bounds("ptq_delta_accuracy", "ptq_delta_dp_gap"), "compare_to"]
    return rows.reindex(columns=columns).sort_values(["dataset", "arch", "method", "bits",
                                                      "calibration", "draw"])


def hypotheses_table(hypotheses: list[dict]) -> pd.DataFrame:
    """One row per hypothesis: headline estimate, interval, p-value, effect size, verdict."""
    columns = ["id", "statistic", "estimate", "low", "high", "p_value", "effect_size",
               "effect_size_kind", "n", "verdict", "reason"]
    return pd.DataFrame(hypotheses, columns=[*columns, "claim"]).reindex(columns=columns)


def _with_bounds(*metrics: str) -> list[str]:
    return [c for m in metrics for c in (m, f"{m}_low", f"{m}_high")]


def _interval_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if f"{c}_low" in frame.columns and f"{c}_high" in frame.columns]


def display(frame: pd.DataFrame) -> pd.DataFrame:
    """A table for reading: intervals folded into ``estimate [low, high]``, empty columns dropped."""
    return with_intervals(frame, _interval_columns(frame)).dropna(axis=1, how="all")


# ----------------------------------------------------------------------------- the whole phase

@dataclass
class Analysis:
    """Every table the analysis phase computes, before anything is written."""

    run: RunArtifacts
    settings: dict
    rules: HypothesisRules
    table: pd.DataFrame
    """Analysable configurations with recomputed metrics and the ``pareto`` flag."""
    pairs: pd.DataFrame
    stats: pd.DataFrame
    per_group: pd.DataFrame
    group_means: pd.DataFrame
    group_ratios: pd.DataFrame
    hypotheses: list[dict]
    recommendation: pd.DataFrame
    failed: pd.DataFrame
    without_predictions: list[str] = field(default_factory=list)

    def tables(self) -> dict[str, pd.DataFrame]:
        """The tables of the report, by file name (written to tables/<name>.csv and .tex)."""
        return {"baseline": baseline_table(self.table),
                "quantization": quantization_table(self.table),
                "mitigation": mitigation_table(self.table, self.pairs),
                "hypotheses": hypotheses_table(self.hypotheses),
                "group_drop_ratios": self.group_ratios, "recommendation": self.recommendation,
                "failed": self.failed}


def analyse(run_dir: str | Path, *, n_resamples: int = 2000, alpha: float = 0.05, seed: int = 0,
            size_budgets_mib: Sequence[float] | None = None, fairness_tolerance: float = 0.02,
            ci: float = 0.95, min_group_size: int = 30, rules: HypothesisRules | None = None,
            progress: bool = True) -> Analysis:
    """Compute every analysis table of a run folder (``run_analysis`` also writes them)."""
    _check_settings(alpha, fairness_tolerance)
    run = load_run(run_dir)
    rules = replace(rules or HypothesisRules(), alpha=alpha, fairness_tolerance=fairness_tolerance)
    ok = run.configs[run.configs["status"] == "ok"]
    has_predictions = ok["config_id"].map(lambda c: predictions_path(run.run_dir, c).is_file())
    configs = ok[has_predictions].reset_index(drop=True)
    without = ok.loc[~has_predictions, "config_id"].tolist()
    failed = run.configs.loc[run.configs["status"] != "ok",
                             ["phase", "config_id", "status", "error"]]
    if configs.empty:
        raise ValueError(f"{run.run_dir}: no configuration can be analysed ({len(failed)} failed, "
                         f"{len(without)} without predictions under predictions/): fix the errors "
                         "recorded in the result tables' `error` column and rerun those phases")
    if without:
        logger.warning("%d configurations have no prediction table and are left out: %s",
                       len(without), without[:5])
    settings = {"n_resamples": n_resamples, "ci": ci, "seed": seed,
                "min_group_size": min_group_size, "size_budgets_mib": size_budgets_mib}
    pairs = comparison_pairs(configs)
    summaries = summarize_all(configs, pairs, _prediction_loader(run.run_dir),
                              n_resamples=n_resamples, ci=ci, seed=seed,
                              min_group_size=min_group_size, progress=progress)
    table = with_pareto(configuration_table(configs, pairs, summaries))
    pairs = pair_table(pairs, table, summaries)
    per_group = per_group_table(pairs, summaries)
    means = group_drop_means(per_group)
    return Analysis(
        run=run, settings=settings, rules=rules, table=table, pairs=pairs,
        stats=statistics_table(table, pairs), per_group=per_group, group_means=means,
        group_ratios=drop_ratios(means),
        hypotheses=evaluate_hypotheses(pairs, rules, ci=ci, n_resamples=n_resamples, seed=seed),
        recommendation=recommend(table, size_budgets_mib=size_budgets_mib,
                                 fairness_tolerance=fairness_tolerance),
        failed=failed, without_predictions=without)


def _check_settings(alpha: float, fairness_tolerance: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha!r} must lie strictly between 0 and 1, e.g. 0.05")
    if not fairness_tolerance >= 0:
        raise ValueError(f"fairness_tolerance={fairness_tolerance!r} must be a non-negative DP-gap "
                         "change (probability units), e.g. 0.02")


def run_analysis(run_dir: str | Path, *, n_resamples: int = 2000, alpha: float = 0.05,
                 seed: int = 0, size_budgets_mib: Sequence[float] | None = None,
                 fairness_tolerance: float = 0.02, ci: float = 0.95, min_group_size: int = 30,
                 rules: HypothesisRules | None = None, figures: bool = True,
                 progress: bool = True) -> dict[str, Path]:
    """The analysis phase: read ``run_dir``, write ``<run_dir>/analysis/``, return the written
    files keyed by their path relative to that folder (``"stats.csv"``, ``"report.md"``, …).

    ``alpha`` and ``fairness_tolerance`` override those fields of ``rules``; ``figures=False``
    skips the figures (and the report then links none).
    """
    analysis = analyse(run_dir, n_resamples=n_resamples, alpha=alpha, seed=seed,
                       size_budgets_mib=size_budgets_mib, fairness_tolerance=fairness_tolerance,
                       ci=ci, min_group_size=min_group_size, rules=rules, progress=progress)
    return write_outputs(analysis, figures=figures)


def write_outputs(analysis: Analysis, *, figures: bool = True) -> dict[str, Path]:
    """Write every file of ``analysis`` into ``<run_dir>/analysis/``; returns them by name."""
    out = analysis.run.run_dir / "analysis"
    written = {"stats.csv": write_csv(analysis.stats, out / "stats.csv"),
               "per_group.csv": write_csv(analysis.per_group, out / "per_group.csv"),
               "hypotheses.json": write_json({"rules": asdict(analysis.rules),
                                              "hypotheses": analysis.hypotheses},
                                             out / "hypotheses.json"),
               "summary.json": write_json(run_summary(analysis), out / "summary.json")}
    for name, frame in {**analysis.tables(), "group_drops": analysis.group_means}.items():
        written[f"tables/{name}.csv"] = write_csv(frame, out / "tables" / f"{name}.csv")
        written[f"tables/{name}.tex"] = atomic_write_text(
            out / "tables" / f"{name}.tex",
            latex_table(display(frame), caption=TABLE_CAPTIONS[name], label=f"tab:{name}"))
    figure_paths = _write_figures(analysis, out / "figures") if figures else {}
    written.update(figure_paths)
    written["report.md"] = atomic_write_text(out / "report.md", report(analysis, figure_paths))
    logger.info("analysis of %s written to %s", analysis.run.run_dir, out)
    return written


TABLE_CAPTIONS = {
    "baseline": "FP32 baselines: size, latency, training time, accuracy and DP gap with bootstrap "
                "intervals.",
    "quantization": "Quantized configurations and their change vs FP32 (paired bootstrap "
                    "intervals). Latency only for real integer execution.",
    "mitigation": "Mitigations: change vs FP32 and vs plain PTQ at the same bits.",
    "hypotheses": "Hypotheses, headline estimate with interval or p-value, and verdict.",
    "group_drop_ratios": "Worst-hit vs least-hit group: mean accuracy drop per cell and their ratio.",
    "group_drops": "Mean accuracy drop, flip share and sample share per group.",
    "recommendation": "Configuration to ship per size budget (fairness within tolerance of FP32).",
    "failed": "Configurations that failed (reported, not analysed).",
}


def _write_figures(analysis: Analysis, folder: Path) -> dict[str, Path]:
    import visualizations as viz  # matplotlib only when figures are wanted
    tables = analysis.tables()
    jobs = {"pareto": (viz.plot_pareto, analysis.table),
            "heatmaps": (viz.plot_heatmaps, analysis.table[analysis.table["method"] != "fp32"]),
            "group_drops": (viz.plot_group_drops, analysis.group_means),
            "mitigation": (viz.plot_mitigation, _mitigation_figure_table(analysis)),
            "hypotheses": (viz.plot_hypotheses, tables["hypotheses"]),
            "baseline": (viz.plot_baseline_table, display(tables["baseline"]).map(format_number))}
    written = {}
    for name, (plot, frame) in jobs.items():
        if frame.empty:
            logger.info("figure %s skipped: no data", name)
            continue
        for path in plot(frame, folder / name):
            written[f"figures/{path.name}"] = path
    return written


def _mitigation_figure_table(analysis: Analysis) -> pd.DataFrame:
    """Mitigated configurations plus the plain-PTQ configurations they are compared with."""
    table = analysis.table
    mitigated = table[table["phase"] == "mitigation"]
    references = table[table["config_id"].isin(mitigated["compare_to"])]
    return pd.concat([mitigated, references.assign(method="plain PTQ (compare_to)")])


# ----------------------------------------------------------------------------- report

def run_summary(analysis: Analysis) -> dict:
    """What ran and with which settings: the facts the report states about the run."""
    run, table = analysis.run, analysis.table
    present = [name for name in RESULT_FILES.values() if name not in run.missing_files]
    return {"run_dir": str(run.run_dir), "datasets": sorted(table["dataset"].unique()),
            "synthetic": _is_synthetic(analysis), "architectures": sorted(table["arch"].unique()),
            "inputs_present": present, "inputs_missing": run.missing_files,
            "n_configurations": len(table), "n_comparisons": len(analysis.pairs),
            "n_failed": len(analysis.failed),
            "n_without_predictions": len(analysis.without_predictions),
            "without_predictions": analysis.without_predictions, **analysis.settings,
            "comparisons": COMPARISONS,
            "families": "Holm and Benjamini-Hochberg adjust the p-values of one comparison kind "
                        "and one metric together (e.g. every vs_fp32 change of dp_gap)."}


def _is_synthetic(analysis: Analysis) -> bool:
    configured = (analysis.run.config.get("data") or {}).get("dataset")
    flagged = analysis.run.configs.get("synthetic", pd.Series(dtype=object))
    return (configured == "synthetic" or "synthetic" in set(analysis.table["dataset"])
            or flagged.astype(str).str.lower().eq("true").any())


def report(analysis: Analysis, figures: dict[str, Path]) -> str:
    """``report.md``: what ran, the main tables, the hypotheses with their verdicts, the per-group
    findings, the Pareto front and the recommendation — every number taken from a written table."""
    summary = run_summary(analysis)
    tables = analysis.tables()
    sections = [
        f"# Quantization and fairness: analysis of `{analysis.run.run_dir.name}`",
        _synthetic_banner(summary), _what_ran(analysis, summary),
        "## FP32 baselines\n\n" + _markdown_or(tables["baseline"], "No baseline results."),
        "## Quantization\n\n" + _markdown_or(tables["quantization"], _missing_phase(summary, "quantization")),
        "## Mitigation\n\n" + _markdown_or(tables["mitigation"], _missing_phase(summary, "mitigation")),
        _hypotheses_section(analysis, tables["hypotheses"]), _per_group_section(analysis),
        _pareto_section(analysis), _figures_section(figures), _recommendation_section(analysis)]
    return "\n\n".join(s for s in sections if s) + "\n"


def _synthetic_banner(summary: dict) -> str:
    if not summary["synthetic"]:
        return ""
    return ("> **SYNTHETIC DATA.** This run used the generated synthetic CelebA-format dataset, "
            "not real faces. Its numbers show that the pipeline works; they say nothing about "
            "how a real face-attribute classifier treats real people.")


def _missing_phase(summary: dict, phase: str) -> str:
    name = RESULT_FILES[phase]
    if name in summary["inputs_missing"]:
        return (f"Not analysed: `{name}` is missing (the {phase} phase did not run). Everything "
                "that needs it is marked INCONCLUSIVE with the reason \"no data\".")
    return f"`{name}` holds no analysable configuration."


def _markdown_or(frame: pd.DataFrame, empty_text: str) -> str:
    return markdown_table(display(frame)) if len(frame) else empty_text


def _what_ran(analysis: Analysis, summary: dict) -> str:
    lines = ["## What ran", "",
             f"- Run folder: `{summary['run_dir']}`",
             f"- Dataset: {', '.join(summary['datasets'])}"
             + (" (SYNTHETIC: generated images, not real faces)" if summary["synthetic"] else ""),
             f"- Architectures: {', '.join(summary['architectures'])}",
             f"- Result tables read: {', '.join(f'`{n}`' for n in summary['inputs_present'])}",
             f"- Missing inputs: {', '.join(f'`{n}`' for n in summary['inputs_missing']) or 'none'}",
             f"- Configurations analysed: {summary['n_configurations']}; comparisons: "
             f"{summary['n_comparisons']}; failed: {summary['n_failed']}; without a prediction "
             f"table: {summary['n_without_predictions']}",
             "", "Every metric is recomputed from the per-sample prediction tables "
             f"(`predictions/<config_id>.csv.gz`) with group-stratified bootstrap intervals "
             f"({summary['n_resamples']} resamples, level {format_number(summary['ci'])}, seed "
             f"{summary['seed']}). Changes are signed, configuration minus reference, on the same "
             "test samples with paired bootstrap intervals:", ""]
    lines += [f"- `{kind}`: {text}" for kind, text in COMPARISONS.items()]
    lines += ["", summary["families"], "", "Every row with its interval, p-value, adjusted "
              "p-values and effect size is in `stats.csv`; per-group numbers in `per_group.csv`."]
    if len(analysis.failed):
        lines += ["", "Failed configurations (reported, not analysed):", "",
                  markdown_table(analysis.failed)]
    if analysis.without_predictions:
        lines += ["", "Configurations left out for want of a prediction table: "
                  + ", ".join(f"`{c}`" for c in analysis.without_predictions)]
    config_path = analysis.run.run_dir / "config.yaml"
    if config_path.is_file():
        lines += ["", "<details><summary>config.yaml (exactly what ran)</summary>", "",
                  "```yaml", config_path.read_text().rstrip(), "```", "", "</details>"]
    return "\n".join(lines)


def _hypotheses_section(analysis: Analysis, table: pd.DataFrame) -> str:
    lines = ["## Hypotheses", "", "Verdicts come from fixed decision rules, applied to the data "
             "(thresholds in `hypotheses.json` under `rules`). A hypothesis is REJECTED when any "
             "criterion is, SUPPORTED when all are, INCONCLUSIVE otherwise.", "",
             markdown_table(display(table.drop(columns=["reason"])))]
    for hypothesis in analysis.hypotheses:
        lines += ["", f"### {hypothesis['id']}: {hypothesis['claim']}", "",
                  f"- Test: {hypothesis['test']}",
                  f"- Verdict: **{hypothesis['verdict']}** ({hypothesis['reason']})"]
        for c in hypothesis["criteria"]:
            lines.append(f"- {c['name']}: {format_number(c['estimate'])} "
                         f"[{format_number(c['low'])}, {format_number(c['high'])}] "
                         f"(n = {c['n']}), **{c['verdict']}**. Rule: {c['rule']}.")
        if "limitation" in hypothesis["details"]:
            lines.append(f"- Limit of the design: {hypothesis['details']['limitation']}")
    return "\n".join(lines)


def _per_group_section(analysis: Analysis) -> str:
    if analysis.group_ratios.empty:
        return "## Per-group analysis\n\nNo configuration has an FP32 baseline to compare with."
    return "\n".join([
        "## Per-group analysis", "",
        "Accuracy drop = FP32 accuracy − quantized accuracy within a group (positive: the group "
        "lost), averaged over the configurations of each cell. `worst_to_least` divides the "
        "worst-hit group's drop by the least-hit group's: inf when the least-hit group lost "
        "nothing (or gained) while another lost, nan when no group lost. Which groups the changed "
        "predictions come from (`flip_share` against `sample_share`, per configuration) is in "
        "`per_group.csv` and `tables/group_drops.csv`.", "",
        markdown_table(analysis.group_ratios)])


def _pareto_section(analysis: Analysis) -> str:
    front = analysis.table[analysis.table["pareto"]]
    lines = ["## Pareto frontier", "", "Non-dominated in accuracy (higher), DP gap (lower) and "
             "size (lower), per dataset:", ""]
    lines += [f"- `{c}`" for c in front.sort_values(["dataset", "config_id"])["config_id"]]
    return "\n".join(lines)


FIGURE_TITLES = {"pareto": "Accuracy, DP gap and size, non-dominated configurations filled",
                 "heatmaps": "Accuracy and ΔDP gap by architecture and method/bits",
                 "group_drops": "Per-group accuracy drop",
                 "mitigation": "Mitigations: accuracy, DP gap, size and cost",
                 "hypotheses": "Hypotheses: estimates with intervals and verdicts",
                 "baseline": "FP32 baselines"}


def _figures_section(figures: dict[str, Path]) -> str:
    pngs = [name for name in figures if name.endswith(".png")]
    if not pngs:
        return ""
    lines = ["## Figures", "", "Each figure is also saved as PDF beside the PNG.", ""]
    lines += [f"![{FIGURE_TITLES.get(Path(n).stem, Path(n).stem)}]({n})" for n in pngs]
    return "\n".join(lines)


def _recommendation_section(analysis: Analysis) -> str:
    rules, rows = analysis.rules, analysis.recommendation
    lines = ["## Production recommendation", "",
             "Rule: within each size budget, among the configurations whose DP gap is at most "
             "their FP32 baseline's plus fairness_tolerance "
             f"({format_number(rules.fairness_tolerance)}), ship the most accurate (point "
             "estimates; check its interval in `stats.csv`). A `simulated` configuration's size "
             "is the packed size its bit widths imply; deploying it needs integer kernels.", ""]
    for row in rows.itertuples():
        budget = f"{format_number(row.size_budget_mib)} MiB"
        if row.config_id:
            lines.append(f"- {row.dataset}, at most {budget}: ship `{row.config_id}` (accuracy "
                         f"{format_number(row.accuracy)}, DP gap {format_number(row.dp_gap)} vs "
                         f"FP32 {format_number(row.fp32_dp_gap)}, {format_number(row.size_mib)} "
                         f"MiB, {row.execution}).")
        else:
            lines.append(f"- {row.dataset}, at most {budget}: no configuration qualifies.")
    if rows.empty:
        lines.append("No configuration has a size to judge a budget by.")
    return "\n".join(lines)
