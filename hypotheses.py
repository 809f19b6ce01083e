"""Hypotheses H1-H6: each one spec (``HYPOTHESES``), from which its rule, margins and text come.

A spec names its criteria: which comparison rows (``SELECTIONS``), which metric's change, which
margin (``analysis.margins``) and which of the four verdicts (``verdicts``) the claim needs.
Every hypothesis is judged per architecture ("holds for 3 of 5") and in general:

- a pooled hypothesis (H2-H5) judges each criterion from the paired comparison itself when an
  architecture has one unit, else from ``unit_stats.pooled_interval`` over its units; the
  general claim pools every unit with the architectures as clusters (one architecture: its
  units). Holm runs across the criteria; design-fixed costs and sizes are reported as facts
  beside the verdict, never as criteria;
- an across-architecture hypothesis (H1, H6) makes its general claim with an exact
  permutation test over architectures, and only when that test can reach alpha; otherwise it is
  INCONCLUSIVE and names the test's p-floor.

No architecture whose FP32 model is not clearly above chance takes part (its row says why).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import pandas as pd

import fairness_metrics as fm
import unit_stats as us
import verdicts as vd
from prediction_store import PredictionStore
from stats_tables import LOWER_BITS, SWEET_SPOT_BITS, AnalysisSettings, format_number

REPLICATES = 400
"""Shared test-sample bootstrap replicates behind a pooled interval's covariance term (at most
the run's n_resamples)."""
TRANSFORMER_MARKERS = ("vit", "deit", "swin")
"""An architecture is a transformer (H6) when a ``_``-separated part of its name starts with one
of these (``vit_small``, ``tiny_vit``); the rest are CNNs."""
MIN_ARCHITECTURES = 3
"""Fewest architectures a correlation across architectures is computed from (H1)."""
CELL_KEYS = ["dataset", "method", "weight_bits", "act_bits"]
"""What one cell of an across-architecture test holds fixed."""


# ----------------------------------------------------------------------------- which rows

def _quantized_vs_fp32(pairs):
    return pairs[(pairs["comparison"] == "vs_fp32") & (pairs["phase"] == "quantization")]


SELECTIONS: dict[str, tuple[str, Callable[[pd.DataFrame], pd.DataFrame]]] = {
    "quantized_vs_fp32": ("every quantized model minus its FP32 baseline", _quantized_vs_fp32),
    "int8_vs_fp32": (f"quantized models at {SWEET_SPOT_BITS} weight bits minus FP32",
                     lambda p: _quantized_vs_fp32(p)[_quantized_vs_fp32(p)["weight_bits"]
                                                     == SWEET_SPOT_BITS]),
    "int4_vs_int8": (f"the same model at {LOWER_BITS} minus at {SWEET_SPOT_BITS} weight bits",
                     lambda p: p[p["comparison"] == "int4_vs_int8"]),
    "qat_vs_ptq": ("QAT minus static PTQ at the same architecture, bits and seed",
                   lambda p: p[p["comparison"] == "qat_vs_ptq"]),
    "balanced_vs_random": ("balanced minus random calibration, paired by draw",
                           lambda p: p[(p["comparison"] == "vs_ptq")
                                       & (p["method"] == "bias_aware_calibration")
                                       & p["calibration"].str.startswith("balanced")
                                       & p["reference_calibration"].str.startswith("random")]),
    "mixed_vs_fp32": ("mixed precision minus FP32",
                      lambda p: p[(p["comparison"] == "vs_fp32")
                                  & (p["method"] == "mixed_precision")]),
}


# ----------------------------------------------------------------------------- the specs

@dataclass(frozen=True)
class Criterion:
    name: str
    selection: str
    metric: str
    margin: str
    claims: tuple[str, ...] | None
    """Verdicts that support the hypothesis; None: reported per architecture, not claimed."""

    @property
    def rule(self) -> vd.Rule:
        return vd.Rule(self.metric, self.margin, self.claims or ())


@dataclass(frozen=True)
class Fact:
    """A measured number the design fixes (a cost or size ratio): reported, never a criterion."""

    name: str
    selection: str
    column: str


@dataclass(frozen=True)
class Hypothesis:
    id: str
    claim: str
    criteria: tuple[Criterion, ...]
    facts: tuple[Fact, ...] = ()
    across: str | None = None
    """None: pooled criteria decide. 'spearman' (H1) or 'transformer' (H6): an exact
    permutation test over architectures makes the general claim."""
    statistic: str = ""


_CHANGE = dict(selection="quantized_vs_fp32", claims=None)
HYPOTHESES = (
    Hypothesis("H1", "Larger models are more resilient to quantization: the more parameters, the "
               "smaller the loss of accuracy and the rise of the DP gap.",
               (Criterion("Δaccuracy vs FP32", metric="accuracy", margin="accuracy", **_CHANGE),
                Criterion("ΔDP gap vs FP32", metric="dp_gap", margin="dp_gap", **_CHANGE)),
               across="spearman", statistic="mean Spearman rho, log(parameters) vs loss"),
    Hypothesis("H2", "QAT gives modest gains over PTQ at a much higher cost.",
               (Criterion("QAT is more accurate than PTQ", "qat_vs_ptq", "accuracy", "accuracy",
                          (vd.BETTER,)),
                Criterion("the gain is modest", "qat_vs_ptq", "accuracy", "modest_gain",
                          (vd.EQUIVALENT,))),
               facts=(Fact("cost ratio QAT / PTQ (median; set by the configured QAT budget)",
                           "qat_vs_ptq", "cost_s"),),
               statistic="Δaccuracy, QAT − PTQ (fraction)"),
    Hypothesis("H3", "Balanced calibration improves fairness at no training cost.",
               (Criterion("balanced calibration lowers the DP gap", "balanced_vs_random",
                          "dp_gap", "dp_gap", (vd.BETTER,)),),
               facts=(Fact("calibration cost ratio balanced / random (median; both run the same "
                           "calibration pass)", "balanced_vs_random", "cost_s"),),
               statistic="ΔDP gap, balanced − random calibration"),
    Hypothesis("H4", "Mixed precision keeps most of the FP32 fairness at a fraction of the size.",
               (Criterion("DP gap kept (equivalent to FP32 or better)", "mixed_vs_fp32",
                          "dp_gap", "dp_gap", (vd.EQUIVALENT, vd.BETTER)),),
               facts=(Fact("size / FP32 size (median; fixed by the bit widths)", "mixed_vs_fp32",
                           "size_mib"),),
               statistic="ΔDP gap, mixed precision − FP32"),
    Hypothesis("H5", "INT8 is the sweet spot: the DP gap barely moves at INT8 and rises more at "
               "INT4.",
               (Criterion(f"DP gap unchanged at {SWEET_SPOT_BITS} bits (two-sided)",
                          "int8_vs_fp32", "dp_gap", "dp_gap", (vd.EQUIVALENT,)),
                Criterion(f"DP gap worse at {LOWER_BITS} than at {SWEET_SPOT_BITS} bits",
                          "int4_vs_int8", "dp_gap", "dp_gap", (vd.WORSE,))),
               statistic=f"ΔDP gap at INT{SWEET_SPOT_BITS} vs FP32"),
    Hypothesis("H6", "Architecture predicts the behaviour: the CNNs behave alike and the "
               "transformer differs.",
               (Criterion("ΔDP gap vs FP32", metric="dp_gap", margin="dp_gap", **_CHANGE),),
               across="transformer", statistic="ΔDP gap, transformer − CNN mean"),
)


def describe_test(spec: Hypothesis) -> str:
    """The test of a hypothesis in words, generated from its spec."""
    parts = [f"{c.name}: change of {c.metric}, {SELECTIONS[c.selection][0]}" for c in spec.criteria]
    if spec.across == "spearman":
        general = ("General claim: Spearman correlation across architectures of log(parameters) "
                   "with |Δaccuracy| and with ΔDP gap, per (dataset, method, bits) cell, mean "
                   "over cells; two-sided exact permutation test reordering the parameter counts")
    elif spec.across == "transformer":
        general = ("General claim: mean over (dataset, method, bits) cells of transformer mean − "
                   "CNN mean ΔDP gap; two-sided exact permutation test relabelling which "
                   "architectures are transformers")
    else:
        general = ("Per architecture: the paired comparison (swap test, bootstrap interval, TOST) "
                   "or, over several units, the pooled t-interval with the shared test-sample "
                   "covariance; general claim: every unit pooled, clustered by architecture")
    return "; ".join(parts) + ". " + general + "."


# ----------------------------------------------------------------------------- results

@dataclass
class CriterionResult:
    """One criterion judged: its change with interval, raw and Holm p-values, the verdict."""

    name: str
    metric: str
    margin_key: str
    margin: float
    claims: list[str]
    rule: str
    estimate: float
    low: float
    high: float
    p_difference: float
    p_difference_holm: float
    p_equivalent: float
    p_equivalent_holm: float
    n: int
    interval: str
    note: str
    verdict: str


@dataclass
class ArchitectureResult:
    """A hypothesis for one (dataset, architecture): its criteria, or why it takes no part."""

    dataset: str
    arch: str
    usable: bool
    reason: str = ""
    verdict: str = vd.INCONCLUSIVE
    """Empty when no criterion of the hypothesis is claimed (the changes are only reported)."""
    criteria: list[CriterionResult] = field(default_factory=list)


@dataclass
class FactResult:
    """A design-fixed ratio (median over the rows), reported beside the verdict."""

    name: str
    value: float
    n: int
    role: str = "reported beside the verdict, not a criterion"


@dataclass
class HypothesisResult:
    """One hypothesis judged in general and per architecture (hypotheses.json holds
    ``to_dict()``)."""

    id: str
    claim: str
    test: str
    statistic: str
    estimate: float = math.nan
    low: float = math.nan
    high: float = math.nan
    p_value: float = math.nan
    p_test: str = ""
    n: int = 0
    verdict: str = vd.INCONCLUSIVE
    holds: str = ""
    criteria: list[CriterionResult] = field(default_factory=list)
    per_architecture: list[ArchitectureResult] = field(default_factory=list)
    facts: list[FactResult] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    margins: dict = field(default_factory=dict)
    reason: str = ""

    def to_dict(self) -> dict:
        """Plain dicts and lists, nested results included, in field order."""
        return asdict(self)


# ----------------------------------------------------------------------------- evaluation

@dataclass
class HypothesisInputs:
    """What evaluating the hypotheses needs besides the comparison table."""

    store: PredictionStore
    settings: AnalysisSettings = AnalysisSettings()
    fp32_balanced_accuracy_low: dict = field(default_factory=dict)
    """(dataset, arch) -> lower bound of the FP32 model's balanced accuracy."""


def evaluate_hypotheses(pairs: pd.DataFrame, inputs: HypothesisInputs) -> list[HypothesisResult]:
    """H1-H6 from the comparison table (``stats_tables.pair_table``), one result each."""
    return [_evaluate(spec, pairs, inputs) for spec in HYPOTHESES]


def _evaluate(spec: Hypothesis, pairs: pd.DataFrame, inputs: HypothesisInputs) -> HypothesisResult:
    rows = {c.selection: SELECTIONS[c.selection][1](pairs) for c in spec.criteria}
    result = HypothesisResult(spec.id, spec.claim, describe_test(spec), spec.statistic,
                              margins={c.margin: inputs.settings.margins[c.margin]
                                       for c in spec.criteria})
    if all(frame.empty for frame in rows.values()):
        return replace(result, reason="no data: no " + " and no ".join(
            SELECTIONS[c.selection][0] for c in spec.criteria))
    usable, per_arch = _usable(rows, inputs)
    replicates = {c: _replicates(rows[c.selection][usable[c.selection]], c.metric, inputs)
                  for c in spec.criteria}
    result.per_architecture = [_arch_result(spec, rows, usable, replicates, key, inputs)
                               for key in per_arch]
    result.facts = [_fact(f, SELECTIONS[f.selection][1](pairs)) for f in spec.facts]
    if not any(mask.any() for mask in usable.values()):
        reasons = sorted({r.reason for r in result.per_architecture if r.reason})
        return replace(result, reason="; ".join(reasons))
    if spec.across:
        first = spec.criteria[0].selection
        return replace(result, **_across(spec, rows[first][usable[first]], inputs))
    criteria = _criteria(spec, {s: r[usable[s]] for s, r in rows.items()}, replicates,
                         inputs, cluster=True)
    return _pooled(result, criteria)


def _pooled(result: HypothesisResult, criteria: list[CriterionResult]) -> HypothesisResult:
    """The general claim of a pooled hypothesis from its judged criteria (the first leads)."""
    head = criteria[0]
    usable = [r for r in result.per_architecture if r.usable]
    equivalence = head.claims[:1] == [vd.EQUIVALENT]  # the p of the test the claim needs
    left_out = [r.reason for r in result.per_architecture if not r.usable]
    return replace(
        result, estimate=head.estimate, low=head.low, high=head.high,
        p_value=head.p_equivalent_holm if equivalence else head.p_difference_holm,
        p_test="TOST (Holm)" if equivalence else "difference (Holm)", n=head.n,
        verdict=vd.combine([c.verdict for c in criteria], [c.claims for c in criteria]),
        holds=vd.holds_count([r.verdict for r in usable]), criteria=criteria,
        reason="; ".join([f"{c.name}: {c.verdict}" for c in criteria]
                         + [f"left out, {r}" for r in left_out]))


def _usable(rows: dict, inputs: HypothesisInputs):
    """Per selection, a mask of the rows whose architecture's FP32 model is above chance; and
    the (dataset, arch) keys present, in order."""
    keys = list(dict.fromkeys(k for frame in rows.values()
                              for k in zip(frame["dataset"], frame["arch"])))
    usable = {}
    for selection, frame in rows.items():
        usable[selection] = np.array([_above_chance(k, inputs) for k in
                                      zip(frame["dataset"], frame["arch"])], dtype=bool)
    return usable, sorted(keys)


def _above_chance(key, inputs: HypothesisInputs) -> bool:
    return vd.is_above_chance(inputs.fp32_balanced_accuracy_low.get(key, math.nan),
                              inputs.settings.min_balanced_accuracy)


def _chance_reason(key, inputs: HypothesisInputs) -> str:
    low = inputs.fp32_balanced_accuracy_low.get(key, math.nan)
    threshold = inputs.settings.min_balanced_accuracy
    return f"{key[1]}: " + vd.at_chance_reason(low, threshold, format_number)


def _arch_result(spec, rows, usable, replicates, key, inputs) -> ArchitectureResult:
    dataset, arch = key
    result = ArchitectureResult(dataset, arch, usable=_above_chance(key, inputs))
    if not result.usable:
        return replace(result, reason=_chance_reason(key, inputs))
    masks = {s: ((r["dataset"] == dataset) & (r["arch"] == arch)).to_numpy() for s, r in
             rows.items()}
    own = {s: rows[s][masks[s]] for s in rows}
    own_replicates = {c: None if replicates[c] is None else
                      replicates[c][:, masks[c.selection][usable[c.selection]]]
                      for c in spec.criteria}
    criteria = _criteria(spec, own, own_replicates, inputs, cluster=False)
    claimed = [c for c in criteria if c.claims]
    verdict = vd.combine([c.verdict for c in claimed], [c.claims for c in claimed]) \
        if claimed else ""
    return replace(result, criteria=criteria, verdict=verdict)


def _criteria(spec, rows, replicates, inputs, *, cluster: bool) -> list[CriterionResult]:
    settings = inputs.settings
    evidence = [_evidence(rows[c.selection], c, replicates[c], inputs, cluster) for c in
                spec.criteria]
    verdicts, p_difference, p_equivalent = vd.holm_verdicts(
        [e.estimate for e in evidence], [e.p_difference for e in evidence],
        [e.p_equivalent for e in evidence],
        [vd.higher_is_better(c.metric) for c in spec.criteria], alpha=settings.alpha)
    return [CriterionResult(
                name=c.name, metric=c.metric, margin_key=c.margin,
                margin=settings.margins[c.margin], claims=list(c.claims or []),
                rule=c.rule.text(settings.margins, settings.alpha, format_number),
                estimate=e.estimate, low=e.low, high=e.high, p_difference=e.p_difference,
                p_difference_holm=float(d), p_equivalent=e.p_equivalent,
                p_equivalent_holm=float(q), n=e.n, interval=e.kind, note=e.note, verdict=v)
            for c, e, v, d, q in zip(spec.criteria, evidence, verdicts, p_difference,
                                     p_equivalent)]


def _evidence(rows: pd.DataFrame, criterion: Criterion, replicates, inputs: HypothesisInputs,
              cluster: bool) -> us.Evidence:
    margin = inputs.settings.margins[criterion.margin]
    if rows.empty:
        return us.Evidence(math.nan, math.nan, math.nan, math.nan, math.nan, 0, "", "no units")
    if len(rows) == 1:
        return _single(rows.iloc[0], criterion.metric, margin, inputs)
    clusters = list(zip(rows["dataset"], rows["arch"])) if cluster else None
    single_architecture = clusters is not None and len(set(clusters)) == 1
    if single_architecture:
        clusters = None  # one architecture: its own units are the evidence
    evidence = us.pooled_interval(rows[f"delta_{criterion.metric}"].to_numpy(dtype=float),
                                  replicates, ci=inputs.settings.ci, margin=margin,
                                  clusters=None if clusters is None else
                                  ["/".join(map(str, k)) for k in clusters])
    if clusters is not None:
        return replace(evidence, note=evidence.note.replace(
            "units", "architectures (clusters; units of one architecture averaged first)", 1))
    if single_architecture:
        return replace(evidence, note=evidence.note + "; one architecture: the claim covers it "
                                                      "alone")
    return evidence


def _single(row, metric: str, margin: float, inputs: HypothesisInputs) -> us.Evidence:
    """One paired comparison: the swap test, the bootstrap interval and TOST at ``margin``."""
    y_true, y_pred, y_reference, groups = inputs.store.pair(row["config_id"],
                                                            row["reference_id"]).arrays()
    settings = inputs.settings
    frame = fm.paired_bootstrap(y_true, y_pred, y_reference, sensitive_features=groups,
                                n_resamples=settings.n_resamples, ci=settings.ci,
                                seed=settings.seed, margins={metric: margin})
    r = frame.set_index(["group", "metric"]).loc[(fm.OVERALL, metric)]
    return us.Evidence(float(r["delta"]), float(r["low"]), float(r["high"]), float(r["p"]),
                       float(r["p_equivalent"]), 1, "paired comparison (swap test, "
                       "bootstrap interval, TOST)", row["config_id"])


def _replicates(rows: pd.DataFrame, metric: str, inputs: HypothesisInputs):
    """(replicates, k) shared-resample changes of the rows' units, one block per test set (units
    scored on different samples -- another dataset, or a seed that drew another split -- share
    no test-sampling error, so their blocks are drawn independently)."""
    if len(rows) < 2:
        return None
    store = inputs.store
    n_replicates = min(REPLICATES, inputs.settings.n_resamples)
    test_sets = np.array([hash(tuple(sorted(store.table(c)["sample_id"])))
                          for c in rows["config_id"]])
    out = np.full((n_replicates, len(rows)), np.nan)
    for number, test_set in enumerate(dict.fromkeys(test_sets)):
        members = np.flatnonzero(test_sets == test_set)
        block = rows.iloc[members]
        first_id = block["config_id"].iloc[0]
        arrays = [store.pair(c, r, order=first_id).arrays()
                  for c, r in zip(block["config_id"], block["reference_id"])]
        y_true, _, _, groups = arrays[0]
        units = [(y_pred, y_reference) for _, y_pred, y_reference, _ in arrays]
        out[:, members] = us.shared_paired_replicates(
            y_true, units, groups, metric, n_resamples=n_replicates,
            seed=[inputs.settings.seed, number])  # independent blocks
    return out


def _fact(fact: Fact, rows: pd.DataFrame) -> FactResult:
    """Median over the rows of column / reference_column: a measured fact, not a criterion."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = (rows[fact.column].to_numpy(dtype=float)
                  / rows[f"reference_{fact.column}"].to_numpy(dtype=float))
    ratios = ratios[~np.isnan(ratios)]
    return FactResult(fact.name, float(np.median(ratios)) if ratios.size else math.nan,
                      int(ratios.size))


# ----------------------------------------------------------------------------- across architectures

def is_transformer_name(arch: str, markers: Sequence[str] = TRANSFORMER_MARKERS) -> bool:
    """Whether a ``_``-separated part of ``arch`` starts with one of ``markers``."""
    return any(part.startswith(tuple(markers)) for part in str(arch).split("_"))


def arch_cells(quantized: pd.DataFrame, column: str, absolute: bool = False) -> pd.DataFrame:
    """A (cell x architecture) table of the mean of ``column`` (over seeds and calibrations)."""
    if quantized.empty:
        return pd.DataFrame()
    values = quantized[column].abs() if absolute else quantized[column]
    cells = quantized.assign(value=values).pivot_table(index=CELL_KEYS, columns="arch",
                                                       values="value", aggfunc="mean")
    cells.index = [f"{column}:" + "/".join(format_number(k) for k in key) for key in cells.index]
    return cells


def _across(spec: Hypothesis, quantized: pd.DataFrame, inputs: HypothesisInputs) -> dict:
    if spec.across == "spearman":
        params = quantized.groupby("arch")["reference_params"].median().dropna()
        cells = pd.concat([arch_cells(quantized, "delta_accuracy", absolute=True),
                           arch_cells(quantized, "delta_dp_gap")])
        cells = cells.reindex(columns=params.index).dropna()
        if cells.shape[1] < MIN_ARCHITECTURES or cells.empty:
            return {"reason": f"no data: needs quantized-vs-FP32 changes of at least "
                              f"{MIN_ARCHITECTURES} architectures with parameter counts in a "
                              "common (dataset, method, bits) cell"}
        test = us.permutation_spearman(np.log(params[cells.columns].to_numpy()), cells.to_numpy(),
                                       n_resamples=inputs.settings.n_resamples,
                                       seed=inputs.settings.seed)
        name, sign, what = "exact permutation test of the correlation", -1, "orderings"
        details = {"per_cell_correlation": dict(zip(cells.index, test["per_row"]))}
    else:
        cells = arch_cells(quantized, "delta_dp_gap").dropna(axis=1, how="all").dropna()
        member = np.array([is_transformer_name(a) for a in cells.columns])
        if cells.empty or member.sum() < 1 or (~member).sum() < 2:
            return {"reason": "no data: needs quantized-vs-FP32 DP-gap changes of at least one "
                              "transformer and two CNNs in a common (dataset, method, bits) cell"}
        test = us.permutation_family_difference(cells.to_numpy(), member,
                                                n_resamples=inputs.settings.n_resamples,
                                                seed=inputs.settings.seed)
        name, sign, what = "exact permutation test of the transformer label", None, "labellings"
        details = {"transformers": list(cells.columns[member]),
                   "cnns": list(cells.columns[~member])}
    verdict = vd.permutation_verdict(test["statistic"], test["p_value"], test["min_p"],
                                     alpha=inputs.settings.alpha, claimed_sign=sign)
    n = cells.shape[1]
    details.update(architectures=list(cells.columns), n_cells=int(cells.shape[0]),
                   n_orderings=test["n_orderings"], exact=test["exact"],
                   p_floor=test["min_p"], p_floor_fraction=test["min_p_fraction"],
                   limitation=f"With {n} architectures the test has {test['n_orderings']} "
                              f"{what}, so its p-value cannot go below "
                              f"{test['min_p_fraction']} (= {format_number(test['min_p'])}).")
    if not test["min_p"] <= inputs.settings.alpha:
        reason = vd.p_floor_reason(name, test["min_p_fraction"], test["min_p"],
                                   inputs.settings.alpha, format_number)
    else:
        reason = (f"{name}: p = {format_number(test['p_value'])} "
                  f"(p-floor {test['min_p_fraction']}), statistic "
                  f"{format_number(test['statistic'])}")
    return {"estimate": test["statistic"], "p_value": test["p_value"], "p_test": "permutation",
            "n": n,
            "verdict": verdict, "reason": reason, "details": details}
