"""Statistics tables of the analysis phase: read a run folder, pair configurations with their
references, recompute every metric and paired change from the prediction tables, and build the
tidy tables (stats.csv, per-group drops, Pareto front, the production recommendation).

Reads one finished run folder -- the result CSVs and the per-sample prediction tables -- and never
runs a model (torch is not imported). Every metric, interval and test comes from
``fairness_metrics``; the verdict rules from ``verdicts``. ``hypotheses`` builds on these tables
and ``report`` writes them; ``analysis`` runs the whole phase.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import yaml
from tqdm.auto import tqdm

import fairness_metrics as fm
import verdicts as vd
from prediction_store import PredictionStore
from unit_stats import cohens_h

logger = logging.getLogger(__name__)

RESULT_FILES = {"baseline": "baseline_results.csv", "quantization": "quantization_results.csv",
                "mitigation": "mitigation_results.csv"}
REQUIRED_COLUMNS = ("config_id", "dataset", "arch", "method")
OPTIONAL_COLUMNS = ("weight_bits", "act_bits", "calibration", "observer", "seed", "execution",
                    "status", "error", "params", "size_mib", "fp32_size_mib", "compression",
                    "latency_ms_b1", "cost_s", "train_time_s", "compare_to", "draw", "variant")
METRICS = fm.METRICS
DEFAULT_BUDGET_FRACTIONS = (0.125, 0.25, 0.5, 1.0)
"""Size budgets when none are given: these fractions of the dataset's largest FP32 model."""
SWEET_SPOT_BITS, LOWER_BITS = 8, 4
"""The weight widths the ``int4_vs_int8`` comparison pairs (H5)."""
DEPLOYABLE_EXECUTIONS = {"real_int8": "integer kernels (PyTorch x86 / fbgemm)",
                         "onnxruntime_int8": "ONNX Runtime INT8 (static QDQ)",
                         "openvino_int8": "OpenVINO INT8 (NNCF)",
                         "fp32": "FP32, any runtime"}
"""Executions a model can be shipped with on this machine; ``simulated`` needs kernels it lacks."""
TORCH_EXECUTIONS = ("real_int8", "simulated", "")
"""Executions of models torch ran; rows of another runtime repeat one of them."""


# ----------------------------------------------------------------------------- settings

BAD_ALPHA = "alpha={alpha!r} must lie strictly between 0 and 1, e.g. 0.05"


@dataclass(frozen=True)
class AnalysisSettings:
    """Every option of the analysis, in one object that travels to each room.

    ``margins``: set before the run (``verdicts.check_margins`` fills in the defaults);
    ``size_budgets_mib``: ``None`` for fractions of the largest FP32 model."""

    n_resamples: int = 2000
    ci: float = 0.95
    seed: int = 0
    alpha: float = 0.05
    min_group_size: int = 30
    size_budgets_mib: tuple[float, ...] | None = None
    margins: dict = field(default_factory=dict)
    min_balanced_accuracy: float = vd.DEFAULT_MIN_BALANCED_ACCURACY

    def __post_init__(self):
        if not 0 < self.alpha < 1:
            raise ValueError(BAD_ALPHA.format(alpha=self.alpha))
        object.__setattr__(self, "margins", vd.check_margins(self.margins))
        if self.size_budgets_mib is not None:
            object.__setattr__(self, "size_budgets_mib", tuple(self.size_budgets_mib))


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
                                "(results/<run_name>), or run `python main.py --phase baseline` "
                                "first")
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


# ----------------------------------------------------------------------------- what is compared

COMPARISONS = {
    "vs_fp32": "quantized or mitigated configuration minus the FP32 baseline of the same "
               "dataset, architecture and seed",
    "vs_ptq": "mitigation minus its compare_to configuration (plain PTQ at the same bits, or the "
              "random-calibration draw a balanced draw is paired with)",
    "qat_vs_ptq": "QAT minus static PTQ at the same dataset, architecture, bits and seed",
    "int4_vs_int8": f"a quantized model at {LOWER_BITS} weight bits minus the same method, "
                    f"calibration and seed at {SWEET_SPOT_BITS} bits",
}
UNIT_KEYS = ["dataset", "arch", "method", "act_bits", "calibration", "observer", "seed", "draw",
             "variant"]
"""What identifies one quantized model apart from its weight bits (int4_vs_int8 pairs on it)."""


def comparison_pairs(configs: pd.DataFrame) -> pd.DataFrame:
    """Every comparison analysis makes: columns ``comparison, config_id, reference_id``.

    ``configs`` holds the analysable configurations; see ``COMPARISONS`` for the kinds.
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
    rows += [("int4_vs_int8", low, high) for low, high in _bit_pairs(configs)]
    return pd.DataFrame(rows, columns=["comparison", "config_id", "reference_id"])


def _bit_pairs(configs: pd.DataFrame) -> list[tuple[str, str]]:
    """(LOWER_BITS id, SWEET_SPOT_BITS id) of quantization-phase models equal in UNIT_KEYS, run
    by torch (rows of another runtime repeat a torch model and are not paired)."""
    quantized = configs[configs["phase"] == "quantization"] if "phase" in configs else configs
    quantized = quantized[quantized["execution"].isin(TORCH_EXECUTIONS)]
    keys = pd.Series(["|".join(map(str, key)) for key in
                      quantized[UNIT_KEYS].itertuples(index=False)], index=quantized.index)
    sweet = dict(zip(keys[quantized["weight_bits"] == SWEET_SPOT_BITS],
                     quantized.loc[quantized["weight_bits"] == SWEET_SPOT_BITS, "config_id"]))
    lower = quantized["weight_bits"] == LOWER_BITS
    return [(config_id, sweet[key]) for key, config_id in
            zip(keys[lower], quantized.loc[lower, "config_id"]) if key in sweet]


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
    """Static PTQ run by torch at the same dataset/arch/bits/seed; random calibration first, then
    by id."""
    same = configs[(configs["method"] == "ptq_static") & (configs["dataset"] == row.dataset)
                   & configs["execution"].isin(TORCH_EXECUTIONS)
                   & (configs["arch"] == row.arch) & (configs["weight_bits"] == row.weight_bits)
                   & (configs["act_bits"] == row.act_bits) & (configs["seed"] == row.seed)]
    if same.empty:
        return None
    order = same.assign(not_random=~same["calibration"].str.startswith("random"))
    return order.sort_values(["not_random", "config_id"])["config_id"].iloc[0]


# ----------------------------------------------------------------------------- statistics

# (config_id, reference_id or None) -> (record, per_group) of summarize_predictions
Summaries = dict


def summarize_all(configs: pd.DataFrame, pairs: pd.DataFrame, store: PredictionStore,
                  settings: AnalysisSettings, *, progress: bool = True) -> Summaries:
    """``fairness_metrics.summarize_predictions`` for every configuration (against its FP32
    baseline when it has one) and for every other comparison pair, keyed (config_id,
    reference_id); the prediction tables and their pairs come from ``store``."""
    fp32_of = _fp32_of(pairs)
    jobs = [(config_id, fp32_of.get(config_id)) for config_id in configs["config_id"]]
    jobs += [(row.config_id, row.reference_id)
             for row in pairs[pairs["comparison"] != "vs_fp32"].itertuples()]
    summaries = {}
    for config_id, reference_id in tqdm(jobs, desc="analysis: statistics", unit="table",
                                        disable=not progress):
        pair = store.pair(config_id, reference_id) if reference_id else None
        summaries[(config_id, reference_id)] = fm.summarize_predictions(
            store.table(config_id), reference=None if pair is None else pair.reference,
            n_resamples=settings.n_resamples,
            ci=settings.ci, seed=settings.seed, min_group_size=settings.min_group_size,
            margins=settings.margins)
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
                   *(f"delta_{m}{s}" for m in METRICS
                     for s in ("", "_low", "_high", "_p", "_p_equivalent")),
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
STAT_VALUES = ["estimate", "low", "high", "p_value", "p_holm", "p_bh", "p_equivalent",
               "effect_size", "effect_size_kind"]


def statistics_table(table: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """The tidy ``stats.csv``: columns ``STAT_KEYS + STAT_VALUES``.

    ``comparison == "config"`` rows hold each configuration's metric with its bootstrap interval.
    The other rows hold paired changes (configuration minus reference; see ``COMPARISONS``) with
    their paired-bootstrap interval, swap-test p-value and, for metrics with a margin, the TOST
    p-value ``p_equivalent``, plus a ``flip_rate`` row whose p-value is the exact McNemar test
    of the accuracy change. Effect size: Cohen's h = 2 asin(sqrt(p)) -
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
    stats = stats.reindex(columns=STAT_KEYS + STAT_VALUES).astype({"p_equivalent": float})
    stats["effect_size_kind"] = np.where(stats["effect_size"].notna(), "cohens_h", "")
    stats = _adjust_p_values(stats)
    order = {name: i for i, name in enumerate(["config", *COMPARISONS])}
    stats = stats.assign(_kind=stats["comparison"].map(order),
                         _metric=stats["metric"].map({m: i for i, m in enumerate(METRICS)}))
    stats = stats.sort_values(["_kind", "config_id", "reference_id", "_metric"], kind="stable")
    return stats.drop(columns=["_kind", "_metric"]).reset_index(drop=True)


def _long_rows(frame: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """One row per (row of frame, metric): estimate, low, high, p_value (and Cohen's h for
    changes)."""
    parts = []
    for metric in METRICS:
        column = prefix + metric
        part = frame[[c for c in STAT_KEYS if c in frame.columns]].assign(
            metric=metric, estimate=frame[column], low=frame[f"{column}_low"],
            high=frame[f"{column}_high"], p_value=frame.get(f"{column}_p", np.nan),
            p_equivalent=frame.get(f"{column}_p_equivalent", np.nan))
        if prefix and metric in RATE_METRICS:
            part["effect_size"] = cohens_h(frame[metric], frame[metric] - frame[column])
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


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
    lost), with its paired-bootstrap interval; ``accuracy``, ``tpr``, ``fpr`` of the
    configuration in the group with their bootstrap intervals (the model cards' numbers) and
    ``small_group`` (n below min_group_size); ``flip_share`` = the group's share of all
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
            "accuracy": wide["accuracy"], "accuracy_low": wide["accuracy_low"],
            "accuracy_high": wide["accuracy_high"], "accuracy_drop": -wide["delta_accuracy"],
            "accuracy_drop_low": -wide["delta_accuracy_high"],
            "accuracy_drop_high": -wide["delta_accuracy_low"], "flip_rate": wide["flip_rate"],
            "flip_share": flips / flips.sum() if flips.sum() > 0 else np.nan,
            "mcnemar_p": wide["mcnemar_p"],
            **{f"{rate}{s}": wide[f"{rate}{s}"] for rate in ("tpr", "fpr")
               for s in ("", "_low", "_high")},
            "small_group": wide["small_group"].astype(bool)}).reset_index(drop=True))
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
    """Per cell of ``group_drop_means``: worst and least hit group, their drops and
    ``drop_ratio``."""
    rows = []
    for key, cell in means.groupby(GROUP_KEYS, sort=True):
        drops = cell.set_index("group")["accuracy_drop"]
        worst, least = drops.idxmax(), drops.idxmin()
        rows.append({**dict(zip(GROUP_KEYS, key)), "worst_group": worst,
                     "worst_drop": drops[worst], "least_group": least, "least_drop": drops[least],
                     "worst_to_least": drop_ratio(drops[worst], drops[least])})
    return pd.DataFrame(rows, columns=[*GROUP_KEYS, "worst_group", "worst_drop", "least_group",
                                       "least_drop", "worst_to_least"])



# ------------------------------------------------------------------------ Pareto and recommendation

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
    """``table`` with a ``pareto`` column: non-dominated in accuracy × DP gap × size, per
    dataset."""
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


RECOMMENDATION_COLUMNS = ["dataset", "size_budget_mib", "deployable", "rank", "config_id", "arch",
                          "method", "weight_bits", "act_bits", "execution", "runtime", "accuracy",
                          "accuracy_low", "accuracy_high", "p_vs_best", "delta_dp_gap",
                          "delta_dp_gap_low", "delta_dp_gap_high", "dp_verdict", "size_mib",
                          "n_candidates"]


def fairness_verdicts(table: pd.DataFrame, settings: AnalysisSettings) -> pd.Series:
    """Each configuration's verdict on its paired DP-gap change against its FP32 baseline
    (``verdicts.verdict``; the dp_gap margin entered through the TOST p-values the settings'
    margins gave); FP32 rows are the reference (EQUIVALENT). INCONCLUSIVE wherever the FP32
    baseline is not clearly above chance."""
    low = table.set_index("config_id")["balanced_accuracy_low"]
    baseline = table["reference_id"].where(table["method"] != "fp32", table["config_id"])
    above = [vd.is_above_chance(low.get(b, math.nan), settings.min_balanced_accuracy)
             for b in baseline]
    verdict = [vd.INCONCLUSIVE if not ok else vd.EQUIVALENT if row.method == "fp32" else
               vd.verdict(row.delta_dp_gap, row.delta_dp_gap_p,
                          getattr(row, "delta_dp_gap_p_equivalent", math.nan), alpha=settings.alpha,
                          better_when_higher=vd.higher_is_better("dp_gap"))
               for row, ok in zip(table.itertuples(), above)]
    return pd.Series(verdict, index=table.index, dtype=object)


def recommend(table: pd.DataFrame, store: PredictionStore | None = None,
              settings: AnalysisSettings = AnalysisSettings()) -> pd.DataFrame:
    """Which configuration to ship, per dataset, size budget, and deployable-or-not.

    Rule: a configuration qualifies when its size is within the budget and its paired DP-gap
    change against FP32 is EQUIVALENT within the dp_gap margin or BETTER
    (``fairness_verdicts``; none where the FP32 model is not clearly above chance); FP32 models
    qualify as they are. Among the qualifying ones of each list -- deployable here
    (``DEPLOYABLE_EXECUTIONS``) and simulated -- the most accurate ranks 1, and every other whose
    accuracy the paired swap test cannot tell from it (p > alpha, on the same test samples;
    ``store`` pairs the prediction tables) ties with rank 1 too: ties are reported as ties. A row
    with an empty ``config_id`` means nothing qualifies.
    """
    table = table.assign(dp_verdict=fairness_verdicts(table, settings),
                         deployable=table["execution"].isin(DEPLOYABLE_EXECUTIONS)
                         | (table["method"] == "fp32"))
    table["runtime"] = table["execution"].map(DEPLOYABLE_EXECUTIONS).fillna(
        "needs low-bit integer kernels this machine lacks")
    qualifies = table["dp_verdict"].isin([vd.EQUIVALENT, vd.BETTER])
    rows = []
    for dataset, models in table.groupby("dataset", sort=True):
        for budget in size_budgets(models, settings.size_budgets_mib):
            within = models[(models["size_mib"] <= budget) & qualifies.loc[models.index]]
            for deployable in (True, False):  # what runs here first
                candidates = within[within["deployable"] == deployable]
                base = {"dataset": dataset, "size_budget_mib": budget, "deployable": deployable,
                        "n_candidates": len(candidates)}
                ranked = _ranked(candidates, store, settings)
                rows += [{**row, **base} for row in ranked] or [{**base, "config_id": ""}]
    return pd.DataFrame(rows).reindex(columns=RECOMMENDATION_COLUMNS)


def _ranked(candidates: pd.DataFrame, store: PredictionStore | None,
            settings: AnalysisSettings) -> list[dict]:
    """The most accurate candidate (rank 1) and those tied with it (paired accuracy p > alpha)."""
    if candidates.empty:
        return []
    ordered = candidates.sort_values(["accuracy", "size_mib", "config_id"],
                                     ascending=[False, True, True])
    best = ordered.iloc[0]
    rows = [{**best.to_dict(), "rank": 1, "p_vs_best": math.nan}]
    for _, row in ordered.iloc[1:].iterrows():
        p = _paired_accuracy_p(store, row["config_id"], best["config_id"], settings)
        if not p <= settings.alpha:  # NaN: no test tells them apart
            rows.append({**row.to_dict(), "rank": 1, "p_vs_best": p})
    return rows


def _paired_accuracy_p(store: PredictionStore | None, config_id: str, best_id: str,
                       settings: AnalysisSettings) -> float:
    """Swap-test p of the accuracy difference between two models on the same samples (NaN
    without prediction tables, which then counts as a tie: no test says otherwise)."""
    if store is None:
        return math.nan
    y_true, y_pred, y_reference, groups = store.pair(config_id, best_id).arrays()
    frame = fm.paired_bootstrap(y_true, y_pred, y_reference, sensitive_features=groups,
                                n_resamples=settings.n_resamples, seed=settings.seed)
    return float(frame.set_index(["group", "metric"]).loc[(fm.OVERALL, "accuracy"), "p"])
