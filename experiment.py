"""Units of work for the phases: one configuration → (record, predictions, per-group table).

A unit (``results.WorkUnit``) is plain data: a runner name from ``RUNNERS``, its plain arguments
and the run folder. ``execute(unit)`` rebuilds what the runner needs from the run folder's
``config.yaml`` and checkpoints, so a unit runs the same in this process, in a fresh one or on
another machine. ``main.py`` lists the units and hands them to an executor. No method is named
here: what a sweep must know of a method comes from its registered ``MethodTraits``.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
import zipfile
from functools import cached_property
from pathlib import Path

import datasets
import mitigation  # noqa: F401  (registers the mitigation methods)
import profiling
from config import ExperimentConfig, config_to_dict, expand_method_specs, load_config, save_config
from datasets import calibration_seed
from evaluation import cpu_load, fp32_reference_latency, model_size_mib, predict
from fairness_metrics import summarize_predictions
from models import (
    arch_slug,
    build_model,
    check_model_name,
    count_parameters,
    export_torchscript,
    load_model_from_checkpoint,
    save_checkpoint,
)
from quantization import (
    SharedGraphs,
    apply_quantization,
    context_keys,
    fastest_fp32,
    kernel_capability,
    latency_report,
    list_methods,
    method_config,
    method_traits,
    sharing,
)
from results import WorkUnit, holds_results, load_predictions, predictions_path
from runtimes import fp32_runtime_model, get_runtime, quantize_with_runtime
from training import fit, resolve_device, seed_everything

log = logging.getLogger(__name__)


class Context:
    """The run's data that every unit of one run shares: the config, the run folder, the data
    splits, their loaders and the device, the FP32 baselines' caches (``baselines``) and the
    static PTQ graphs its units share (``graphs``, ``quantization.SharedGraphs``).

    Splits are loaded on first use, so listing the units (to skip finished ones) costs nothing.
    ``context_for_run(run_dir)`` gives this process's context of a run folder.
    """

    def __init__(self, cfg: ExperimentConfig, run_dir: str | Path | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir is not None else cfg.run_dir
        self.baselines = Baselines(cfg, self.run_dir)
        self.graphs = SharedGraphs()

    @cached_property
    def splits(self):
        data = self.cfg.data
        with profiling.step("data_loading"):
            splits = datasets.load_dataset(
                data.dataset, data.manifest if data.dataset == "manifest" else data.root,
                target=data.target, sensitive=data.sensitive, positive=data.positive,
                name=data.dataset_name, image_size=data.image_size, seed=self.cfg.seed,
                split_fractions=data.split_fractions, skip_bad_images=data.skip_bad_images,
                max_per_split=data.max_per_split, synthetic=dataclasses.asdict(data.synthetic),
                min_group_size=self.cfg.analysis.min_group_size)
        check_calibration_sizes(self.cfg, len(splits.train))
        return splits

    @cached_property
    def device(self):
        return resolve_device(self.cfg.runtime.device)

    def loader(self, dataset, shuffle: bool = False):
        return datasets.make_loader(dataset, self.cfg.data.batch_size, shuffle=shuffle,
                                    seed=self.cfg.seed, num_workers=self.cfg.data.num_workers)

    def calibration_loader(self, kind: str, n: int, seed: int, draw: int = 0):
        """A loader over ``n`` training images of calibration kind ``kind``, draw ``draw``."""
        if kind == "none":
            return None
        subset = datasets.calibration_subset(self.splits.train, kind, n,
                                             calibration_seed(seed, draw))
        return self.loader(subset)

    def method_context(self, method: str, seed: int) -> dict:
        """The non-config arguments ``method`` accepts (its registered context keys)."""
        available = {"device": self.device, "seed": seed, "progress": self.cfg.runtime.progress,
                     "train_loader": lambda: self.loader(self.splits.train, shuffle=True),
                     "val_loader": lambda: self.loader(self.splits.val),
                     "eval_data": lambda: self.loader(self.splits.val)}
        return {key: value() if callable(value) else value
                for key, value in available.items() if key in context_keys(method)}

    def predict(self, model):
        with profiling.step("prediction"):
            return predict(model, self.loader(self.splits.test), device=self.device,
                           progress=self.cfg.runtime.progress)

    def score(self, predictions, reference=None):
        """Point estimates only: the analysis phase computes every interval and test, once."""
        analysis = self.cfg.analysis
        with profiling.step("scoring"):
            return summarize_predictions(predictions, reference=reference, n_resamples=0,
                                         ci=analysis.ci, seed=self.cfg.seed,
                                         min_group_size=analysis.min_group_size)


class Baselines:
    """The FP32 baselines of one run as its units use them, each read or measured once per
    process: the FP32 models (again when a checkpoint changes), their predictions, the fastest
    FP32 latency of each architecture and the simulated twins' test-set labels."""

    def __init__(self, cfg: ExperimentConfig, run_dir: Path):
        self.cfg, self.run_dir = cfg, run_dir
        self._models: dict[str, tuple] = {}  # arch -> (checkpoint mtime, model)
        self._latency: dict[str, dict] = {}  # arch -> {batch size: (ms, name)}
        self._twins: dict[str, object] = {}  # twin key -> predicted labels
        self._runtimes: dict[tuple, object] = {}  # (arch, checkpoint mtime, backend) -> model

    def require(self, arch: str) -> None:
        """Stop before a sweep starts when the FP32 model or its predictions are missing; read
        the checkpoint (again when it changed): one no unit can use stops the phase."""
        path = self.run_dir / checkpoint_file(self.cfg, arch)
        for needed in (path, predictions_path(self.run_dir, baseline_id(self.cfg, arch))):
            if not needed.is_file():
                raise FileNotFoundError(NO_BASELINE.format(arch=arch, path=needed))
        if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
            raise ValueError(DAMAGED_CHECKPOINT.format(path=path))
        stamp = path.stat().st_mtime_ns
        if self._models.get(arch, (None,))[0] != stamp:
            self._models[arch] = (stamp, _read_checkpoint(path))

    def fp32_model(self, arch: str):
        """A fresh copy of the FP32 model of ``arch``, read from its checkpoint once."""
        self.require(arch)
        return copy.deepcopy(self._models[arch][1])

    def predictions(self, arch: str):
        return load_predictions(self.run_dir, baseline_id(self.cfg, arch))

    def fp32_reference(self, arch: str, fp32_model) -> dict:
        """{batch size: (ms, name)} of the fastest FP32 of ``arch``: torch eager in both layouts
        and the FP32 model of every configured runtime."""
        if arch not in self._latency:
            cfg = self.cfg
            others = {f"{name}_fp32": self.fp32_runtime(arch, name, fp32_model)
                      for name in cfg.runtime.backends if name != "torch"}
            self._latency[arch] = fastest_fp32(fp32_model, cfg.data.image_size,
                                               fp32_models=others, **latency_options(cfg))
        return self._latency[arch]

    def fp32_runtime(self, arch: str, backend: str, fp32_model):
        """Runtime ``backend``'s FP32 model of ``arch`` (``fp32_model``, this run's checkpoint),
        exported once: the FP32 candidate of the latency reference and the export the runtime's
        INT8 unit starts from. Only the latest architecture's models are kept."""
        key = self._runtime_key(arch, backend)
        if key not in self._runtimes:
            self._runtimes = {k: v for k, v in self._runtimes.items() if k[0] == arch}
            folder = self.run_dir / "models" / self.cfg.data.dataset_name / arch_slug(arch)
            self._runtimes[key] = fp32_runtime_model(backend, fp32_model, self.cfg.data.image_size,
                                                     folder / backend,
                                                     threads=self.cfg.runtime.threads)
        return self._runtimes[key]

    def exported_runtime(self, arch: str, backend: str):
        """``fp32_runtime``'s model when it was already made in this process, else None."""
        return self._runtimes.get(self._runtime_key(arch, backend))

    def _runtime_key(self, arch: str, backend: str) -> tuple:
        self.require(arch)
        return arch, self._models[arch][0], backend

    def twin_labels(self, key: str, build):
        """The twin labels under ``key``, made by ``build()`` the first time."""
        if key not in self._twins:
            self._twins[key] = build()
        return self._twins[key]


def latency_options(cfg: ExperimentConfig) -> dict:
    """The configured latency batch sizes, threads, warm-up and repeats."""
    runtime = cfg.runtime
    return dict(batch_sizes=runtime.latency_batch_sizes, threads=runtime.threads,
                warmup=runtime.latency_warmup, repeats=runtime.latency_repeats)


def _read_checkpoint(path: Path):
    """The FP32 model of a checkpoint, in eval mode; one that cannot be read (a non-tensor
    object, a model it does not fit) is a ValueError with the documented fix, never torch's
    advice to unpickle it."""
    try:
        model, _ = load_model_from_checkpoint(path)
    except (ValueError, RuntimeError, KeyError, TypeError) as error:
        raise ValueError(UNUSABLE_CHECKPOINT.format(
            path=path, reason=_reason(error).replace(f"{path} ", "it "))) from None
    return model.eval()


def _reason(error: Exception) -> str:
    """The first line of ``error``, short, without torch's advice to load with
    ``weights_only=False`` (which would run the file's code)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = text.split(" Save only the tensors")[0].split("; save weights with")[0]
    if "weights_only" in text:
        text = "it holds objects other than tensors"
    text = text.rstrip(". ")
    return text if len(text) <= 200 else text[:200] + "…"


_RUN_CONTEXTS: dict[str, Context] = {}
"""This process's contexts of the run folders its units came from (``context_for_run``)."""


def context_for_run(run_dir: str | Path) -> Context:
    """The context of ``run_dir`` in this process, built from its ``config.yaml`` once."""
    key = str(Path(run_dir).resolve())
    if key not in _RUN_CONTEXTS:
        path = Path(run_dir) / "config.yaml"
        if not path.is_file():
            raise FileNotFoundError(NO_RUN_CONFIG.format(path=path))
        _RUN_CONTEXTS[key] = Context(load_config(path), run_dir)
    return _RUN_CONTEXTS[key]


def execute(unit: WorkUnit, ctx: Context | None = None):
    """Run one unit: ``(record, predictions, per_group)``. Works in any process that sees the
    run folder; ``ctx``: the caller's context of that run (else ``context_for_run``)."""
    ctx = ctx or context_for_run(unit.run_dir)
    with sharing(ctx.graphs):
        return RUNNERS[unit.runner](ctx, **unit.args)


def _unit(ctx: Context, config_id: str, fields: dict, runner: str, args: dict, phase: str,
          needs: tuple = ()) -> WorkUnit:
    return WorkUnit(config_id, fields, runner, args, str(ctx.run_dir), phase, needs)


def _baseline_needs(ctx: Context, arch: str) -> tuple[str, str]:
    """The files (relative to the run folder) a unit quantizing ``arch`` needs."""
    predictions = predictions_path(ctx.run_dir, baseline_id(ctx.cfg, arch))
    return (str(checkpoint_file(ctx.cfg, arch)), str(predictions.relative_to(ctx.run_dir)))


def _latency_comparison(ctx: Context, arch: str, fp32_model, int8_model) -> dict:
    """An integer model vs the fastest FP32 of ``arch`` on this machine (timed once per
    architecture), same process, at the configured batch sizes."""
    with profiling.step("latency"):
        report = latency_report(fp32_model, int8_model, ctx.cfg.data.image_size,
                                reference=ctx.baselines.fp32_reference(arch, fp32_model),
                                **latency_options(ctx.cfg))
    return {**report, **cpu_load()}


def _twin_labels(ctx: Context, arch: str, model, method: str, options: dict, calibration,
                 seed: int):
    """Test-set labels of the simulated twin of ``method`` (fake quantization of the same
    calibration), built once per process: a runtime's w8a8 model and torch's share it."""
    def build():
        twin, _ = _quantize(ctx, model, method, options, calibration, seed, execution="simulated")
        return ctx.predict(twin)["y_pred"].values

    key = json.dumps([arch, method, options, list(calibration), seed], sort_keys=True)
    return ctx.baselines.twin_labels(key, build)


NO_BASELINE = ("no FP32 baseline for {arch!r} ({path} is missing): run "
               "`python main.py --phase baseline` with the same config first")
NO_RUN_CONFIG = ("{path} is missing: a work unit rebuilds its run from the run folder's config, "
                 "which `python main.py` writes before any unit runs; check that this machine "
                 "sees the run folder (shared storage) at the same path")
DAMAGED_CHECKPOINT = ("checkpoint {path} is damaged (not a complete torch archive): train it again "
                      "with `python main.py --phase baseline --force`")
UNUSABLE_CHECKPOINT = ("checkpoint {path} cannot be used ({reason}): train it again with "
                       "`python main.py --phase baseline --force`")
NO_CUDA = ("runtime.device={device!r}, but this machine has no CUDA GPU (torch.cuda.is_available() "
           "is False): use --set runtime.device=auto (a GPU when there is one, else the CPU) or "
           "--set runtime.device=cpu")
CALIBRATION_TOO_LARGE = ("{key}={size} is larger than the {n_train} training images of {dataset}: "
                         "calibration draws from the training split, so ask for at most "
                         "{n_train} (--set {key}=...) or use more data")
CALIBRATION_OVER_CAP = ("{key}={size} is larger than data.max_per_split={cap}, which caps the "
                        "training split: ask for at most {cap} calibration samples or raise "
                        "data.max_per_split")
NOT_A_MITIGATION = ("mitigation.methods: {name!r} has no control method to be compared with "
                    "(its MethodTraits.control is None); mitigations: {known}")


def check_config(cfg: ExperimentConfig) -> None:
    """What the config alone cannot know: architecture and method names, against the registries.

    Runs before anything is written, so a typo never leaves a run folder behind.
    """
    for arch in cfg.models.architectures:
        try:
            check_model_name(arch)
        except ValueError as error:
            raise ValueError(f"models.architectures: {error}") from None
    if cfg.runtime.device == "cuda" and not (cfg.runtime.executor == "ray"
                                             and cfg.runtime.ray_address is not None):
        try:  # a Ray cluster's GPUs are on its workers: only a local run is checked here
            resolve_device("cuda")
        except ValueError:
            raise ValueError(NO_CUDA.format(device=cfg.runtime.device)) from None
    for backend in cfg.runtime.backends:
        if backend != "torch":
            get_runtime(backend).check_installed()
    for arch in cfg.models.architectures:
        for name, options in methods_for(arch, cfg.quantization.methods):
            method_config(name, **with_run_defaults(cfg, name, options))
        for name, options in methods_for(arch, cfg.mitigation.methods):
            method_config(name, **with_run_defaults(cfg, name, options))
            if method_traits(name).control is None:
                raise ValueError(NOT_A_MITIGATION.format(name=name, known=_mitigations()))
    cap = cfg.data.max_per_split
    for key, size in _calibration_sizes_in_use(cfg):
        if cap is not None and size > cap:
            raise ValueError(CALIBRATION_OVER_CAP.format(key=key, size=size, cap=cap))


def _mitigations() -> list[str]:
    return [name for name in list_methods() if method_traits(name).control is not None]


def check_calibration_sizes(cfg: ExperimentConfig, n_train: int) -> None:
    """Every calibration size the grids use fits in the training split (checked when it loads)."""
    for key, size in _calibration_sizes_in_use(cfg):
        if size > n_train:
            raise ValueError(CALIBRATION_TOO_LARGE.format(key=key, size=size, n_train=n_train,
                                                          dataset=cfg.data.dataset_name))


def _calibration_sizes_in_use(cfg: ExperimentConfig) -> list[tuple[str, int]]:
    """(config key, size) of every calibration size some configured method draws."""
    calibrated = any(method_traits(spec["method"]).calibration != "none"
                     for spec in cfg.quantization.methods)
    sizes = [("quantization.calibration_sizes", n) for n in cfg.quantization.calibration_sizes
             if calibrated]
    sizes += [("mitigation.methods calibration_size", spec["calibration_size"])
              for spec in expand_method_specs(cfg.mitigation.methods) if "calibration_size" in spec]
    return sizes + [("mitigation.calibration_size", cfg.mitigation.calibration_size)]


def run_defaults(cfg: ExperimentConfig) -> dict:
    """Method options the run sets for every method whose config has them."""
    q, m = cfg.quantization, cfg.mitigation
    return {"epochs": q.qat_epochs, "lr": q.qat_lr, "max_steps": q.qat_max_steps_per_epoch,
            "max_dp_gap": m.max_dp_gap}


def with_run_defaults(cfg: ExperimentConfig, name: str, options: dict) -> dict:
    """``options`` with the run's defaults for the fields of ``name``'s config it does not set."""
    known = {item.name for item in dataclasses.fields(method_config(name))}
    return {**{k: v for k, v in run_defaults(cfg).items() if k in known}, **options}


def baseline_id(cfg: ExperimentConfig, arch: str) -> str:
    return f"{cfg.data.dataset_name}/{arch_slug(arch)}/fp32/seed={cfg.seed}"


def checkpoint_file(cfg: ExperimentConfig, arch: str) -> Path:
    """The FP32 checkpoint of ``arch``, relative to the run folder."""
    return Path("checkpoints") / cfg.data.dataset_name / f"{arch_slug(arch)}.pt"


# ----------------------------------------------------------------------------- baseline

def baseline_units(ctx: Context, force: bool = False) -> list[WorkUnit]:
    cfg = ctx.cfg
    return [_unit(ctx, baseline_id(cfg, arch),
                     {"dataset": cfg.data.dataset_name, "arch": arch, "method": "fp32",
                      "weight_bits": 32, "act_bits": 32, "calibration": "none", "seed": cfg.seed,
                      "execution": "fp32", "synthetic": cfg.data.dataset == "synthetic"},
                     "baseline", {"arch": arch, "retrain": force}, "baseline")
            for arch in cfg.models.architectures]


def run_baseline(ctx: Context, arch: str, retrain: bool = False):
    """Train (or reuse the checkpoint of) one architecture and evaluate it on the test split."""
    model, training = _trained_model(ctx, arch, retrain)
    predictions = ctx.predict(model)
    record, per_group = ctx.score(predictions)
    record.update(training, params=count_parameters(model), size_mib=model_size_mib(model),
                  **_fp32_latency(ctx, model), **cpu_load())
    return record, predictions, per_group


def _trained_model(ctx: Context, arch: str, retrain: bool):
    """The FP32 model of ``arch``: its checkpoint, or built (from ``models.weights`` when given)
    and trained for ``training.epochs``; with 0 epochs the given weights are only evaluated."""
    cfg, path = ctx.cfg, ctx.run_dir / checkpoint_file(ctx.cfg, arch)
    if path.is_file() and not retrain:
        log.info("reusing checkpoint %s", path)
        model, meta = load_model_from_checkpoint(path)
        return model.eval(), {k: meta.get(k) for k in TRAINING_FIELDS}
    # the initial weights depend on the seed alone, not on what ran before
    seed_everything(cfg.seed)
    weights = cfg.models.weights.get(arch)
    model = build_model(arch, num_classes=2, image_size=cfg.data.image_size,
                        pretrained=cfg.models.pretrained and weights is None, weights_path=weights,
                        weights_dir=cfg.models.weights_dir)
    train = cfg.training.for_arch(arch)
    if train.epochs == 0:
        log.info("training.epochs=0: evaluating %s as given by %s, untrained", arch, weights)
        training = {"train_time_s": 0.0, "best_epoch": 0, "best_val_accuracy": None}
    else:
        result = fit(model, ctx.loader(ctx.splits.train, shuffle=True), ctx.loader(ctx.splits.val),
                     epochs=train.epochs, lr=train.lr, weight_decay=train.weight_decay,
                     optimizer=train.optimizer, scheduler=train.scheduler, device=ctx.device,
                     seed=cfg.seed, max_steps=train.max_steps_per_epoch,
                     progress=cfg.runtime.progress, desc=f"train {arch}")
        training = {"train_time_s": round(result.train_time_s, 2), "best_epoch": result.best_epoch,
                    "best_val_accuracy": result.best_val_accuracy}
    training["initial_weights"] = weights or ("pretrained" if cfg.models.pretrained else "random")
    save_checkpoint(model, path, arch=arch, num_classes=2, image_size=cfg.data.image_size,
                    dataset=cfg.data.dataset_name, seed=cfg.seed, **training)
    return model.eval(), training


TRAINING_FIELDS = ("train_time_s", "best_epoch", "best_val_accuracy", "initial_weights")
"""What a baseline row says of how its model came to be (also kept in the checkpoint)."""


def _fp32_latency(ctx: Context, model) -> dict:
    """FP32 latency at each configured batch size, in its fastest eager layout."""
    runtime, fields = ctx.cfg.runtime, {}
    with profiling.step("latency"):
        for n in runtime.latency_batch_sizes:
            ms, layout = fp32_reference_latency(model.cpu(), ctx.cfg.data.image_size, n,
                                                threads=runtime.threads,
                                                warmup=runtime.latency_warmup,
                                                repeats=runtime.latency_repeats)
            fields.update({f"latency_ms_b{n}": round(ms, 4), f"latency_layout_b{n}": layout})
    return fields


# ----------------------------------------------------------------------------- quantization

def methods_for(arch: str, specs) -> list[tuple[str, dict]]:
    """(method, options) of every expanded spec that applies to ``arch``.

    A spec with an ``arch`` key (a name or a list of names) applies to those architectures
    only, e.g. ``{method: mixed_precision, arch: [squeezenet1_1]}`` for a costly method.
    """
    chosen = []
    for spec in expand_method_specs(specs):
        options = {k: v for k, v in spec.items() if k not in ("method", "arch")}
        if spec.get("arch", arch) == arch:
            chosen.append((spec["method"], options))
    return chosen


def quantization_units(ctx: Context, check: bool = True) -> list[WorkUnit]:
    """The configured grid: architectures × methods × options × calibration × seeds.
    ``check``: stop here when a baseline is missing (not when a schedule makes them first)."""
    cfg, units = ctx.cfg, []
    for arch in cfg.models.architectures:
        for name, options in methods_for(arch, cfg.quantization.methods):
            options = with_run_defaults(cfg, name, options)
            for seed in cfg.quantization.seeds:
                for calibration in _calibrations(cfg, name):
                    units.append(_quantization_unit(ctx, arch, name, options, calibration, seed))
                    units += _runtime_units(ctx, arch, name, options, calibration, seed)
    # after the grid: a bad method name first
    for arch in cfg.models.architectures if check else ():
        ctx.baselines.require(arch)
    return units


def _calibrations(cfg: ExperimentConfig, method: str) -> list[tuple[str, int]]:
    if method_traits(method).calibration == "none":
        return [("none", 0)]
    q = cfg.quantization
    return [(kind, n) for kind in q.calibration_kinds for n in q.calibration_sizes]


ID_OMITTED = ("bits", "weight_bits", "act_bits", "calibration", "calibration_size")
"""Options already named by the id's bits and calib parts."""


def configuration_id(dataset: str, arch: str, method: str, bits: str, options: dict,
                     calibration: str, seed: int, draw: int | None = None) -> str:
    """E.g. ``synthetic/resnet50/ptq_static/w4a8/observer=minmax/calib=random-512/seed=0``."""
    extras = _options_label(options, sep="/")
    return "/".join(part for part in [dataset, arch_slug(arch), method, bits, extras,
                                      f"calib={calibration}",
                                      "" if draw is None else f"draw={draw}",
                                      f"seed={seed}"] if part)


def _options_label(options: dict, sep: str) -> str:
    return sep.join(f"{key}={_id_value(value)}" for key, value in sorted(options.items())
                    if key not in ID_OMITTED and value is not None)


def _id_value(value) -> str:
    return "+".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def calibration_label(calibration: tuple[str, int]) -> str:
    """``('random', 512)`` -> ``'random-512'``; ``('none', 0)`` -> ``'none'``."""
    kind, n = calibration
    return "none" if kind == "none" else f"{kind}-{n}"


def _quantization_unit(ctx: Context, arch: str, method: str, options: dict,
                       calibration: tuple[str, int], seed: int) -> WorkUnit:
    cfg = ctx.cfg
    label = calibration_label(calibration)
    bits = method_config(method, **options).bits  # also rejects a bad method or option up front
    config_id = configuration_id(cfg.data.dataset_name, arch, method, bits, options, label, seed)
    fields = {"dataset": cfg.data.dataset_name, "arch": arch, "method": method,
              "calibration": label,
              "seed": seed, "options": {k: v for k, v in options.items() if k != "bits"}}
    return _unit(ctx, config_id, fields, "quantization",
                    {"arch": arch, "method": method, "options": options,
                     "calibration": list(calibration), "seed": seed},
                    "quantization", _baseline_needs(ctx, arch))


def _quantize(ctx: Context, model, method: str, options: dict, calibration, seed: int,
              draw: int = 0, **overrides):
    """``model`` quantized by ``method`` with the calibration its traits ask for: none, a loader
    of draw ``draw`` (seed ``calibration_seed(seed, draw)``) or the training split, from which
    the method draws its own subset with that seed. Also returns the seconds spent drawing a
    subset here."""
    start, need = time.perf_counter(), method_traits(method).calibration
    if need == "loader":
        data = ctx.calibration_loader(*calibration, seed=seed, draw=draw)
    else:
        data = ctx.splits.train if need == "dataset" else None
    draw_s = time.perf_counter() - start
    method_seed = calibration_seed(seed, draw) if need == "dataset" else seed
    context = ctx.method_context(method, method_seed)
    quantized = apply_quantization(model, method, calibration_data=data, **options, **overrides,
                                   **context)
    if need == "loader":
        counts = data.dataset.group_counts()
        quantized.quant_info = quantized.quant_info.replace(calibration_group_counts=counts)
    return quantized, draw_s


def run_quantization(ctx: Context, arch: str, method: str, options: dict, calibration, seed: int):
    """Quantize one FP32 checkpoint, evaluate it and compare it with its FP32 predictions."""
    model = ctx.baselines.fp32_model(arch)
    quantized, _ = _quantize(ctx, model, method, options, calibration, seed)
    predictions = ctx.predict(quantized)
    record, per_group = ctx.score(predictions, ctx.baselines.predictions(arch))
    record.update(quantized.quant_info.record())
    if quantized.quant_info.execution == "real_int8":
        record.update(_latency_comparison(ctx, arch, model, quantized))
        if method_traits(method).twin and ctx.cfg.quantization.check_agreement:
            twin = _twin_labels(ctx, arch, model, method, options, calibration, seed)
            record["agreement_with_simulated"] = _agreement(twin, predictions)
    return record, predictions, per_group


def _agreement(twin_labels, predictions) -> float:
    return float((twin_labels == predictions["y_pred"].values).mean())


def _runtime_units(ctx: Context, arch: str, method: str, options: dict,
                   calibration: tuple[str, int], seed: int) -> list[WorkUnit]:
    """One unit per configured runtime besides torch, for the plain w8a8 configuration of the
    method they stand beside: the same checkpoint and calibration images, quantized by that
    runtime."""
    if not method_traits(method).runtime_counterpart or options != {"bits": "w8a8"}:
        return []
    units = []
    for backend in ctx.cfg.runtime.backends:
        if backend == "torch":
            continue
        config_id = configuration_id(ctx.cfg.data.dataset_name, arch, method, "w8a8",
                                     {"backend": backend}, calibration_label(calibration), seed)
        fields = {"dataset": ctx.cfg.data.dataset_name, "arch": arch, "method": method,
                  "calibration": calibration_label(calibration), "seed": seed, "backend": backend,
                  "options": {"backend": backend}}
        units.append(_unit(ctx, config_id, fields, "runtime",
                              {"arch": arch, "backend": backend, "method": method,
                               "calibration": list(calibration), "seed": seed,
                               "config_id": config_id},
                              "quantization", _baseline_needs(ctx, arch)))
    return units


def run_runtime(ctx: Context, arch: str, backend: str, method: str, calibration, seed: int,
                config_id: str):
    """Quantize one FP32 checkpoint with another runtime (artifact under ``models/<config_id>``),
    evaluate it, and compare it with its FP32 predictions and with the torch twin."""
    model = ctx.baselines.fp32_model(arch)
    calibration_loader = ctx.calibration_loader(*calibration, seed=seed)
    quantized = quantize_with_runtime(backend, model, calibration_loader, ctx.cfg.data.image_size,
                                      ctx.run_dir / "models" / config_id,
                                      threads=ctx.cfg.runtime.threads,
                                      fp32=ctx.baselines.exported_runtime(arch, backend))
    predictions = ctx.predict(quantized)
    record, per_group = ctx.score(predictions, ctx.baselines.predictions(arch))
    record.update(quantized.quant_info.record())
    record["artifact"] = str(quantized.files[0].relative_to(ctx.run_dir))
    record.update(_latency_comparison(ctx, arch, model, quantized))
    twin = _twin_labels(ctx, arch, model, method, {"bits": "w8a8"}, calibration, seed)
    record["agreement_with_simulated"] = _agreement(twin, predictions)
    own_twin = getattr(quantized, "twin", None)  # PT2E: its converted program without Inductor
    if own_twin is not None:
        record["agreement_with_own_twin"] = _agreement(ctx.predict(own_twin)["y_pred"].values,
                                                       predictions)
    if hasattr(quantized, "compile_s"):  # every compile so far: build, test batches, latency
        record["compile_s"] = round(quantized.compile_s, 3)
    return record, predictions, per_group


MIXED_KERNELS = ("{run_dir} holds {count} finished configuration(s) built on a CPU {other} "
                 "(e.g. {example}, cpu_capability {cpu}); this CPU is one {this}, whose integer "
                 "kernels take other activation ranges, so resuming would mix the two in one "
                 "table. Redo them here with --force, use a new run_name, or resume on a CPU "
                 "{other}")


def check_same_kernels(run_dir, records, force: bool = False) -> None:
    """Refuse to add rows built for this CPU's kernels to rows built for the other kind (with or
    without VNNI: different activation ranges, different integer arithmetic), unless forced."""
    vnni = kernel_capability()["vnni"]
    other = [r for r in records if r.get("status") == "ok" and r.get("vnni") is not None
             and bool(r["vnni"]) != vnni]
    if other and not force:
        kinds = ("without VNNI", "with VNNI") if vnni else ("with VNNI", "without VNNI")
        raise ValueError(MIXED_KERNELS.format(
            run_dir=run_dir, count=len(other), example=other[0]["config_id"],
            cpu=other[0].get("cpu_capability"), other=kinds[0], this=kinds[1]))


# ----------------------------------------------------------------------------- mitigation

def mitigation_units(ctx: Context, check: bool = True) -> list[WorkUnit]:
    """Each configured mitigation, plus the control it is compared with.

    A mitigation is compared with its registered control method (``MethodTraits.control``) at
    the same bits, observer and calibration size on random calibration: draw by draw over
    ``calibration_draws`` paired draws (draw ``d`` of every kind uses the same seed) when its
    traits say ``paired_draws``, else on draw 0.
    """
    cfg, units = ctx.cfg, {}
    architectures = cfg.mitigation.architectures or cfg.models.architectures
    for arch in architectures:
        for name, options in methods_for(arch, cfg.mitigation.methods):
            for unit in _mitigation_units_of(ctx, arch, name,
                                             with_run_defaults(cfg, name, options)):
                units.setdefault(unit.config_id, unit)
    for arch in architectures if check else ():
        ctx.baselines.require(arch)
    return list(units.values())


def _mitigation_units_of(ctx: Context, arch: str, name: str, options: dict) -> list[WorkUnit]:
    traits, config = method_traits(name), method_config(name, **options)
    size = getattr(config, "calibration_size", None) or ctx.cfg.mitigation.calibration_size
    kind = {"none": "none", "loader": "random",
            "dataset": getattr(config, "calibration", "random")}[traits.calibration]
    if traits.calibration == "dataset":
        options = {**options, "calibration": kind, "calibration_size": size}
    control_options = {"bits": config.bits, **({"observer": options["observer"]}
                                              if "observer" in options else {})}
    draws = range(ctx.cfg.mitigation.calibration_draws) if traits.paired_draws else [0]
    units = []
    for draw in draws:
        control = _mitigation_unit(ctx, arch, traits.control, control_options, "random", size,
                                   draw, control=True)
        units += [control, _mitigation_unit(ctx, arch, name, options, kind, size, draw,
                                            compare_to=control.config_id)]
    return units


def _mitigation_unit(ctx: Context, arch: str, name: str, options: dict, kind: str, size: int,
                     draw: int, compare_to: str | None = None, control: bool = False) -> WorkUnit:
    cfg = ctx.cfg
    calibration = calibration_label((kind, size))
    config_id = configuration_id(cfg.data.dataset_name, arch, name,
                                 method_config(name, **options).bits,
                                 options, calibration, cfg.seed, draw)
    fields = {"dataset": cfg.data.dataset_name, "arch": arch, "method": name,
              "calibration": calibration, "calibration_kind": kind,
              "calibration_size": 0 if kind == "none" else size, "draw": draw, "seed": cfg.seed,
              "compare_to": compare_to, "variant": _options_label(options, sep=",")}
    return _unit(ctx, config_id, fields, "mitigation",
                    {"arch": arch, "name": name, "options": options, "kind": kind, "size": size,
                     "draw": draw, "config_id": config_id, "control": control},
                    "mitigation", _baseline_needs(ctx, arch))


def run_mitigation(ctx: Context, arch: str, name: str, options: dict, kind: str, size: int,
                   draw: int, config_id: str, control: bool = False):
    """Run one mitigation (or its control) and compare it with the FP32 predictions."""
    model = ctx.baselines.fp32_model(arch)
    quantized, draw_s = _quantize(ctx, model, name, options, (kind, size), ctx.cfg.seed, draw)
    predictions = ctx.predict(quantized)
    record, per_group = ctx.score(predictions, ctx.baselines.predictions(arch))
    info = quantized.quant_info
    record.update(info.record(), calibration_cost_s=round(info.cost_s + draw_s, 3),
                  epochs=info.config.get("epochs", 0))
    record["model_path"] = "" if control else _save_deployable(ctx, quantized, name, config_id)
    return record, predictions, per_group


def _save_deployable(ctx: Context, quantized, name: str, config_id: str) -> str:
    """Save a mitigated real INT8 model as TorchScript; a simulated one cannot be deployed as it
    is (its record keeps the bit allocation that rebuilds it), and controls are not kept."""
    if not method_traits(name).deployable or quantized.quant_info.execution != "real_int8":
        return ""
    path = ctx.run_dir / "models" / f"{config_id}.pt"
    export_torchscript(quantized, path, ctx.cfg.data.image_size)
    return str(path.relative_to(ctx.run_dir))


RUNNERS = {"baseline": run_baseline, "quantization": run_quantization, "runtime": run_runtime,
           "mitigation": run_mitigation}
"""The functions a ``WorkUnit`` can name, each ``runner(ctx, **unit.args)``."""

# ----------------------------------------------------------------------------- run folder

RESULT_DEFINING = ("seed", "data", "models", "training")
"""Config sections whose change invalidates earlier results of a run."""


def save_run_config(cfg: ExperimentConfig) -> Path:
    """Write ``results/<run>/config.yaml``, refusing to mix results of different experiments.

    A folder that holds no results yet (e.g. after a run stopped by a typo) takes the new config.
    """
    path = cfg.run_dir / "config.yaml"
    if path.is_file() and holds_results(cfg.run_dir):
        old, new = config_to_dict(load_config(path)), config_to_dict(cfg)
        changed = [key for key in RESULT_DEFINING if old[key] != new[key]]
        if changed:
            raise ValueError(
                f"{cfg.run_dir} holds results of a run whose {', '.join(changed)} settings differ "
                f"from this config's; pick another run name (--set run_name=NEW) or delete "
                f"{cfg.run_dir} to start over")
    return save_config(cfg, path)
