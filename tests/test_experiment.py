import pytest

from config import load_config
from experiment import (
    _calibrations,
    check_calibration_sizes,
    check_config,
    configuration_id,
    methods_for,
)


def test_methods_for_keeps_specs_of_the_named_architectures_only():
    specs = [{"method": "mixed_precision", "bits": ["w8a8", "w4a8"], "arch": ["a", "b"]},
             {"method": "ptq_dynamic"}]
    assert methods_for("a", specs) == [("mixed_precision", {"bits": "w8a8"}),
                                       ("mixed_precision", {"bits": "w4a8"}), ("ptq_dynamic", {})]
    assert methods_for("c", specs) == [("ptq_dynamic", {})]


def test_configuration_id_names_everything_that_made_it():
    assert configuration_id("celeba", "resnet50", "ptq_static", "w4a8",
                            {"bits": "w4a8", "observer": "minmax", "fp32_layers": ["fc", "conv1"],
                             "max_steps": None}, "random-512", 0) == \
        "celeba/resnet50/ptq_static/w4a8/fp32_layers=fc+conv1/observer=minmax/calib=random-512/seed=0"
    assert configuration_id("s", "a", "m", "w8a8", {}, "balanced-64", 1, draw=2) == \
        "s/a/m/w8a8/calib=balanced-64/draw=2/seed=1"


def test_full_study_config_describes_more_than_sixty_quantization_configurations():
    cfg = load_config("configs/celeba_full.yaml")
    per_arch = sum(len(_calibrations(cfg, name))
                   for name, _ in methods_for("resnet50", cfg.quantization.methods))
    assert per_arch * len(cfg.models.architectures) >= 60


@pytest.mark.parametrize("overrides, fragment", [
    (["models.architectures=[resnet51]"], "models.architectures: unknown model 'resnet51'"),
    (["quantization.methods=[{method: ptq_magic}]"], "'ptq_magic' is not registered"),
    (["mitigation.methods=[{method: mixed_precision, criterion: best}]"], "criterion"),
    (["mitigation.methods=[{method: fairness_aware_quantizer, crit: dp_gap}]"],
     "unknown option 'crit' for method 'fairness_aware_quantizer'; valid options: "),
    (["mitigation.methods=[{method: fairness_aware_quantizer, criterion: best}]"], "criterion"),
    (["data.max_per_split=100", "quantization.calibration_sizes=[512]"],
     "quantization.calibration_sizes=512 is larger than data.max_per_split=100"),
    (["data.max_per_split=100", "quantization.calibration_sizes=[64]"],
     "mitigation.calibration_size=512 is larger than data.max_per_split=100"),
])
def test_names_and_sizes_are_checked_before_anything_runs(overrides, fragment):
    with pytest.raises(ValueError) as err:
        check_config(load_config(None, overrides))
    assert fragment in str(err.value)


def test_only_the_calibration_sizes_a_grid_uses_must_fit_the_train_split():
    dynamic_only = load_config(None, ["quantization.methods=[{method: ptq_dynamic}]",
                                      "quantization.calibration_sizes=[5000]",
                                      "mitigation.calibration_size=64"])
    check_calibration_sizes(dynamic_only, n_train=100)  # no calibrated quantization method
    with pytest.raises(ValueError, match="mitigation.calibration_size=64 is larger than the 50 "
                                         "training images of synthetic"):
        check_calibration_sizes(dynamic_only, n_train=50)
