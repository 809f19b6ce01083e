"""Experiment configuration: a frozen dataclass tree loaded from YAML with dotted overrides.

    cfg = load_config("configs/config.yaml",
                      ["training.epochs=2", "models.architectures=[resnet50]"])

Every key is checked where it enters: an unknown key or a value of the wrong type raises a
``ValueError`` that names the key and lists the valid ones. ``save_config`` writes the resolved
tree; ``load_config`` on that file reproduces the run.

Sweeps: in ``quantization.methods`` and ``mitigation.methods`` each entry is a mapping with a
``method`` name and its options; an option whose value is a list is swept (one configuration per
element, the product over all listed options). To pass a list as a single value, wrap it in
another list (``fp32_layers: [[fc]]``).
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

from checks import check_choice, listed, parse_bits, shown

DEVICES = ("auto", "cpu", "cuda")
DATASETS = ("synthetic", "celeba", "utkface", "fairface", "manifest")
"""Names of datasets.KNOWN_DATASETS (kept equal by a test; config imports no torch)."""
NAME = re.compile(r"[A-Za-z0-9_.-]+")
"""What a name that becomes a folder may hold (run_name, the dataset's name)."""
MAX_SEED = 2**32 - 1
"""The largest seed numpy, torch and the data splits all accept (seeds run from 0)."""
MAX_COUNT = 10**9
"""Upper bound of sizes and counts (images, steps, calibration samples): far above any real run,
low enough that a typo (an extra digit group) is refused at load time, not by an allocation."""
MAX_RESAMPLES = 1_000_000
"""analysis.bootstrap_resamples: a million resamples of every comparison is already hours of CPU;
the default is 2000."""
MAX_NAME_LENGTH = 100
"""The longest such name: well under any filesystem's 255-byte limit on one folder name."""
# runtimes.RUNTIMES plus the project's own kernels
BACKENDS = ("torch", "onnxruntime", "openvino", "torch_pt2e")
CALIBRATION_KINDS = ("random", "balanced", "balanced_by_label", "minority_enriched")
"""Names of datasets.CALIBRATION_KINDS (kept equal by a test; config imports no torch)."""
EXECUTORS = ("local", "ray")
RAY_ADDRESS = re.compile(r"^(auto|ray://[^\s:/]+:\d+)$")
SWEEP_PHASES = ("baseline", "quantization", "mitigation")
RAY_RESOURCE_KEYS = ("num_cpus", "num_gpus")
DEFAULT_RAY_RESOURCES = {"baseline": {"num_cpus": 1, "num_gpus": "auto"},
                         "quantization": {"num_cpus": 1, "num_gpus": 0},
                         "mitigation": {"num_cpus": 1, "num_gpus": 0}}
"""What one Ray task of each phase asks for. ``num_gpus: auto``: one GPU when the cluster has
one (baseline training), none otherwise; calibration and evaluation run on CPUs."""

BAD_YAML_FILE = ("config file {path!r} is not valid YAML ({where}{problem}): fix that line, e.g. "
                 "close a bracket or quote, or align the indentation with its section")
NOT_UTF8_FILE = ("config file {path!r} is not UTF-8 text (byte {byte} at offset {offset}): save it "
                 "as UTF-8, or pass --config with the YAML file itself")
BAD_YAML_OVERRIDE = ("override {override!r}: the value {value!r} is not valid YAML ({problem}); "
                     "close its brackets or quote it, e.g. --set 'models.architectures=[resnet50]'")
NO_METHODS = ("{key} is empty, so that phase would run nothing: name at least one method, e.g. "
              "[{{method: {example}}}]; to skip the phase, run the others with --phase")
EMPTY_LIST = ("{key}=[] would leave the quantization grid empty: give at least one value, e.g. "
              "--set {key}={example}")
BAD_RAY_ADDRESS = ("runtime.ray_address={value!r}: expected null (start a local Ray instance sized "
                   "to this machine), 'auto' (join the cluster started with `ray start`) or "
                   "'ray://HOST:PORT' (a Ray client address), e.g. --set runtime.ray_address=auto")
BAD_RAY_RESOURCE = ("runtime.ray_resources.{phase}.{key}={value!r}: expected {expected}, e.g. "
                    "--set runtime.ray_resources.{phase}.{key}={example}")
MANIFEST_NEEDS = ("data.dataset=manifest needs data.{key}: {why}, e.g. --set data.{key}={example} "
                  "(docs/datasets.md)")
MANIFEST_UNUSED = ("data.manifest={path!r} is set but data.dataset={dataset!r}: set "
                   "data.dataset=manifest to read it, or drop data.manifest")
BAD_DATASET_NAME = ("{key}={value!r}: a dataset's name becomes a folder and the first part of "
                    "every config id, so it {rule}; set data.name, e.g. --set data.name=my_faces")
BAD_RUN_NAME = ("run_name={value!r}: the run's name becomes the folder <results_dir>/<run_name>, "
                "so it {rule}; e.g. --set run_name=my_run")
NAME_RULE = ("may hold letters, digits, '_', '.' or '-', is not '.' or '..', and has at most "
             f"{MAX_NAME_LENGTH} characters")
WEIGHTS_UNKNOWN_ARCH = ("models.weights names {unknown}, which models.architectures={known} does "
                        "not hold; give weights only for architectures that run (or add them "
                        "there)")
EPOCHS_ZERO_NEEDS_WEIGHTS = ("training.epochs=0 evaluates a trained model without training it, but "
                             "{arch!r} has no trained weights: give them with --set "
                             "'models.weights={{{arch}: path/to/state_dict.pt}}', or set "
                             "training.epochs to 1 or more to train it")
MITIGATE_UNKNOWN_ARCH = ("mitigation.architectures={given}: {unknown} not in models.architectures="
                         "{known}; mitigate only architectures that the baseline trains (add them "
                         "to models.architectures or drop them here)")


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the synthetic CelebA-format generator (see datasets.generate_synthetic_celeba).

    The mappings are keyed by intersectional group (``Female/Old`` …); ``None`` keeps the
    generator's documented defaults. ``exposure`` maps groups to a contrast gain applied to
    their images only (``{}``: off; see docs/synthetic.md), e.g. ``{Female/Old: 1.8}``.
    """

    n_images: int = 6000
    image_size: int = 64
    group_shares: Optional[dict] = None
    smiling_rate: Optional[dict] = None
    cue_strength: Optional[dict] = None
    exposure: dict = field(default_factory=dict)
    mouth_scale: float = 1.0
    """Size of the smile cue (mouth, curvature, teeth) relative to the face; docs/synthetic.md."""
    seed: int = 0
    """The generator's own seed (docs/synthetic.md): the run's ``seed`` does not redraw the data."""

    def __post_init__(self):
        _check_range("data.synthetic.seed", self.seed, 0, MAX_SEED)
        _check_range("data.synthetic.n_images", self.n_images, 1, MAX_COUNT)
        _check_range("data.synthetic.image_size", self.image_size, 16, 512)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "synthetic"
    root: str = "data/datasets"
    manifest: Optional[str] = None
    """``dataset: manifest``: the CSV (``file_name``, target and sensitive columns) describing the
    user's images, which are read only inside its folder (docs/datasets.md)."""
    target: Optional[str] = None
    sensitive: Optional[tuple[str, ...]] = None
    positive: Optional[str] = None
    """The target value that means 1, when the target column is not already 0/1."""
    name: Optional[str] = None
    """The dataset's name in folders, config ids and reports (default: the manifest's folder
    name, or ``dataset``)."""
    image_size: int = 32
    batch_size: int = 64
    num_workers: int = 0
    split_fractions: tuple[float, ...] = (0.7, 0.15, 0.15)
    max_per_split: Optional[int] = None
    skip_bad_images: bool = False
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self):
        check_choice("data.dataset", self.dataset, DATASETS)
        if self.dataset == "manifest":
            for key, why, example in (
                    ("manifest", "the CSV that lists the images", "path/to/metadata.csv"),
                    ("target", "the column to predict", "label"),
                    ("sensitive", "the columns whose values define the groups", "[sex,skin_type]")):
                if not getattr(self, key):
                    raise ValueError(MANIFEST_NEEDS.format(key=key, why=why, example=example))
        elif self.manifest is not None:
            raise ValueError(MANIFEST_UNUSED.format(path=self.manifest, dataset=self.dataset))
        if self.name is not None and not is_folder_name(self.name):
            raise ValueError(BAD_DATASET_NAME.format(key="data.name", value=_shown(self.name),
                                                     rule=NAME_RULE))
        _check_range("data.image_size", self.image_size, 8, 1024)
        _check_range("data.batch_size", self.batch_size, 1, 65_536)
        _check_range("data.num_workers", self.num_workers, 0, 64)
        if len(self.split_fractions) != 3 or not all(map(math.isfinite, self.split_fractions)) \
                or abs(sum(self.split_fractions) - 1) > 1e-6 or min(self.split_fractions) <= 0:
            raise ValueError(f"data.split_fractions={listed(self.split_fractions)}: expected three "
                             "positive fractions (train, val, test) that sum to 1; fix it in the "
                             "YAML file or with --set data.split_fractions=[0.7,0.15,0.15]")
        if self.max_per_split is not None:
            _check_range("data.max_per_split", self.max_per_split, 1, MAX_COUNT)

    @property
    def dataset_name(self) -> str:
        """The name of the data in folders, ids and reports: ``name``, else the manifest's folder
        name, else ``dataset``."""
        if self.name is not None:
            return self.name
        if self.dataset == "manifest":
            folder = Path(self.manifest).resolve().parent.name
            if not is_folder_name(folder):
                raise ValueError(BAD_DATASET_NAME.format(key="the manifest's folder name",
                                                         value=_shown(folder), rule=NAME_RULE))
            return folder
        return self.dataset


@dataclass(frozen=True)
class ModelsConfig:
    architectures: tuple[str, ...] = ("resnet50", "mobilenet_v2", "efficientnet_b0",
                                      "vit_small", "squeezenet1_1")
    pretrained: bool = False
    weights_dir: Optional[str] = None
    weights: dict = field(default_factory=dict)
    """Trained state dicts by architecture, ``{resnet18: path/to/state_dict.pt}`` (read with
    ``weights_only=True``): the baseline starts from them, and with ``training.epochs: 0`` only
    evaluates them."""

    def __post_init__(self):
        if not self.architectures:
            raise ValueError("models.architectures is empty: name at least one architecture, "
                             "e.g. [resnet50]")
        repeated = sorted({arch for arch in self.architectures
                           if self.architectures.count(arch) > 1})
        if repeated:
            raise ValueError(f"models.architectures names {listed(repeated)} more than once; name "
                             "each architecture once")
        unknown = sorted(set(self.weights) - set(self.architectures))
        if unknown:
            raise ValueError(WEIGHTS_UNKNOWN_ARCH.format(unknown=listed(unknown),
                                                         known=listed(self.architectures)))
        for arch, path in self.weights.items():
            if not isinstance(path, str) or not path:
                raise _type_error(f"models.weights.{arch}", path, "the path of a state dict")


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 3
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    scheduler: str = "cosine"
    max_steps_per_epoch: Optional[int] = None
    per_arch: dict = field(default_factory=dict)
    """Per-architecture overrides of the keys above, e.g. ``{vit_small: {lr: 0.0005}}``."""

    def __post_init__(self):
        _check_range("training.epochs", self.epochs, 0, 10_000)
        _check_range("training.lr", self.lr, 0.0, 10.0, above=True)
        _check_range("training.weight_decay", self.weight_decay, 0.0, 10.0)
        check_choice("training.optimizer", self.optimizer, ("adamw", "sgd"))
        check_choice("training.scheduler", self.scheduler, ("cosine", "none"))
        if self.max_steps_per_epoch is not None:
            _check_range("training.max_steps_per_epoch", self.max_steps_per_epoch, 1, MAX_COUNT)
        tunable = {f.name for f in dataclasses.fields(self)} - {"per_arch"}
        for arch, overrides in self.per_arch.items():
            if not isinstance(overrides, Mapping):
                raise ValueError(f"training.per_arch.{arch}={overrides!r}: expected a mapping of "
                                 f"training keys, e.g. {{epochs: 2}}")
            _check_known_keys(f"training.per_arch.{arch}", overrides, tunable)

    def for_arch(self, arch: str) -> "TrainingConfig":
        """The training settings for one architecture, its ``per_arch`` overrides applied."""
        return dataclasses.replace(self, **self.per_arch.get(arch, {}), per_arch={})


@dataclass(frozen=True)
class QuantizationConfig:
    methods: tuple[dict, ...] = (
        {"method": "ptq_static", "bits": ["w8a8", "w4a8", "w2a8"]},
        {"method": "ptq_dynamic"},
        {"method": "qat", "bits": ["w8a8", "w4a8"]},
    )
    calibration_sizes: tuple[int, ...] = (512,)
    calibration_kinds: tuple[str, ...] = ("random",)
    seeds: tuple[int, ...] = (0,)
    qat_epochs: int = 1
    qat_lr: float = 1e-4
    qat_max_steps_per_epoch: Optional[int] = None
    check_agreement: bool = True
    """Compare each real INT8 model with its simulated twin on the test set."""

    def __post_init__(self):
        _check_method_specs("quantization.methods", self.methods)
        if not self.methods:
            raise ValueError(NO_METHODS.format(key="quantization.methods", example="ptq_static"))
        for key, example in (("seeds", "[0]"), ("calibration_sizes", "[512]"),
                             ("calibration_kinds", "[random]")):
            if not getattr(self, key):
                raise ValueError(EMPTY_LIST.format(key=f"quantization.{key}", example=example))
        for n in self.calibration_sizes:
            _check_range("quantization.calibration_sizes", n, 1, MAX_COUNT)
        for seed in self.seeds:
            _check_range("quantization.seeds", seed, 0, MAX_SEED)
        for kind in self.calibration_kinds:
            check_choice("quantization.calibration_kinds", kind, CALIBRATION_KINDS)
        _check_range("quantization.qat_epochs", self.qat_epochs, 1, 1000)
        _check_range("quantization.qat_lr", self.qat_lr, 0.0, 10.0, above=True)
        if self.qat_max_steps_per_epoch is not None:
            _check_range("quantization.qat_max_steps_per_epoch", self.qat_max_steps_per_epoch,
                         1, MAX_COUNT)


@dataclass(frozen=True)
class MitigationConfig:
    methods: tuple[dict, ...] = (
        {"method": "bias_aware_calibration", "bits": ["w8a8", "w4a8"]},
        {"method": "mixed_precision", "bits": ["w4a8"], "criterion": ["overall", "worst_group"]},
        {"method": "fairness_finetune", "bits": ["w4a8"]},
        {"method": "sensitive_layer_preservation", "bits": ["w4a8"]},
        {"method": "fairness_aware_quantizer", "bits": ["w4a8"]},
    )
    architectures: Optional[tuple[str, ...]] = None
    """Architectures to mitigate; ``None`` means all of ``models.architectures``."""
    calibration_size: int = 512
    calibration_draws: int = 5
    max_dp_gap: float = 0.02

    def __post_init__(self):
        _check_method_specs("mitigation.methods", self.methods)
        if not self.methods:
            raise ValueError(NO_METHODS.format(key="mitigation.methods",
                                               example="bias_aware_calibration"))
        _check_range("mitigation.calibration_size", self.calibration_size, 1, MAX_COUNT)
        _check_range("mitigation.calibration_draws", self.calibration_draws, 1, 1000)
        _check_range("mitigation.max_dp_gap", self.max_dp_gap, 0.0, 1.0)


DEFAULT_MARGINS = {"accuracy": 0.01, "dp_gap": 0.02, "eo_gap": 0.02, "modest_gain": 0.05}
"""Default analysis margins (probability units); ``modest_gain``: the largest accuracy gain of QAT
over PTQ that counts as modest (H2)."""
DEFAULT_MIN_BALANCED_ACCURACY = 0.6
MARGIN_KEYS = ("accuracy", "balanced_accuracy", "worst_group_accuracy", "dp_gap", "eo_gap",
               "eop_gap", "pe_gap", "accuracy_gap", "disparate_impact", "modest_gain")


@dataclass(frozen=True)
class AnalysisConfig:
    bootstrap_resamples: int = 2000
    ci: float = 0.95
    alpha: float = 0.05
    min_group_size: int = 30
    margins: dict = field(default_factory=lambda: dict(DEFAULT_MARGINS))
    """Margins set before the run: a change smaller than this is no change worth having (the
    EQUIVALENT verdict, see verdicts.py). Keys: metric names, plus ``modest_gain`` (H2)."""
    min_balanced_accuracy: float = DEFAULT_MIN_BALANCED_ACCURACY
    """No verdict involving an FP32 model whose balanced-accuracy lower bound is at or below."""
    fairness_tolerance: Optional[float] = None
    """Deprecated: the DP-gap margin is ``margins.dp_gap``."""
    size_budgets_mib: Optional[tuple[float, ...]] = None

    def __post_init__(self):
        _check_range("analysis.bootstrap_resamples", self.bootstrap_resamples, 1, MAX_RESAMPLES)
        _check_range("analysis.ci", self.ci, 0.5, 0.999)
        _check_range("analysis.alpha", self.alpha, 1e-6, 0.5)
        _check_range("analysis.min_group_size", self.min_group_size, 0, MAX_COUNT)
        _check_range("analysis.min_balanced_accuracy", self.min_balanced_accuracy, 0.0, 1.0)
        for key, value in self.margins.items():
            check_choice("analysis.margins", key, MARGIN_KEYS)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0 < value <= 1:
                raise ValueError(f"analysis.margins.{key}={value!r}: expected a number in (0, 1] "
                                 "(probability units), e.g. 0.02")
        object.__setattr__(self, "margins", {**DEFAULT_MARGINS, **self.margins})
        if self.fairness_tolerance is not None:
            _check_range("analysis.fairness_tolerance", self.fairness_tolerance, 0.0, 1.0)
        for budget in self.size_budgets_mib or ():
            _check_range("analysis.size_budgets_mib", budget, 0.0, 1e7, above=True)


@dataclass(frozen=True)
class RuntimeConfig:
    device: str = "auto"
    threads: int = 2
    latency_batch_sizes: tuple[int, ...] = (1, 32)
    latency_warmup: int = 3
    latency_repeats: int = 10
    progress: bool = True
    backends: tuple[str, ...] = ("torch",)
    executor: str = "local"
    """``local`` runs the units one after another in this process; ``ray`` spreads them over a
    Ray cluster (docs/cluster.md)."""
    ray_address: Optional[str] = None
    ray_resources: dict = field(default_factory=lambda: {p: dict(r) for p, r in
                                                         DEFAULT_RAY_RESOURCES.items()})
    """Per phase, what one Ray task asks for; keys not given keep ``DEFAULT_RAY_RESOURCES``."""

    def __post_init__(self):
        check_choice("runtime.executor", self.executor, EXECUTORS)
        if self.ray_address is not None and not RAY_ADDRESS.match(str(self.ray_address)):
            raise ValueError(BAD_RAY_ADDRESS.format(value=self.ray_address))
        object.__setattr__(self, "ray_resources", _ray_resources(self.ray_resources))
        check_choice("runtime.device", self.device, DEVICES)
        for backend in self.backends:
            check_choice("runtime.backends", backend, BACKENDS)
        if "torch" not in self.backends:
            raise ValueError(f"runtime.backends={listed(self.backends)} leaves out 'torch', whose "
                             "models every other backend is compared with; use e.g. "
                             "[torch, onnxruntime, openvino]")
        _check_range("runtime.threads", self.threads, 1, 256)
        for b in self.latency_batch_sizes:
            _check_range("runtime.latency_batch_sizes", b, 1, 65_536)
        _check_range("runtime.latency_repeats", self.latency_repeats, 1, 100_000)
        _check_range("runtime.latency_warmup", self.latency_warmup, 0, 100_000)


def _ray_resources(given: Mapping) -> dict:
    """``given`` merged over the defaults, phase by phase, each value checked."""
    _check_known_keys("runtime.ray_resources", given, SWEEP_PHASES)
    merged = {}
    for phase in SWEEP_PHASES:
        asked = given.get(phase) or {}
        if not isinstance(asked, Mapping):
            raise _type_error(f"runtime.ray_resources.{phase}", asked, "a mapping such as "
                              "{num_cpus: 2, num_gpus: 0.5}")
        _check_known_keys(f"runtime.ray_resources.{phase}", asked, RAY_RESOURCE_KEYS)
        merged[phase] = {**DEFAULT_RAY_RESOURCES[phase], **asked}
        cpus, gpus = merged[phase]["num_cpus"], merged[phase]["num_gpus"]
        if isinstance(cpus, bool) or not isinstance(cpus, int) or not 1 <= cpus <= 1024:
            raise ValueError(BAD_RAY_RESOURCE.format(phase=phase, key="num_cpus", value=cpus,
                                                     expected="a whole number of CPUs from 1 "
                                                     "(also the task's torch threads)", example=2))
        if gpus != "auto" and (isinstance(gpus, bool) or not isinstance(gpus, (int, float))
                               or not 0 <= gpus <= 64):
            raise ValueError(BAD_RAY_RESOURCE.format(phase=phase, key="num_gpus", value=gpus,
                                                     expected="'auto' or a number of GPUs from 0 "
                                                     "(a fraction shares one)", example=0.5))
    return merged


@dataclass(frozen=True)
class ExperimentConfig:
    run_name: str = "default"
    results_dir: str = "results"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    mitigation: MitigationConfig = field(default_factory=MitigationConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self):
        if not is_folder_name(self.run_name):
            raise ValueError(BAD_RUN_NAME.format(value=_shown(self.run_name), rule=NAME_RULE))
        _check_range("seed", self.seed, 0, MAX_SEED)
        self._check_across_sections()

    def _check_across_sections(self):
        """Settings that are only wrong together (each section checks its own values)."""
        for arch in self.models.architectures:
            try:
                training = self.training.for_arch(arch)
            except (ValueError, TypeError) as error:
                raise ValueError(f"training.per_arch.{arch}: " + str(error).replace(
                    "--set training.", f"--set training.per_arch.{arch}.")) from None
            if training.epochs == 0 and arch not in self.models.weights:
                raise ValueError(EPOCHS_ZERO_NEEDS_WEIGHTS.format(arch=arch))
        self.data.dataset_name  # a manifest folder whose name cannot be a folder name fails here
        chosen, known = self.mitigation.architectures, self.models.architectures
        if chosen is not None:
            unknown = [arch for arch in chosen if arch not in known]
            if unknown:
                raise ValueError(MITIGATE_UNKNOWN_ARCH.format(given=listed(chosen),
                                                              unknown=listed(unknown),
                                                              known=listed(known)))

    @property
    def run_dir(self) -> Path:
        return Path(self.results_dir) / self.run_name


def is_folder_name(name: str) -> bool:
    """True for a name that may become one folder: ``NAME``'s characters, not ``.`` or ``..``
    (which would write beside or into the parent), at most ``MAX_NAME_LENGTH`` characters."""
    return (bool(NAME.fullmatch(name)) and name not in (".", "..")
            and len(name) <= MAX_NAME_LENGTH)


def _shown(text: str, limit: int = 60) -> str:
    """``text``, cut to ``limit`` characters with its full length said, for a message."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


# ----------------------------------------------------------------------------- loading

def load_config(path: str | Path | None = None,
                overrides: typing.Sequence[str] = ()) -> ExperimentConfig:
    """Read a YAML config (or the defaults when ``path`` is None) and apply ``key=value``
    overrides."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist: pass --config with "
                                    "a YAML file, e.g. configs/config.yaml")
        raw = _read_yaml_file(path) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"config file {str(path)!r}: expected a YAML mapping at the top level")
    for override in overrides:
        _apply_override(raw, override)
    return _build(ExperimentConfig, raw, prefix="")


def _read_yaml_file(path: Path):
    data = path.read_bytes()
    try:
        return yaml.safe_load(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(NOT_UTF8_FILE.format(path=str(path), byte=hex(data[error.start]),
                                              offset=error.start)) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(BAD_YAML_FILE.format(path=str(path), where=where,
                                              problem=problem)) from None


def config_to_dict(cfg) -> dict:
    """Plain dict/list form of a config (tuples become lists), ready for YAML or JSON."""
    return _plain(dataclasses.asdict(cfg))


def save_config(cfg: ExperimentConfig, path: str | Path) -> Path:
    """Write the resolved config atomically; ``load_config(path)`` reproduces it."""
    from results import atomic_write_text  # results imports nothing heavy
    return atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def expand_method_specs(specs: typing.Iterable[Mapping]) -> list[dict]:
    """Expand sweep lists: ``{method: m, bits: [w8a8, w4a8]}`` → two single-valued specs."""
    expanded = []
    for spec in specs:
        keys = list(spec)
        choices = [v if isinstance(v, list) else [v] for v in spec.values()]
        for combo in itertools.product(*choices):
            expanded.append(dict(zip(keys, combo)))
    return expanded


def _apply_override(raw: dict, override: str) -> None:
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise ValueError(f"override {override!r}: expected key=value, e.g. training.epochs=2")
    node = raw
    *parents, leaf = key.strip().split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"override {override!r}: {part!r} is a value, not a section")
        node = child
    try:
        parsed = yaml.safe_load(value)
        node[leaf] = Typed(parsed, value.strip()) if _is_scalar(parsed) else parsed
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(BAD_YAML_OVERRIDE.format(override=override, value=value,
                                                  problem=problem)) from None


def _build(cls, raw: Any, prefix: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"{prefix.rstrip('.') or 'config'}={shown(raw)}: expected a mapping with "
                         f"keys {sorted(f.name for f in dataclasses.fields(cls))}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _check_known_keys(prefix.rstrip(".") or "config", raw, fields)
    hints = typing.get_type_hints(cls)
    values = {name: _coerce(f"{prefix}{name}", hints[name], value) for name, value in raw.items()}
    return cls(**values)


@dataclass(frozen=True)
class Typed:
    """A scalar given with ``--set``: YAML's reading of it and the text as typed. A setting that
    holds text takes the text (``data.positive=yes`` is ``'yes'``, not True; ``run_name=007``
    is ``'007'``); any other setting takes YAML's reading."""
    parsed: Any
    text: str


def _is_scalar(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _plain_values(value):
    """``value`` with every ``Typed`` replaced by YAML's reading (inside free-form mappings)."""
    if isinstance(value, Typed):
        return value.parsed
    if isinstance(value, Mapping):
        return {k: _plain_values(v) for k, v in value.items()}
    return value


def _coerce(key: str, kind, value):
    """Check ``value`` against the annotated type ``kind`` (lists become tuples)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    typed = None
    if isinstance(value, Typed):
        takes_text = kind is str or (origin in (typing.Union, types.UnionType) and str in args)
        typed = value.text
        if not takes_text and ":" in typed and isinstance(value.parsed, (int, float)):
            raise ValueError(f"{key}: {typed!r} reads as {value.parsed!r} (YAML counts a:b in base "
                             f"60); give a plain number, e.g. --set {key}=3")
        value = value.text if takes_text and value.text.lower() not in ("null", "~", "") \
            else value.parsed
    if dataclasses.is_dataclass(kind):
        return _build(kind, value, prefix=key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, inner[0], value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _type_error(key, value, "a list", typed)
        if args[0] is str:
            for item in value:
                if not isinstance(item, str):
                    raise _type_error(key, item, "a list of text")
        return tuple(_coerce(key, args[0], v) for v in value)
    if kind is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise _type_error(key, value, "a mapping", typed)
        return _plain_values(dict(value))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in (int, float, str, bool) and not (isinstance(value, kind) and
                                                 not (kind is int and isinstance(value, bool))):
        raise _type_error(key, value, EXPECTED[kind], typed)
    return value


EXPECTED = {int: "a whole number", float: "a number", str: "text", bool: "true or false"}
YAML_READINGS = ("YAML reads on/off/yes/no/true/false as true or false, null or ~ as nothing, 007 "
                 "as 7 and 12:30 as 750")


def _type_error(key, value, expected, typed: str | None = None) -> ValueError:
    """The value, what was typed when YAML read it as something else, what was expected and how
    to give it (quoted, for text)."""
    reading = f"{type(value).__name__}" if typed is None or typed == str(value) \
        else f"{type(value).__name__}, read from {typed!r}"
    if expected in ("text", "a list of text"):
        fix = (f"{YAML_READINGS}; quote text to keep it as typed, e.g. --set "
               f"'{key}=\"{typed or 'name'}\"'" if expected == "text" else
               f"{YAML_READINGS}; quote each name to keep it as typed, e.g. --set "
               f"'{key}=[\"on\", \"007\"]'")
    else:
        fix = f"fix it in the YAML file or with --set {key}=..."
    return ValueError(f"{key}={shown(value)} ({reading}): expected {expected}; {fix}")


def _check_known_keys(section: str, raw: Mapping, known) -> None:
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ValueError(f"unknown key(s) {listed(unknown)} in {section}; valid keys: "
                         f"{listed(sorted(known), limit=40)}")


def _check_method_specs(section: str, specs) -> None:
    for spec in specs:
        if not isinstance(spec, Mapping) or "method" not in spec:
            raise ValueError(f"{section}: entry {spec!r} has no 'method'; expected a mapping "
                             "such as {method: ptq_static, bits: [w8a8, w4a8]}")
        bits = spec.get("bits", [])
        for b in bits if isinstance(bits, list) else [bits]:
            parse_bits(b)


def _check_range(key, value, low, high, *, above: bool = False) -> None:
    """``value`` is a number (not a bool) with ``low <= value <= high`` (``low < value`` with
    ``above``); NaN and infinities are outside every range. Else a ValueError naming the key,
    the value, the range and how to set it."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and (low < value if above else low <= value) and value <= high:
        return
    kind = "whole number" if isinstance(high, int) else "number"
    bounds = f"greater than {low} and at most {high}" if above else f"from {low} to {high}"
    shown = _shown(repr(value)) if isinstance(value, str) else repr(value)
    raise ValueError(f"{key}={shown}: expected a {kind} {bounds}; fix it in the YAML file or "
                     f"with --set {key}=...")


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
