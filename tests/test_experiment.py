from config import load_config
from experiment import _calibrations, configuration_id, methods_for


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
