"""Units of work for the phases: one configuration → (record, predictions, per-group table).

Each unit is a function of (config, checkpoint, id) and nothing else, so a sweep can be spread over
machines without changing the phases. ``main.py`` lists the units and hands them to
``results.run_sweep``; this module knows how to run each one.
"""
from __future__ import annotations

import dataclasses
import logging
import zipfile
from functools import cached_property
from pathlib import Path

import datasets
from config import (ExperimentConfig, config_to_dict, expand_method_specs, load_config,
                    parse_bits, save_config)
from evaluation import fp32_reference_latency, model_size_mib, predict
from fairness_metrics import summarize_predictions
from models import (build_model, count_parameters, export_torchscript, list_models,
                    load_model_from_checkpoint, save_checkpoint)
from mitigation import FairnessAwareQuantizer  # also registers the mitigation methods
from quantization import (apply_quantization, context_keys,
                          kernel_capability, latency_report, method_config)
from results import WorkUnit, holds_results, load_predictions, predictions_path
from runtimes import fp32_runtime_model, get_runtime, quantize_with_runtime
from training import fit, resolve_device, seed_everything

log = logging.getLogger(__name__)


class Context:
    """What every unit of one run shares: the config, the data splits and their loaders.

    Splits are loaded on first use, so listing the units (to skip finished ones) costs nothing.
    """

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg
        self.run_dir = cfg.run_dir
        self._fp32_references: dict[str, dict] = {}  # arch -> {batch size: (ms, name)}

    @cached_property
    def splits(self):
        data = self.cfg.data
        splits = datasets.load_dataset(
            data.dataset, data.root, target=data.target, sensitive=data.sensitive,
            image_size=data.image_size, seed=self.cfg.seed, split_fractions=data.split_fractions,
            skip_bad_images=data.skip_bad_images, max_per_split=data.max_per_split,
            synthetic=dataclasses.asdict(data.synthetic))
        check_calibration_sizes(self.cfg, len(splits.train))
        return splits

    def loader(self, dataset, shuffle: bool = False):
        return datasets.make_loader(dataset, self.cfg.data.batch_size, shuffle=shuffle,
                                    seed=self.cfg.seed, num_workers=self.cfg.data.num_workers)

    @cached_property
    def device(self):
        return resolve_device(self.cfg.runtime.device)

    def checkpoint_path(self, arch: str) -> Path:
        return self.run_dir / "checkpoints" / self.cfg.data.dataset / f"{arch}.pt"

    def require_baseline(self, arch: str) -> None:
        """Stop before a sweep starts when the FP32 model or its predictions are missing."""
        for path in (self.checkpoint_path(arch), predictions_path(self.run_dir, baseline_id(self.cfg, arch))):
            if not path.is_file():
                raise FileNotFoundError(f"no FP32 baseline for {arch!r} ({path} is missing): run "
                                        "`python main.py --phase baseline` with the same config first")
        if not zipfile.is_zipfile(self.checkpoint_path(arch)):  # torch.save writes a zip archive
            raise ValueError(DAMAGED_CHECKPOINT.format(path=self.checkpoint_path(arch)))

    def fp32_model(self, arch: str):
        self.require_baseline(arch)
        model, _ = load_model_from_checkpoint(self.checkpoint_path(arch))
        return model.eval()

    def score(self, predictions, reference=None):
        analysis = self.cfg.analysis
        return summarize_predictions(predictions, reference=reference,
                                     n_resamples=analysis.bootstrap_resamples, ci=analysis.ci,
                                     seed=self.cfg.seed, min_group_size=analysis.min_group_size)

    def calibration_loader(self, kind: str, n: int, seed: int, draw: int = 0):
        """A loader over ``n`` training images drawn at random or balanced over groups."""
        if kind == "none":
            return None
        draw_subset = {"random": datasets.random_subset, "balanced": datasets.balanced_subset}[kind]
        return self.loader(draw_subset(self.splits.train, n, seed=calibration_seed(seed, draw)))

    def fp32_predictions(self, arch: str):
        return load_predictions(self.run_dir, baseline_id(self.cfg, arch))

    def latency_comparison(self, arch: str, fp32_model, int8_model) -> dict:
        """An integer model vs the fastest FP32 of ``arch`` on this machine (timed once per
        architecture), same process, at the configured batch sizes."""
        return latency_report(fp32_model, int8_model, self.cfg.data.image_size,
                              reference=self.fp32_reference(arch, fp32_model),
                              **self._latency_options)

    @property
    def _latency_options(self) -> dict:
        runtime = self.cfg.runtime
        return dict(batch_sizes=runtime.latency_batch_sizes, threads=runtime.threads,
                    warmup=runtime.latency_warmup, repeats=runtime.latency_repeats)

    def fp32_reference(self, arch: str, fp32_model) -> dict:
        """{batch size: (ms, name)} of the fastest FP32 of ``arch``: torch eager in both layouts
        and the FP32 model of every configured runtime."""
        if arch not in self._fp32_references:
            folder = self.run_dir / "models" / self.cfg.data.dataset / arch
            others = {f"{name}_fp32": fp32_runtime_model(name, fp32_model, self.cfg.data.image_size,
                                                         folder / name, threads=self.cfg.runtime.threads)
                      for name in self.cfg.runtime.backends if name != "torch"}
            report = latency_report(fp32_model, fp32_model, self.cfg.data.image_size,
                                    fp32_models=others, **self._latency_options)
            self._fp32_references[arch] = {
                n: (report[f"fp32_latency_ms_b{n}"], report[f"fp32_reference_b{n}"])
                for n in self.cfg.runtime.latency_batch_sizes}
        return self._fp32_references[arch]

    def predict(self, model):
        return predict(model, self.loader(self.splits.test), device=self.device,
                       progress=self.cfg.runtime.progress)


DAMAGED_CHECKPOINT = ("checkpoint {path} is damaged (not a complete torch archive): train it again "
                      "with `python main.py --phase baseline --force`")
UNKNOWN_ARCHITECTURES = ("models.architectures: unknown architecture(s) {unknown}; known: {known}. "
                         "Fix the name in the YAML file or with --set models.architectures=[...]")
CALIBRATION_TOO_LARGE = ("{key}={size} is larger than the {n_train} training images of {dataset}: "
                         "calibration draws from the training split, so ask for at most "
                         "{n_train} (--set {key}=...) or use more data")
FAIRNESS_AWARE_OPTIONS = ("criterion", "calibration", "observer")
"""The options a fairness_aware_quantizer spec may set (the run sets the others)."""
UNKNOWN_FAIRNESS_AWARE_OPTION = ("mitigation.methods: fairness_aware_quantizer has no option(s) "
                                 "{unknown}; it takes bits and {valid}")
CALIBRATION_OVER_CAP = ("{key}={size} is larger than data.max_per_split={cap}, which caps the "
                        "training split: ask for at most {cap} calibration samples or raise "
                        "data.max_per_split")


def check_config(cfg: ExperimentConfig) -> None:
    """What the config alone cannot know: architecture and method names, against the registries.

    Runs before anything is written, so a typo never leaves a run folder behind.
    """
    unknown = [arch for arch in cfg.models.architectures if arch not in list_models()]
    if unknown:
        raise ValueError(UNKNOWN_ARCHITECTURES.format(unknown=unknown, known=list_models()))
    for backend in cfg.runtime.backends:
        if backend != "torch":
            get_runtime(backend).check_installed()
    for arch in cfg.models.architectures:
        for name, options in methods_for(arch, cfg.quantization.methods):
            method_config(name, **({**_qat_defaults(cfg), **options} if name == "qat" else options))
        for name, options in methods_for(arch, cfg.mitigation.methods):
            _bits_label(name, options)
            if name == "fairness_aware_quantizer":
                _check_fairness_aware(options)
    cap = cfg.data.max_per_split
    for key, size in _calibration_sizes_in_use(cfg):
        if cap is not None and size > cap:
            raise ValueError(CALIBRATION_OVER_CAP.format(key=key, size=size, cap=cap))


def check_calibration_sizes(cfg: ExperimentConfig, n_train: int) -> None:
    """Every calibration size the grids use fits in the training split (checked when it loads)."""
    for key, size in _calibration_sizes_in_use(cfg):
        if size > n_train:
            raise ValueError(CALIBRATION_TOO_LARGE.format(key=key, size=size, n_train=n_train,
                                                          dataset=cfg.data.dataset))


def _check_fairness_aware(options: dict) -> None:
    extra = {k: v for k, v in options.items() if k != "bits"}
    unknown = sorted(set(extra) - set(FAIRNESS_AWARE_OPTIONS))
    if unknown:
        raise ValueError(UNKNOWN_FAIRNESS_AWARE_OPTION.format(unknown=unknown,
                                                              valid=list(FAIRNESS_AWARE_OPTIONS)))
    weight_bits, act_bits = parse_bits(options.get("bits", "w8a8"))
    FairnessAwareQuantizer(bit_width=weight_bits, act_bits=act_bits, progress=False, **extra)


def _calibration_sizes_in_use(cfg: ExperimentConfig) -> list[tuple[str, int]]:
    """(config key, size) of every calibration size some configured method draws."""
    calibrated = any(spec["method"] in CALIBRATED_METHODS for spec in cfg.quantization.methods)
    sizes = [("quantization.calibration_sizes", n) for n in cfg.quantization.calibration_sizes
             if calibrated]
    return sizes + [("mitigation.calibration_size", cfg.mitigation.calibration_size)]


def calibration_seed(seed: int, draw: int) -> int:
    """The seed of calibration draw ``draw``: paired methods share it, draws differ."""
    return seed * 1000 + draw


def _qat_defaults(cfg: ExperimentConfig) -> dict:
    q = cfg.quantization
    return {"epochs": q.qat_epochs, "lr": q.qat_lr, "max_steps": q.qat_max_steps_per_epoch}


def baseline_id(cfg: ExperimentConfig, arch: str) -> str:
    return f"{cfg.data.dataset}/{arch}/fp32/seed={cfg.seed}"


# ----------------------------------------------------------------------------- baseline

def baseline_units(ctx: Context, force: bool = False) -> list[WorkUnit]:
    cfg = ctx.cfg
    return [WorkUnit(baseline_id(cfg, arch),
                     {"dataset": cfg.data.dataset, "arch": arch, "method": "fp32",
                      "weight_bits": 32, "act_bits": 32, "calibration": "none", "seed": cfg.seed,
                      "execution": "fp32", "synthetic": cfg.data.dataset == "synthetic"},
                     lambda arch=arch: run_baseline(ctx, arch, retrain=force))
            for arch in cfg.models.architectures]


def run_baseline(ctx: Context, arch: str, retrain: bool = False):
    """Train (or reuse the checkpoint of) one architecture and evaluate it on the test split."""
    model, training = _trained_model(ctx, arch, retrain)
    predictions = ctx.predict(model)
    record, per_group = ctx.score(predictions)
    record.update(training, params=count_parameters(model), size_mib=model_size_mib(model),
                  **_fp32_latency(ctx, model))
    return record, predictions, per_group


def _trained_model(ctx: Context, arch: str, retrain: bool):
    cfg, path = ctx.cfg, ctx.checkpoint_path(arch)
    if path.is_file() and not retrain:
        log.info("reusing checkpoint %s", path)
        model, meta = load_model_from_checkpoint(path)
        return model.eval(), {k: meta.get(k) for k in ("train_time_s", "best_epoch", "best_val_accuracy")}
    seed_everything(cfg.seed)  # the initial weights depend on the seed alone, not on what ran before
    model = build_model(arch, num_classes=2, image_size=cfg.data.image_size,
                        pretrained=cfg.models.pretrained, weights_path=_weights_path(cfg, arch))
    train = cfg.training.for_arch(arch)
    result = fit(model, ctx.loader(ctx.splits.train, shuffle=True), ctx.loader(ctx.splits.val),
                 epochs=train.epochs, lr=train.lr, weight_decay=train.weight_decay,
                 optimizer=train.optimizer, scheduler=train.scheduler, device=ctx.device,
                 seed=cfg.seed, max_steps=train.max_steps_per_epoch,
                 progress=cfg.runtime.progress, desc=f"train {arch}")
    training = {"train_time_s": round(result.train_time_s, 2), "best_epoch": result.best_epoch,
                "best_val_accuracy": result.best_val_accuracy}
    save_checkpoint(model, path, arch=arch, num_classes=2, image_size=cfg.data.image_size,
                    dataset=cfg.data.dataset, seed=cfg.seed, **training)
    return model.eval(), training


def _weights_path(cfg: ExperimentConfig, arch: str):
    if cfg.models.weights_dir is None:
        return None
    path = Path(cfg.models.weights_dir) / f"{arch}.pth"
    return path if path.is_file() else None


def _fp32_latency(ctx: Context, model) -> dict:
    """FP32 latency at each configured batch size, in its fastest eager layout."""
    runtime, fields = ctx.cfg.runtime, {}
    for n in runtime.latency_batch_sizes:
        ms, layout = fp32_reference_latency(model.cpu(), ctx.cfg.data.image_size, n,
                                            threads=runtime.threads, warmup=runtime.latency_warmup,
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


CALIBRATED_METHODS = ("ptq_static",)
"""Methods whose result depends on a calibration set (the others get ``calibration='none'``)."""


def quantization_units(ctx: Context) -> list[WorkUnit]:
    """The configured grid: architectures × methods × options × calibration × seeds."""
    cfg, units = ctx.cfg, []
    for arch in cfg.models.architectures:
        for name, options in methods_for(arch, cfg.quantization.methods):
            for seed in cfg.quantization.seeds:
                for calibration in _calibrations(cfg, name):
                    units.append(_quantization_unit(ctx, arch, name, options, calibration, seed))
                    units += _runtime_units(ctx, arch, name, options, calibration, seed)
    for arch in cfg.models.architectures:  # after the grid, so a bad method name is named first
        ctx.require_baseline(arch)
    return units


def _calibrations(cfg: ExperimentConfig, method: str) -> list[tuple[str, int]]:
    if method not in CALIBRATED_METHODS:
        return [("none", 0)]
    q = cfg.quantization
    return [(kind, n) for kind in q.calibration_kinds for n in q.calibration_sizes]


ID_OMITTED = ("bits", "weight_bits", "act_bits", "calibration", "calibration_size")
"""Options already named by the id's bits and calib parts."""


def configuration_id(dataset: str, arch: str, method: str, bits: str, options: dict,
                     calibration: str, seed: int, draw: int | None = None) -> str:
    """E.g. ``synthetic/resnet50/ptq_static/w4a8/observer=minmax/calib=random-512/seed=0``."""
    extras = _options_label(options, sep="/")
    return "/".join(part for part in [dataset, arch, method, bits, extras, f"calib={calibration}",
                                      "" if draw is None else f"draw={draw}", f"seed={seed}"] if part)


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
    if method == "qat":
        options = {**_qat_defaults(cfg), **options}
    label = calibration_label(calibration)
    bits = method_config(method, **options).bits  # also rejects a bad method or option up front
    config_id = configuration_id(cfg.data.dataset, arch, method, bits, options, label, seed)
    fields = {"dataset": cfg.data.dataset, "arch": arch, "method": method, "calibration": label,
              "seed": seed, "options": {k: v for k, v in options.items() if k != "bits"}}
    return WorkUnit(config_id, fields,
                    lambda: run_quantization(ctx, arch, method, options, calibration, seed))


def run_quantization(ctx: Context, arch: str, method: str, options: dict,
                     calibration: tuple[str, int], seed: int):
    """Quantize one FP32 checkpoint, evaluate it and compare it with its FP32 predictions."""
    model = ctx.fp32_model(arch)
    calibration_loader = ctx.calibration_loader(*calibration, seed=seed)
    context = {"device": ctx.device, "seed": seed, "progress": ctx.cfg.runtime.progress}
    if method == "qat":
        context.update(train_loader=ctx.loader(ctx.splits.train, shuffle=True),
                       val_loader=ctx.loader(ctx.splits.val))
    quantized = apply_quantization(model, method, calibration_data=calibration_loader,
                                   **options, **context)
    predictions = ctx.predict(quantized)
    record, per_group = ctx.score(predictions, ctx.fp32_predictions(arch))
    record.update(quant_fields(quantized.quant_info))
    if quantized.quant_info["execution"] == "real_int8":
        record.update(ctx.latency_comparison(arch, model, quantized))
        if method in CALIBRATED_METHODS and ctx.cfg.quantization.check_agreement:
            twin = apply_quantization(model, method, calibration_data=calibration_loader,
                                      execution="simulated", **options, **context)
            record["agreement_with_simulated"] = float(
                (ctx.predict(twin)["y_pred"].values == predictions["y_pred"].values).mean())
    return record, predictions, per_group


RUNTIME_COUNTERPART = ("ptq_static", "w8a8")
"""The torch configuration that each other runtime's INT8 model is built beside."""


def _runtime_units(ctx: Context, arch: str, method: str, options: dict,
                   calibration: tuple[str, int], seed: int) -> list[WorkUnit]:
    """One unit per configured runtime besides torch, for a plain static w8a8 configuration:
    the same checkpoint and calibration images, quantized by that runtime."""
    if (method, options.get("bits")) != RUNTIME_COUNTERPART or set(options) != {"bits"}:
        return []
    units = []
    for backend in ctx.cfg.runtime.backends:
        if backend == "torch":
            continue
        config_id = configuration_id(ctx.cfg.data.dataset, arch, method, "w8a8",
                                     {"backend": backend}, calibration_label(calibration), seed)
        fields = {"dataset": ctx.cfg.data.dataset, "arch": arch, "method": method,
                  "calibration": calibration_label(calibration), "seed": seed, "backend": backend,
                  "options": {"backend": backend}}
        units.append(WorkUnit(config_id, fields, lambda backend=backend, config_id=config_id:
                              run_runtime(ctx, arch, backend, calibration, seed, config_id)))
    return units


def run_runtime(ctx: Context, arch: str, backend: str, calibration: tuple[str, int], seed: int,
                config_id: str):
    """Quantize one FP32 checkpoint with another runtime (artifact under ``models/<config_id>``),
    evaluate it, and compare it with its FP32 predictions and with the torch twin."""
    model = ctx.fp32_model(arch)
    calibration_loader = ctx.calibration_loader(*calibration, seed=seed)
    quantized = quantize_with_runtime(backend, model, calibration_loader, ctx.cfg.data.image_size,
                                      ctx.run_dir / "models" / config_id,
                                      threads=ctx.cfg.runtime.threads)
    predictions = ctx.predict(quantized)
    record, per_group = ctx.score(predictions, ctx.fp32_predictions(arch))
    record.update(quant_fields(quantized.quant_info))
    record["artifact"] = str(quantized.files[0].relative_to(ctx.run_dir))
    record.update(ctx.latency_comparison(arch, model, quantized))
    twin = apply_quantization(model, "ptq_static", calibration_data=calibration_loader,
                              execution="simulated", device=ctx.device, seed=seed,
                              progress=ctx.cfg.runtime.progress)
    record["agreement_with_simulated"] = float(
        (ctx.predict(twin)["y_pred"].values == predictions["y_pred"].values).mean())
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


def quant_fields(info: dict) -> dict:
    """The columns of a result row that come from a quantized model's ``quant_info``."""
    keys = ("weight_bits", "act_bits", "execution", "observer", "size_mib", "fp32_size_mib",
            "compression", "fp32_layers", "layer_bits", "activation_range", "cpu_capability",
            "vnni")
    fields = {key: info.get(key) for key in keys}
    fields["cost_s"] = round(info["cost_s"], 3)
    return fields


# ----------------------------------------------------------------------------- mitigation

def mitigation_units(ctx: Context) -> list[WorkUnit]:
    """Each configured mitigation, plus the plain-PTQ controls it is compared with.

    ``bias_aware_calibration`` runs balanced and random calibration over ``calibration_draws``
    paired draws (draw ``d`` of both uses the same seed); every other method is compared with
    plain PTQ on random draw 0 at the same bit width.
    """
    cfg, units = ctx.cfg, {}
    architectures = cfg.mitigation.architectures or cfg.models.architectures
    for arch in architectures:
        for name, options in methods_for(arch, cfg.mitigation.methods):
            for unit in _mitigation_units_of(ctx, arch, name, options):
                units.setdefault(unit.config_id, unit)
    for arch in architectures:
        ctx.require_baseline(arch)
    return list(units.values())


def _mitigation_units_of(ctx: Context, arch: str, name: str, options: dict) -> list[WorkUnit]:
    bits = options.get("bits", "w8a8")
    if name != "bias_aware_calibration":
        control = _mitigation_unit(ctx, arch, "ptq_static", {"bits": bits}, "random", 0)
        return [control, _mitigation_unit(ctx, arch, name, options, "balanced" if name ==
                                          "fairness_aware_quantizer" else "random", 0,
                                          compare_to=control.config_id)]
    units = []
    for draw in range(ctx.cfg.mitigation.calibration_draws):
        control = _mitigation_unit(ctx, arch, "ptq_static", {"bits": bits}, "random", draw)
        units += [control, _mitigation_unit(ctx, arch, name, options, "balanced", draw,
                                            compare_to=control.config_id)]
    return units


def _mitigation_unit(ctx: Context, arch: str, name: str, options: dict, kind: str, draw: int,
                     compare_to: str | None = None) -> WorkUnit:
    cfg = ctx.cfg
    calibration = f"{kind}-{cfg.mitigation.calibration_size}"
    config_id = configuration_id(cfg.data.dataset, arch, name, _bits_label(name, options), options,
                                 calibration, cfg.seed, draw)
    fields = {"dataset": cfg.data.dataset, "arch": arch, "method": name,
              "calibration": calibration, "draw": draw, "seed": cfg.seed,
              "compare_to": compare_to, "variant": _options_label(options, sep=",")}
    return WorkUnit(config_id, fields,
                    lambda: run_mitigation(ctx, arch, name, options, kind, draw, config_id))


def _bits_label(name: str, options: dict) -> str:
    if name == "fairness_aware_quantizer":  # a search over registered methods, not one itself
        weight_bits, act_bits = parse_bits(options.get("bits", "w8a8"))
        return f"w{weight_bits}a{act_bits}"
    return method_config(name, **options).bits


def run_mitigation(ctx: Context, arch: str, name: str, options: dict, kind: str, draw: int,
                   config_id: str):
    """Run one mitigation (or its plain-PTQ control) and compare it with the FP32 predictions."""
    model = ctx.fp32_model(arch)
    if name == "fairness_aware_quantizer":
        quantized, extra = _fairness_aware(ctx, model, options, draw)
    else:
        quantized, extra = _registered_mitigation(ctx, model, name, options, kind, draw), {}
    predictions = ctx.predict(quantized)
    record, per_group = ctx.score(predictions, ctx.fp32_predictions(arch))
    record.update(quant_fields(quantized.quant_info), **extra)
    record["epochs"] = quantized.quant_info.get("config", {}).get("epochs", 0)
    record["model_path"] = _save_deployable(ctx, quantized, name, config_id)
    return record, predictions, per_group


def _save_deployable(ctx: Context, quantized, name: str, config_id: str) -> str:
    """Save a mitigated real INT8 model as TorchScript; a simulated one cannot be deployed as it
    is (its record keeps the bit allocation that rebuilds it), and the PTQ controls are not kept."""
    if name == "ptq_static" or quantized.quant_info["execution"] != "real_int8":
        return ""
    path = ctx.run_dir / "models" / f"{config_id}.pt"
    export_torchscript(quantized, path, ctx.cfg.data.image_size)
    return str(path.relative_to(ctx.run_dir))


def _registered_mitigation(ctx: Context, model, name: str, options: dict, kind: str, draw: int):
    cfg, n = ctx.cfg, ctx.cfg.mitigation.calibration_size
    seed = calibration_seed(cfg.seed, draw)
    if name == "fairness_finetune":
        options = {**_qat_defaults(cfg), **options}
    if name == "bias_aware_calibration":  # draws its own subset with the same seed as the control
        options = {"calibration": kind, "calibration_size": n, **options}
        calibration = ctx.splits.train
    else:
        calibration = ctx.calibration_loader(kind, n, cfg.seed, draw)
    available = {"device": ctx.device, "seed": seed, "progress": cfg.runtime.progress,
                 "eval_data": ctx.loader(ctx.splits.val), "val_loader": ctx.loader(ctx.splits.val),
                 "train_loader": ctx.loader(ctx.splits.train, shuffle=True)}
    accepted = context_keys(name)
    return apply_quantization(model, name, calibration_data=calibration, **options,
                              **{k: v for k, v in available.items() if k in accepted})


def _fairness_aware(ctx: Context, model, options: dict, draw: int):
    """``FairnessAwareQuantizer``: constraint checked on validation data, reported on test."""
    cfg = ctx.cfg
    weight_bits, act_bits = parse_bits(options.get("bits", "w8a8"))
    extra = {k: v for k, v in options.items() if k != "bits"}
    quantizer = FairnessAwareQuantizer(
        bit_width=weight_bits, act_bits=act_bits, max_dp_gap=cfg.mitigation.max_dp_gap,
        sensitive_attributes=ctx.splits.train.sensitive_attrs,
        calibration_size=cfg.mitigation.calibration_size, device=ctx.device,
        seed=calibration_seed(cfg.seed, draw), progress=cfg.runtime.progress, **extra)
    quantized = quantizer.quantize(model, calibration_data=ctx.splits.train,
                                   validation_data=ctx.loader(ctx.splits.val))
    return quantized, {"constraint_met": quantizer.constraint_met, "max_dp_gap": quantizer.max_dp_gap,
                       "val_dp_gap": quantizer.final_dp_gap, "search_steps": len(quantizer.history),
                       "history": quantizer.history}

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
