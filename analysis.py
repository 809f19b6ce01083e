"""Analysis phase: statistics, hypotheses with four verdicts, Pareto front, tables and the report.

Reads one finished run folder -- the result CSVs and the per-sample prediction tables -- and never
runs a model (torch is not imported), so results made on a GPU cluster can be analysed on a laptop:

    from analysis import run_analysis
    outputs = run_analysis("results/default")  # {"stats.csv": Path(".../analysis/stats.csv"), ...}

Three rooms, imported one way (``analysis`` -> ``report``, ``hypotheses`` -> ``stats_tables``):

- ``stats_tables``: loading the run, the comparisons, stats.csv, per-group drops, Pareto front,
  the production recommendation;
- ``hypotheses``: H1-H6 as specs, judged with the rules of ``verdicts``;
- ``report``: tables (CSV, LaTeX), figures, report.md and report.html (the answer first:
  ``answer``), and a model card per recommended deployable artifact (``cards``).

Outputs, in ``<run_dir>/analysis/``: stats.csv, per_group.csv, hypotheses.json, summary.json,
tables/*.csv + .tex (tables/calibration_study.csv: the calibration composition study of
``calibration_study``), figures/*.png + .pdf, report.md, report.html, cards/<name>.json + .md +
.html.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

import calibration_study as cs
import hypotheses as hy
import plants
import report
import stats_tables as st
import verdicts as vd
from prediction_store import PredictionStore
from results import predictions_path
from stats_tables import AnalysisSettings, RunArtifacts, load_run, pareto_front  # noqa: F401

logger = logging.getLogger(__name__)

NO_CONFIGURATION = ("{run_dir}: no configuration can be analysed ({failed} failed, {without} "
                    "without predictions under predictions/): fix the errors recorded in the "
                    "result tables' `error` column and rerun those phases")
TOLERANCE_DEPRECATED = ("fairness_tolerance is deprecated: the DP-gap margin is "
                        "analysis.margins.dp_gap; using fairness_tolerance={value} as that margin")


@dataclass
class Analysis:
    """Every table the analysis phase computes, before anything is written."""

    run: RunArtifacts
    settings: AnalysisSettings
    table: pd.DataFrame
    """Analysable configurations with recomputed metrics and the ``pareto`` flag."""
    pairs: pd.DataFrame
    stats: pd.DataFrame
    per_group: pd.DataFrame
    group_means: pd.DataFrame
    group_ratios: pd.DataFrame
    hypotheses: list[hy.HypothesisResult]
    recommendation: pd.DataFrame
    failed: pd.DataFrame
    without_predictions: list[str] = field(default_factory=list)
    calibration: pd.DataFrame = field(default_factory=pd.DataFrame)
    """The calibration composition study (``calibration_study.study``)."""
    plants: pd.DataFrame = field(default_factory=pd.DataFrame)
    """Each planted effect's known answer beside the verdict reached (``plants.plant_checks``)."""

    def tables(self) -> dict[str, pd.DataFrame]:
        """The tables of the report, by file name (written to tables/<name>.csv and .tex)."""
        return {"baseline": report.baseline_table(self.table),
                "quantization": report.quantization_table(self.table),
                "mitigation": report.mitigation_table(self.table, self.pairs),
                "hypotheses": report.hypotheses_table(self.hypotheses),
                "per_architecture": report.per_architecture_table(self.hypotheses),
                "group_drop_ratios": self.group_ratios, "recommendation": self.recommendation,
                "failed": self.failed, "backends": report.backend_table(self.table),
                "backend_groups": report.backend_group_table(self.table, self.per_group),
                "calibration_study": self.calibration, "planted_effects": self.plants}


def settings_of(run: RunArtifacts, *, margins: dict | None = None,
                min_balanced_accuracy: float | None = None,
                fairness_tolerance: float | None = None, **options) -> AnalysisSettings:
    """The settings of one analysis: ``options`` (``AnalysisSettings`` fields), with the margins
    and the chance threshold set before the run -- those given, else the run's config.yaml
    ``analysis`` section, else the defaults. A (deprecated) fairness_tolerance sets the dp_gap
    margin when no margin names it."""
    configured = run.config.get("analysis") or {}
    chosen = dict(margins if margins is not None else configured.get("margins") or {})
    if fairness_tolerance is not None and "dp_gap" not in chosen:
        warnings.warn(TOLERANCE_DEPRECATED.format(value=fairness_tolerance), DeprecationWarning,
                      stacklevel=3)
        chosen["dp_gap"] = fairness_tolerance
    if min_balanced_accuracy is None:
        min_balanced_accuracy = configured.get("min_balanced_accuracy",
                                               vd.DEFAULT_MIN_BALANCED_ACCURACY)
    return AnalysisSettings(margins=chosen, min_balanced_accuracy=min_balanced_accuracy,
                            **options)


def analyse(run_dir: str | Path, settings: AnalysisSettings | None = None, *,
            progress: bool = True, **options) -> Analysis:
    """Compute every analysis table of a run folder (``run_analysis`` also writes them).

    ``settings``: one ``AnalysisSettings``; without it, ``settings_of(run, **options)`` builds
    it from keyword options (n_resamples, alpha, seed, ci, min_group_size, margins,
    min_balanced_accuracy, size_budgets_mib, the deprecated fairness_tolerance)."""
    run = load_run(run_dir)
    settings = settings_of(run, **options) if settings is None else settings
    configs, failed, without = _analysable(run)
    store = PredictionStore.of_run(run.run_dir)
    pairs = st.comparison_pairs(configs)
    summaries = st.summarize_all(configs, pairs, store, settings, progress=progress)
    table = st.with_pareto(st.configuration_table(configs, pairs, summaries))
    table["dp_verdict"] = st.fairness_verdicts(table, settings)
    pairs = st.pair_table(pairs, table, summaries)
    per_group = st.per_group_table(pairs, summaries)
    means = st.group_drop_means(per_group)
    fp32 = table[table["method"] == "fp32"]
    fp32_low = dict(zip(zip(fp32["dataset"], fp32["arch"]), fp32["balanced_accuracy_low"]))
    inputs = hy.HypothesisInputs(store=store, settings=settings,
                                 fp32_balanced_accuracy_low=fp32_low)
    calibration = cs.study(configs, store, config=run.config, margins=settings.margins,
                           alpha=settings.alpha, ci=settings.ci,
                           n_resamples=settings.n_resamples, seed=settings.seed)
    return Analysis(
        run=run, settings=settings, table=table, pairs=pairs,
        stats=st.statistics_table(table, pairs), per_group=per_group, group_means=means,
        group_ratios=st.drop_ratios(means), hypotheses=hy.evaluate_hypotheses(pairs, inputs),
        recommendation=st.recommend(table, store, settings),
        failed=failed, without_predictions=without, calibration=calibration,
        plants=plants.plant_checks(run.config, per_group, table,
                                   alpha=settings.alpha, ci=settings.ci,
                                   margin=settings.margins["accuracy"],
                                   min_balanced_accuracy=settings.min_balanced_accuracy))


def _analysable(run: RunArtifacts):
    """(configurations that ran and have predictions, failed rows, ids without predictions)."""
    ok = run.configs[run.configs["status"] == "ok"]
    has_predictions = ok["config_id"].map(lambda c: predictions_path(run.run_dir, c).is_file())
    configs = ok[has_predictions].reset_index(drop=True)
    without = ok.loc[~has_predictions, "config_id"].tolist()
    failed = run.configs.loc[run.configs["status"] != "ok",
                             ["phase", "config_id", "status", "error"]]
    if configs.empty:
        raise ValueError(NO_CONFIGURATION.format(run_dir=run.run_dir, failed=len(failed),
                                                 without=len(without)))
    if without:
        logger.warning("%d configurations have no prediction table and are left out: %s",
                       len(without), without[:5])
    return configs, failed, without


def run_analysis(run_dir: str | Path, *, figures: bool = True, **options) -> dict[str, Path]:
    """The analysis phase: read ``run_dir``, write ``<run_dir>/analysis/``, return the written
    files keyed by their path relative to that folder (``"stats.csv"``, ``"report.md"``, ...).

    ``options`` go to ``analyse`` (an ``AnalysisSettings`` as ``settings``, or its fields as
    keywords, and ``progress``); ``figures=False`` skips the figures (and the report then links
    none).
    """
    return report.write_outputs(analyse(run_dir, **options), figures=figures)
