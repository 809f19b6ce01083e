import dataclasses

import pytest
import yaml

import config
from checks import BAD_BITS, NOT_A_CHOICE, check_choice
from config import (
    ExperimentConfig,
    config_to_dict,
    expand_method_specs,
    load_config,
    parse_bits,
    save_config,
)


def test_defaults_and_overrides_apply_with_types():
    cfg = load_config(None, ["training.epochs=2", "models.architectures=[resnet50, vit_small]",
                             "analysis.ci=0.9", "data.max_per_split=null"])
    assert cfg.training.epochs == 2
    assert cfg.models.architectures == ("resnet50", "vit_small")
    assert cfg.analysis.ci == 0.9
    assert cfg.data.max_per_split is None
    assert isinstance(cfg.training.lr, float)


def test_int_is_accepted_where_a_float_is_expected():
    assert load_config(None, ["training.lr=1"]).training.lr == 1.0


def test_unknown_key_names_it_and_lists_valid_ones():
    with pytest.raises(ValueError) as err:
        load_config(None, ["training.epoch=2"])
    message = str(err.value)
    assert "'epoch'" in message and "training" in message and "'epochs'" in message


def test_wrong_type_names_key_and_expected_type():
    with pytest.raises(ValueError, match=r"training.epochs='two' \(str\): expected a whole number"):
        load_config(None, ["training.epochs=two"])
    with pytest.raises(ValueError, match="runtime.progress=3 .*expected true or false"):
        load_config(None, ["runtime.progress=3"])


@pytest.mark.parametrize("override, fragment", [
    ("data.split_fractions=[0.5, 0.5, 0.5]", "sum to 1"),
    ("quantization.methods=[{method: ptq_static, bits: w3}]", "bits='w3'"),
    ("quantization.calibration_kinds=[stratified]",
     "calibration_kinds='stratified' is not supported; supported: random, balanced"),
    ("runtime.device=tpu", "runtime.device='tpu'"),
    ("analysis.ci=1.5", "analysis.ci=1.5"),
    ("run_name=a/b", "run_name='a/b'"),
    ("training.per_arch={vit_small: {lrr: 0.1}}", "training.per_arch.vit_small"),
    ("training", "expected key=value"),
])
def test_values_are_validated_where_they_enter(override, fragment):
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace("(", r"\(")):
        load_config(None, [override])


def test_missing_config_file_says_how_to_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="--config"):
        load_config(tmp_path / "nope.yaml")


def test_saved_config_reloads_to_the_same_tree(tmp_path):
    cfg = load_config(None, ["training.per_arch={vit_small: {lr: 0.0005}}", "seed=3"])
    path = save_config(cfg, tmp_path / "config.yaml")
    again = load_config(path)
    assert again == cfg
    assert yaml.safe_load(path.read_text())["seed"] == 3


def test_shipped_configs_load(tmp_path):
    for name in ["config", "smoke", "celeba_full"]:
        cfg = load_config(f"configs/{name}.yaml")
        assert isinstance(cfg, ExperimentConfig)
        assert config_to_dict(cfg)["run_name"]


def test_per_arch_overrides():
    cfg = load_config(None, ["training.per_arch={vit_small: {lr: 0.0005, epochs: 5}}"])
    assert cfg.training.for_arch("vit_small").lr == 0.0005
    assert cfg.training.for_arch("vit_small").epochs == 5
    assert cfg.training.for_arch("resnet50").lr == cfg.training.lr


def test_method_specs_expand_lists_into_a_product():
    specs = expand_method_specs([{"method": "ptq_static", "bits": ["w8a8", "w4a8"],
                                  "observer": ["minmax", "histogram"]},
                                 {"method": "ptq_dynamic"},
                                 {"method": "x", "fp32_layers": [["fc"]]}])
    assert len(specs) == 6
    assert {"method": "ptq_static", "bits": "w4a8", "observer": "histogram"} in specs
    assert specs[-1] == {"method": "x", "fp32_layers": ["fc"]}


def test_parse_bits():
    assert parse_bits("w4a8") == (4, 8)
    assert parse_bits(" W4A4 ") == (4, 4) and parse_bits(8) == (8, 8)
    with pytest.raises(ValueError) as error:
        parse_bits("int4")
    assert str(error.value) == BAD_BITS.format(bits="int4")
    with pytest.raises(ValueError) as error:
        parse_bits("w4a8x")
    assert str(error.value) == BAD_BITS.format(bits="w4a8x")


def test_check_choice_names_the_value_the_choices_and_the_owner():
    check_choice("observer", "minmax", ("minmax", "histogram"))
    with pytest.raises(ValueError) as error:
        check_choice("observer", "kl", ("minmax", "histogram"), owner="PTQStaticConfig")
    assert str(error.value) == NOT_A_CHOICE.format(name="observer", value="kl",
                                                   by=" by PTQStaticConfig",
                                                   choices="minmax, histogram")
    assert str(error.value) == ("observer='kl' is not supported by PTQStaticConfig; "
                                "supported: minmax, histogram")


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ExperimentConfig().seed = 1


def test_malformed_yaml_file_names_the_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("training:\n  epochs: [1\n  lr: 0.1\n")
    with pytest.raises(ValueError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"config file {str(path)!r} is not valid YAML (line ")
    assert "fix that line" in message


def test_config_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("run_name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="is not UTF-8 text .* save it as UTF-8"):
        load_config(path)


def test_malformed_yaml_in_an_override_names_the_override():
    with pytest.raises(ValueError, match=r"override 'training.epochs=\[1': the value '\[1' is not "
                                         "valid YAML"):
        load_config(None, ["training.epochs=[1"])


@pytest.mark.parametrize("overrides, fragment", [
    (["runtime.latency_warmup=-1"], "runtime.latency_warmup=-1: expected a whole number from 0"),
    (["quantization.methods=[]"], "quantization.methods is empty, so that phase would run nothing"),
    (["mitigation.methods=[]"], "mitigation.methods is empty"),
    (["quantization.seeds=[]"], "quantization.seeds=[] would leave the quantization grid empty"),
    (["quantization.calibration_kinds=[]"], "--set quantization.calibration_kinds=[random]"),
    (["models.architectures=[tiny_cnn]", "mitigation.architectures=[resnet50]"],
     "mitigation.architectures=['resnet50']: ['resnet50'] not in models.architectures"),
])
def test_settings_that_would_fail_late_are_refused_at_load(overrides, fragment):
    with pytest.raises(ValueError) as err:
        load_config(None, overrides)
    assert fragment in str(err.value)


# --------------------------------------------------------------------------- own data and models

@pytest.mark.parametrize("overrides, message", [
    (["data.dataset=mydata"],
     "data.dataset='mydata' is not supported; supported: synthetic, celeba"),
    (["data.dataset=manifest"], config.MANIFEST_NEEDS.format(
        key="manifest", why="the CSV that lists the images", example="path/to/metadata.csv")),
    (["data.dataset=manifest", "data.manifest=x/metadata.csv", "data.target=label"],
     "data.dataset=manifest needs data.sensitive"),
    (["data.manifest=x/metadata.csv"], "is set but data.dataset='synthetic'"),
    (["data.name=../up"], "data.name='../up': a dataset's name becomes a folder"),
    (["training.epochs=0"], config.EPOCHS_ZERO_NEEDS_WEIGHTS.format(arch="tiny_cnn")),
    (["models.weights={resnet18: w.pt}"], "models.weights names ['resnet18']"),
    (["models.architectures=[tiny_cnn, tiny_cnn]"], "names ['tiny_cnn'] more than once"),
    (["quantization.qat_epochs=0"], "quantization.qat_epochs=0: expected a whole number from 1"),
])
def test_own_data_and_model_settings_are_checked_at_load(overrides, message):
    with pytest.raises(ValueError) as err:
        config.load_config("configs/smoke.yaml", overrides)
    assert message in str(err.value)


def test_the_dataset_name_comes_from_data_name_or_the_manifest_folder(tmp_path):
    manifest = ["data.dataset=manifest", f"data.manifest={tmp_path}/my_faces/metadata.csv",
                "data.target=label", "data.sensitive=[skin]"]
    assert config.load_config("configs/smoke.yaml", manifest).data.dataset_name == "my_faces"
    named = config.load_config("configs/smoke.yaml", manifest + ["data.name=clinic"])
    assert named.data.dataset_name == "clinic"
    assert config.load_config("configs/smoke.yaml").data.dataset_name == "synthetic"
    with pytest.raises(ValueError, match="the manifest's folder name='my faces'"):
        config.load_config("configs/smoke.yaml", manifest[:1]
                           + [f"data.manifest={tmp_path}/my faces/m.csv"] + manifest[2:])


def test_epochs_zero_is_valid_with_weights_for_every_architecture():
    cfg = config.load_config("configs/smoke.yaml", ["training.epochs=0",
                                                    "models.weights={tiny_cnn: w.pt}"])
    assert cfg.training.epochs == 0 and cfg.models.weights == {"tiny_cnn": "w.pt"}


def test_a_text_setting_given_with_set_keeps_the_text_as_typed():
    cfg = config.load_config("configs/smoke.yaml", [
        "run_name=007", "data.name=on", "data.dataset=manifest", "data.manifest=x/m.csv",
        "data.target=label", "data.sensitive=[skin]", "data.positive=yes",
        "training.epochs=3", "models.weights.tiny_cnn=w.pt", "data.max_per_split=null"])
    assert (cfg.run_name, cfg.data.name, cfg.data.positive) == ("007", "on", "yes")
    assert cfg.training.epochs == 3 and cfg.data.max_per_split is None
    assert cfg.models.weights == {"tiny_cnn": "w.pt"}
    with pytest.raises(ValueError, match=r"training.epochs=True \(bool, read from 'yes'\): "
                                         "expected a whole number"):
        config.load_config("configs/smoke.yaml", ["training.epochs=yes"])


# ------------------------------------------------------------------ issue 25: bounds, names, typing

@pytest.mark.parametrize("override, fragment", [
    ("run_name=..", "run_name='..': the run's name becomes the folder"),
    ("run_name=.", "run_name='.':"),
    ("run_name=" + "r" * 300, "(300 characters)': the run's name becomes the folder"),
    ("data.name=..", "data.name='..': a dataset's name becomes a folder"),
    ("data.name=" + "d" * 101, "at most 100 characters"),
])
def test_names_that_would_leave_or_overflow_their_folder_are_refused(override, fragment):
    with pytest.raises(ValueError) as err:
        load_config("configs/smoke.yaml", [override])
    assert fragment in str(err.value) and len(str(err.value)) < 400
    assert "--set " in str(err.value)


@pytest.mark.parametrize("override, fragment", [
    ("analysis.bootstrap_resamples=1000000000000",
     "analysis.bootstrap_resamples=1000000000000: expected a whole number from 1 to 1000000"),
    ("seed=100000000000000000000", "seed=100000000000000000000: expected a whole number from 0 "
                                   "to 4294967295"),
    ("seed=-1", "seed=-1: expected a whole number from 0"),
    ("training.lr=.inf", "training.lr=inf: expected a number greater than 0.0"),
    ("training.lr=.nan", "training.lr=nan: expected a number greater than 0.0"),
    ("training.lr=0", "training.lr=0.0: expected a number greater than 0.0"),
    ("training.weight_decay=-1", "training.weight_decay=-1.0: expected a number from 0.0"),
    ("training.per_arch={tiny_cnn: {lr: .inf}}", "--set training.per_arch.tiny_cnn.lr=..."),
    ("training.max_steps_per_epoch=0", "training.max_steps_per_epoch=0"),
    ("data.batch_size=10000000",
     "data.batch_size=10000000: expected a whole number from 1 to 65536"),
    ("data.max_per_split=0", "data.max_per_split=0"),
    ("data.split_fractions=[.nan, 0.5, 0.5]", "data.split_fractions=[nan, 0.5, 0.5]"),
    ("data.synthetic.n_images=10000000000", "data.synthetic.n_images=10000000000"),
    ("data.synthetic.seed=-3", "data.synthetic.seed=-3"),
    ("quantization.seeds=[0, 5000000000]", "quantization.seeds=5000000000"),
    ("quantization.calibration_sizes=[0]", "quantization.calibration_sizes=0"),
    ("quantization.qat_lr=.inf", "quantization.qat_lr=inf"),
    ("quantization.qat_max_steps_per_epoch=0", "quantization.qat_max_steps_per_epoch=0"),
    ("mitigation.calibration_draws=100000", "mitigation.calibration_draws=100000"),
    ("mitigation.calibration_size=0", "mitigation.calibration_size=0"),
    ("analysis.size_budgets_mib=[.inf]", "analysis.size_budgets_mib=inf"),
    ("runtime.latency_repeats=1000000000", "runtime.latency_repeats=1000000000"),
    ("runtime.latency_batch_sizes=[0]", "runtime.latency_batch_sizes=0"),
    ("runtime.latency_warmup=10000000", "runtime.latency_warmup=10000000"),
])
def test_every_number_has_a_range_checked_at_load(override, fragment):
    with pytest.raises(ValueError) as err:
        load_config("configs/smoke.yaml", [override])
    assert fragment in str(err.value) and "--set " in str(err.value)


def test_every_numeric_setting_is_range_checked():
    """Each int or float field of the config tree is refused when far out of range."""
    import dataclasses
    import typing

    def numeric_keys(cls, prefix=""):
        for item in dataclasses.fields(cls):
            kind = typing.get_type_hints(cls)[item.name]
            if dataclasses.is_dataclass(kind):
                yield from numeric_keys(kind, f"{prefix}{item.name}.")
            elif {int, float} & {kind, *typing.get_args(kind),
                                 *(a for t in typing.get_args(kind) for a in typing.get_args(t))}:
                yield f"{prefix}{item.name}", kind
    keys = dict(numeric_keys(config.ExperimentConfig))
    assert len(keys) >= 30
    for key, kind in keys.items():
        listy = typing.get_origin(kind) is tuple or any(
            typing.get_origin(a) is tuple for a in typing.get_args(kind))
        value = "[1e30]" if listy else "1e30"
        if key == "data.split_fractions":
            value = "[1e30, 0.5, 0.5]"
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            load_config("configs/smoke.yaml", [f"{key}={value}"])


@pytest.mark.parametrize("override, fragment", [
    ("run_name=null", "run_name=None (NoneType, read from 'null'): expected text"),
    ("models.architectures=[on]", "quote each name to keep it as typed"),
    ("training.epochs=yes",
     "training.epochs=True (bool, read from 'yes'): expected a whole number"),
    ("training.epochs=12:30", "training.epochs: '12:30' reads as 750 (YAML counts a:b in base 60)"),
])
def test_a_value_of_the_wrong_type_shows_what_was_typed_and_how_to_give_it(override, fragment):
    with pytest.raises(ValueError) as err:
        load_config("configs/smoke.yaml", [override])
    assert fragment in str(err.value)


def test_long_lists_in_messages_are_shortened():
    names = ", ".join(f"arch{i}" for i in range(10_000))
    with pytest.raises(ValueError) as err:
        load_config("configs/smoke.yaml", [f"mitigation.architectures=[{names}]"])
    assert "… and 9990 more]" in str(err.value) and len(str(err.value)) < 600
    with pytest.raises(ValueError) as err:
        load_config("configs/smoke.yaml", ["data.dataset=" + "x" * 10_000])
    assert len(str(err.value)) < 300


def test_the_synthetic_seed_documented_in_docs_synthetic_md_is_a_setting():
    cfg = load_config("configs/smoke.yaml", ["data.synthetic.seed=7"])
    assert cfg.data.synthetic.seed == 7
    with pytest.raises(ValueError) as err:
        load_config("configs/smoke.yaml", ["data.synthetic.sed=7"])
    assert str(err.value).startswith("unknown key(s) ['sed'] in data.synthetic; valid keys")
