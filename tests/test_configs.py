"""The shipped configs: configs/study.yaml keeps the old default grid unchanged, and the smaller
default keeps the study's shape (every architecture, phase, method and backend)."""
from pathlib import Path

import pytest

import experiment
import plants
import synthetic
from config import load_config

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ("resnet50", "mobilenet_v2", "efficientnet_b0", "vit_small", "squeezenet1_1")


def grid(cfg) -> set[tuple]:
    """(phase, arch, method, options) of every expanded method entry of a config."""
    cells = set()
    for phase in ("quantization", "mitigation"):
        for arch in cfg.models.architectures:
            for method, options in experiment.methods_for(arch, getattr(cfg, phase).methods):
                cells.add((phase, arch, method, tuple(sorted(options.items()))))
    return cells


def old_default_grid() -> set[tuple]:
    """The default grid before it moved to configs/study.yaml (commit 3b58551)."""
    cells = set()
    for arch in ARCHS:
        cells |= {("quantization", arch, "ptq_static", (("bits", b),))
                  for b in ("w8a8", "w4a8", "w2a8")}
        cells |= {("quantization", arch, "ptq_dynamic", ()),
                  ("quantization", arch, "qat", (("bits", "w8a8"),)),
                  ("quantization", arch, "qat", (("bits", "w4a8"),))}
        cells |= {("mitigation", arch, "bias_aware_calibration",
                   (("bits", b), ("calibration", k), ("calibration_size", 128)))
                  for b in ("w8a8", "w8a4") for k in ("balanced", "minority_enriched")}
    for arch in ("mobilenet_v2", "squeezenet1_1"):
        cells.add(("mitigation", arch, "fairness_finetune", (("bits", "w4a8"),)))
    squeeze = "squeezenet1_1"
    cells |= {("mitigation", squeeze, "mixed_precision", (("bits", "w4a8"), ("criterion", c)))
              for c in ("overall", "worst_group")}
    cells |= {("mitigation", squeeze, m, (("bits", "w4a8"),))
              for m in ("sensitive_layer_preservation", "fairness_aware_quantizer")}
    return cells


@pytest.fixture(scope="module")
def study():
    return load_config(ROOT / "configs" / "study.yaml")


@pytest.fixture(scope="module")
def default():
    return load_config(ROOT / "configs" / "config.yaml")


def test_the_study_config_is_the_old_default_grid(study):
    assert grid(study) == old_default_grid()
    assert study.models.architectures == ARCHS
    assert (study.quantization.calibration_sizes, study.mitigation.calibration_draws,
            study.data.synthetic.n_images, study.training.epochs) == ((512,), 5, 6000, 3)
    assert study.runtime.backends == ("torch", "onnxruntime", "openvino")


def test_the_default_keeps_the_study_shape(default, study):
    assert default.models.architectures == ARCHS
    methods = lambda cfg, phase: {cell[2] for cell in grid(cfg) if cell[0] == phase}  # noqa: E731
    for phase in ("quantization", "mitigation"):
        assert methods(default, phase) == methods(study, phase)
    static_bits = {dict(cell[3])["bits"] for cell in grid(default) if cell[2] == "ptq_static"}
    assert static_bits == {"w8a8", "w4a8", "w2a8"}
    assert set(default.runtime.backends) == {"torch", "onnxruntime", "openvino"}
    assert any(dict(cell[3]).get("bits", "").endswith("a4") for cell in grid(default)
               if cell[2] == "bias_aware_calibration")  # the composition study's cell


def test_the_default_judges_its_plant_in_a_cell_it_runs(default):
    w, a = plants.PLANT_BITS  # the study's random draws are static PTQ rows at these bits
    assert any(dict(cell[3]).get("bits") == f"w{w}a{a}" for cell in grid(default)
               if cell[2] == "bias_aware_calibration")


def test_the_default_data_plant_the_lighting_effect_alone(default):
    knobs = default.data.synthetic
    assert synthetic.planted_groups({"exposure": knobs.exposure})["lighting"] == "Female/Old"
    assert plants.lighting_verdict({"exposure": knobs.exposure}, "Female/Old") == "WORSE"
    assert set(knobs.cue_strength.values()) == {1.0}  # one cue: no second effect to confound it
