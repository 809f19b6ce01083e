"""Tests of the quantization engine on tiny models (tiny_cnn, tiny_vit) and toy data."""

import copy
import json
import math

import pytest
import torch
from torch import nn
from torch.ao.nn import quantized as nnq
from torch.ao.nn.quantized import dynamic as nnqd
from torch.utils.data import DataLoader, TensorDataset

import int8_kernels
import quantization
from models import build_model
from quantization import (
    PercentileObserver,
    PTQStaticConfig,
    apply_quantization,
    describe_quantized,
    latency_report,
    list_methods,
    method_config,
    packed_size_mib,
    prediction_agreement,
    quantizable_layers,
    register_method,
    weight_levels,
)
from training import fit

SIZE = 16


def toy_data(n=256, seed=0):
    """Images whose label is the sign of their mean brightness, as contract 4-tuples."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=generator)
    images = torch.randn(n, 3, SIZE, SIZE, generator=generator) * 0.5
    images += (labels.float() * 2 - 1).view(-1, 1, 1, 1) * 0.5
    return TensorDataset(images, labels, torch.zeros(n, dtype=torch.long), torch.arange(n))


def loader(dataset, batch_size=32, shuffle=False):
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                      generator=torch.Generator().manual_seed(0))


def loss(model, dataset):
    images, labels = dataset.tensors[:2]
    with torch.no_grad():
        return nn.functional.cross_entropy(model.eval()(images), labels).item()


@pytest.fixture(scope="module")
def data():
    return toy_data()


@pytest.fixture(scope="module")
def trained_cnn(data):
    """tiny_cnn trained a little on the toy task, so its predictions are not constant."""
    torch.manual_seed(0)
    model = build_model("tiny_cnn", image_size=SIZE)
    fit(model, loader(data, shuffle=True), epochs=3, lr=1e-2, device="cpu", progress=False)
    return model.eval()


def ptq(model, data, **options):
    return apply_quantization(model, calibration_data=loader(data), observer="minmax", **options)


# --------------------------------------------------------------------------- bit widths are real

@pytest.mark.parametrize("bits, max_levels", [("w4a8", 16), ("w2a8", 4)])
def test_low_bit_weights_have_at_most_2_to_the_bits_levels_per_channel(trained_cnn, data,
                                                                       bits, max_levels):
    model = ptq(trained_cnn, data, bits=bits)
    levels = weight_levels(model)
    assert model.quant_info["execution"] == "simulated"
    assert set(levels) == set(quantizable_layers(trained_cnn))
    assert max(levels.values()) <= max_levels
    # the 8-bit run of the same layers uses many more levels, so the limit is the bit width's
    int8_levels = weight_levels(ptq(trained_cnn, data, execution="simulated"))
    assert max(int8_levels.values()) > max_levels


def test_real_int8_is_made_of_integer_modules_with_at_most_256_levels(trained_cnn, data):
    model = ptq(trained_cnn, data)
    assert model.quant_info["execution"] == "real_int8"
    integer_layers = [m for m in model.modules() if isinstance(m, (nnq.Conv2d, nnq.Linear))]
    assert len(integer_layers) == len(quantizable_layers(trained_cnn))
    assert all(layer.weight().int_repr().dtype == torch.int8 for layer in integer_layers)
    assert 16 < max(weight_levels(model).values()) <= 256
    assert model.quant_info["layer_bits"] == {name: 8 for name in quantizable_layers(trained_cnn)}


def test_real_int8_agrees_with_its_simulated_twin(trained_cnn, data):
    real = ptq(trained_cnn, data)
    twin = ptq(trained_cnn, data, execution="simulated")
    predictions = real(data.tensors[0]).argmax(1)
    assert 0 < predictions.float().mean() < 1  # not a constant predictor: agreement means much
    assert prediction_agreement(real, twin, loader(data)) >= 0.99


def test_prediction_agreement_counts_equal_argmax(data):
    class Constant(nn.Module):
        def __init__(self, label):
            super().__init__()
            self.label = label

        def forward(self, images):
            return nn.functional.one_hot(torch.full((len(images),), self.label), 2).float()

    class Oracle(nn.Module):
        def forward(self, images):
            return nn.functional.one_hot((images.mean((1, 2, 3)) > 0).long(), 2).float()

    expected = (data.tensors[0].mean((1, 2, 3)) > 0).float().mean().item()
    assert prediction_agreement(Oracle(), Constant(1), loader(data)) == pytest.approx(expected)
    assert prediction_agreement(Constant(0), Constant(0), [data.tensors[0]]) == 1.0


# --------------------------------------------------------------------------- no side effects

def test_input_model_and_global_torch_state_are_left_unchanged(trained_cnn, data):
    before = {key: value.clone() for key, value in trained_cnn.state_dict().items()}
    engine, threads = torch.backends.quantized.engine, torch.get_num_threads()
    try:
        torch.backends.quantized.engine = "qnnpack"
        torch.set_num_threads(1)
        quantized = ptq(trained_cnn, data, threads=2)
        assert torch.backends.quantized.engine == "qnnpack"
        assert torch.get_num_threads() == 1
    finally:
        torch.backends.quantized.engine = engine
        torch.set_num_threads(threads)
    after = trained_cnn.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert quantized is not trained_cnn and not trained_cnn.training
    assert not hasattr(trained_cnn, "quant_info")


# --------------------------------------------------------------------------- per-layer control

def test_layer_bits_and_fp32_layers_take_effect(trained_cnn, data):
    model = ptq(trained_cnn, data, bits="w4a8", layer_bits={"features.0": 8},
                fp32_layers=["classifier"])
    info, levels = model.quant_info, weight_levels(model)
    assert info["layer_bits"] == {"features.0": 8, "features.3": 4, "features.6": 4}
    assert info["fp32_layers"] == ["classifier"]
    assert levels["features.0"] > 16 and levels["features.3"] <= 16
    assert "classifier" not in levels and type(model.classifier) is nn.Linear
    assert torch.equal(model.classifier.weight, trained_cnn.classifier.weight)


def test_fp32_layers_stay_float_in_a_real_int8_model(trained_cnn, data):
    model = ptq(trained_cnn, data, fp32_layers=["classifier"])
    assert model.quant_info["execution"] == "real_int8"
    assert type(model.classifier) is nn.Linear
    assert isinstance(dict(model.named_modules())["features.3"], nnq.Conv2d)
    assert model.quant_info["fp32_layers"] == ["classifier"]


def test_quantizable_layers_lists_conv_and_linear_modules_in_order(trained_cnn):
    assert quantizable_layers(trained_cnn) == ["features.0", "features.3", "features.6",
                                               "classifier"]


# --------------------------------------------------------------------------- sizes

def test_packed_size_matches_a_hand_count():
    model = nn.Sequential(nn.Conv2d(2, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(),
                          nn.Linear(16, 3))
    conv = 72 * 4 / 8 + 4 * 8            # 4-bit weights + scale and zero point per channel
    batch_norm = 4 * 4 * 4 + 8            # four float32 vectors + int64 num_batches_tracked
    linear_2bit = 48 * 2 / 8 + 3 * 8 + 3 * 4
    linear_fp32 = 48 * 4 + 3 * 4
    assert packed_size_mib(model, weight_bits=4, layer_bits={"3": 2}) * 2**20 == (
        conv + batch_norm + linear_2bit)
    assert packed_size_mib(model, weight_bits=4, fp32_layers=["3"]) * 2**20 == (
        conv + batch_norm + linear_fp32)


def test_simulated_size_counts_folded_batch_norm_and_no_quantizer_state(trained_cnn, data):
    model = ptq(trained_cnn, data, bits="w4a8")
    expected = 0
    for name in quantizable_layers(trained_cnn):
        weight = trained_cnn.get_submodule(name).weight
        # batch norm folds into a bias per output channel
        expected += math.ceil(weight.numel() / 2) + weight.shape[0] * (8 + 4)
    info = model.quant_info
    assert info["size_mib"] * 2**20 == expected
    assert info["compression"] == pytest.approx(info["fp32_size_mib"] / info["size_mib"])
    assert info["compression"] > 4
    with pytest.raises(ValueError, match="packed_size_mib is for float or simulated models"):
        packed_size_mib(ptq(trained_cnn, data))


# --------------------------------------------------------------------------- other methods

def test_qat_lowers_the_loss_and_int8_qat_converts_to_integer_modules(data):
    torch.manual_seed(0)
    model = build_model("tiny_cnn", image_size=SIZE)
    qat8 = apply_quantization(model, "QAT_INT8", train_loader=loader(data, shuffle=True),
                              epochs=2, lr=1e-2, progress=False)
    assert qat8.quant_info["execution"] == "real_int8"
    assert any(isinstance(m, nnq.Conv2d) for m in qat8.modules())
    assert loss(qat8, data) < loss(model, data) - 0.1
    assert qat8.quant_info["cost_s"] > 0


def test_low_bit_qat_gives_a_simulated_model_at_that_bit_width(data):
    model = build_model("tiny_cnn", image_size=SIZE)
    qat4 = apply_quantization(model, "QAT_INT4", train_loader=loader(data), epochs=1,
                              max_steps=2, progress=False)
    assert (qat4.quant_info["weight_bits"], qat4.quant_info["act_bits"]) == (4, 8)
    assert qat4.quant_info["execution"] == "simulated"
    assert max(weight_levels(qat4).values()) <= 16


def test_dynamic_quantizes_linear_layers_and_reports_the_rest_fp32(trained_cnn, data):
    model = apply_quantization(trained_cnn, "dynamic")
    info = model.quant_info
    assert isinstance(model.classifier, nnqd.Linear)
    assert info["execution"] == "real_int8" and info["layer_bits"] == {"classifier": 8}
    assert info["fp32_layers"] == ["features.0", "features.3", "features.6"]
    assert prediction_agreement(model, trained_cnn, loader(data)) >= 0.99


def test_real_int8_works_for_a_timm_vit():
    torch.manual_seed(0)
    model = build_model("tiny_vit", image_size=32).eval()
    images = torch.randn(32, 3, 32, 32)
    calibration = loader(TensorDataset(images))
    real = apply_quantization(model, calibration_data=calibration, observer="minmax")
    twin = apply_quantization(model, calibration_data=calibration, observer="minmax",
                              execution="simulated")
    info = real.quant_info
    assert info["execution"] == "real_int8" and info["fp32_layers"] == []
    linears = [m for m in real.modules() if isinstance(m, nnq.Linear)]
    assert len(linears) == sum(isinstance(m, nn.Linear) for m in model.modules())
    assert "scaled_dot_product_attention" in info["float_ops"]
    with torch.no_grad():
        logits, twin_logits = real(images), twin(images)
        tolerance = 0.02 * model(images).abs().max().item()
    assert (logits - twin_logits).abs().max().item() <= tolerance
    assert prediction_agreement(real, twin, calibration) >= 0.99


def test_percentile_observer_clips_outliers_that_minmax_keeps():
    values = torch.cat([torch.rand(100_000), torch.tensor([1000.0])])
    kwargs = dict(dtype=torch.quint8, quant_min=0, quant_max=255)
    percentile = PercentileObserver(percentile=99.9, **kwargs)
    percentile(values)
    scale, _ = percentile.calculate_qparams()
    minmax = torch.ao.quantization.MinMaxObserver(**kwargs)
    minmax(values)
    assert scale.item() * 255 < 1.5 < minmax.calculate_qparams()[0].item() * 255


def test_latency_report_compares_against_the_fastest_fp32(trained_cnn, data):
    report = latency_report(trained_cnn, ptq(trained_cnn, data), SIZE, batch_sizes=(1, 4),
                            threads=1, warmup=1, repeats=3)
    for n in (1, 4):
        assert report[f"fp32_reference_b{n}"] in ("torch_contiguous", "torch_channels_last")
        assert report[f"int8_form_b{n}"] in ("eager", "eager_channels_last", "traced_frozen")
        assert report[f"speedup_b{n}"] == pytest.approx(
            report[f"fp32_latency_ms_b{n}"] / report[f"latency_ms_b{n}"])
    assert report["execution"] == "real_int8"


class _Instant(nn.Module):
    """An 'FP32 runtime' that answers at once: the fastest candidate whatever the machine."""

    def forward(self, images):
        return torch.zeros(len(images), 2)


def test_latency_report_takes_another_runtimes_faster_fp32_and_given_references(trained_cnn,
                                                                               data):
    quantized = ptq(trained_cnn, data)
    report = latency_report(trained_cnn, quantized, SIZE, batch_sizes=(1,), threads=1,
                            warmup=1, repeats=3, fp32_models={"instant_fp32": _Instant()})
    assert report["fp32_reference_b1"] == "instant_fp32"
    given = latency_report(trained_cnn, quantized, SIZE, batch_sizes=(1,), threads=1, warmup=1,
                           repeats=3, reference={1: (123.0, "measured_before")})
    assert (given["fp32_latency_ms_b1"], given["fp32_reference_b1"]) == (123.0, "measured_before")


def test_traced_and_frozen_int8_gives_the_eager_logits_exactly(trained_cnn, data):
    quantized = ptq(trained_cnn, data)
    frozen = quantization.traced_and_frozen(quantized, SIZE)
    images = data.tensors[0][:16]
    with torch.no_grad():
        assert torch.equal(frozen(images), quantized(images))


# --------------------------------------------------------------------------- comparison API

def test_compare_quantization_methods_gives_a_tidy_table_csv_and_plot(tiny_synthetic_splits,
                                                                      tmp_path):
    from comparison import compare_quantization_methods
    from datasets import make_loader

    torch.manual_seed(0)
    model = build_model("tiny_cnn", image_size=32).eval()
    comparison = compare_quantization_methods(
        model, [("PTQ_INT8", {"observer": "minmax"}),
                {"method": "ptq_static", "bits": "w4a8", "observer": "minmax", "label": "w4"},
                "dynamic"],
        make_loader(tiny_synthetic_splits.test, 64), sensitive_attrs=["gender"],
        calibration_data=make_loader(tiny_synthetic_splits.train, 64), n_resamples=50)
    table = comparison.table
    assert table["label"].tolist() == ["fp32", "PTQ_INT8 observer=minmax", "w4", "dynamic"]
    assert table["execution"].tolist() == ["fp32", "real_int8", "simulated", "real_int8"]
    for metric in ("accuracy", "dp_gap"):
        assert (table[f"{metric}_low"] <= table[metric]).all()
        assert (table[metric] <= table[f"{metric}_high"]).all()
    assert table["size_mib"].iloc[2] < table["size_mib"].iloc[0]
    assert set(comparison.group_metrics["group"]) <= {"Male", "Female"}
    csv = comparison.save_to_csv(tmp_path / "comparison.csv")
    assert csv.read_text().splitlines()[0].startswith("label,")
    png = comparison.plot_comparison(tmp_path / "comparison.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_compare_checks_every_method_and_input_before_running_any(tiny_synthetic_splits,
                                                                   monkeypatch):
    import comparison
    from datasets import make_loader

    ran = []
    monkeypatch.setattr(comparison, "apply_quantization", lambda *a, **k: ran.append(a))
    monkeypatch.setattr(comparison.evaluation, "predict", lambda *a, **k: ran.append(a))
    model = build_model("tiny_cnn", image_size=32).eval()
    test = make_loader(tiny_synthetic_splits.test, 64)
    train = make_loader(tiny_synthetic_splits.train, 64)
    with pytest.raises(ValueError, match="'nope' is not registered"):
        comparison.compare_quantization_methods(model, ["PTQ_INT8", "nope"], test,
                                                calibration_data=train)
    with pytest.raises(ValueError, match="observr"):
        comparison.compare_quantization_methods(model, ["PTQ_INT8", ("PTQ_INT4", {"observr": 1})],
                                                test, calibration_data=train)
    with pytest.raises(ValueError) as err:
        comparison.compare_quantization_methods(model, ["PTQ_INT8", "QAT_INT8"], test,
                                                calibration_data=train)
    assert str(err.value) == comparison.MISSING_INPUT.format(
        methods=["QAT_INT8"], key="train_loader", example=comparison.INPUT_EXAMPLES["train_loader"])
    with pytest.raises(ValueError, match="calibration_data"):
        comparison.compare_quantization_methods(model, ["dynamic", "PTQ_INT4"], test)
    with pytest.raises(ValueError, match="val_loadr= is taken by none"):
        comparison.compare_quantization_methods(model, ["PTQ_INT8"], test, calibration_data=train,
                                                val_loadr=train)
    with pytest.raises(ValueError, match="sensitive_attrs \\['race'\\]"):
        comparison.compare_quantization_methods(model, ["PTQ_INT8"], test, calibration_data=train,
                                                sensitive_attrs=["race"])
    assert ran == []


def test_compare_hands_each_context_item_only_to_the_methods_that_take_it(monkeypatch):
    import comparison

    plan = comparison._plan(["PTQ_INT8", "QAT_INT4", {"method": "ptq_static", "bits": "w4a8"},
                             {"method": "ptq_static", "bits": "w4a8"}],
                            calibration_data="calib", context={"train_loader": "train"})
    assert [run.label for run in plan] == ["PTQ_INT8", "QAT_INT4", "ptq_static w4a8",
                                           "ptq_static w4a8 #2"]
    assert [run.context for run in plan] == [{}, {"train_loader": "train"}, {}, {}]


# --------------------------------------------------------------------------- registry

def test_configs_print_compare_and_round_trip_through_json():
    config = method_config("ptq_static", bits="w4a8", layer_bits={"b": 8, "a": 2},
                           fp32_layers=["c"], observer="percentile")
    assert (config.weight_bits, config.act_bits, config.bits) == (4, 8, "w4a8")
    restored = PTQStaticConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config and hash(restored) == hash(config)
    assert config.to_dict()["layer_bits"] == {"a": 2, "b": 8}
    assert "observer='percentile'" in repr(config)
    assert config != method_config("ptq_static", bits="w4a8")
    assert method_config("PTQ_INT4") == method_config("ptq_static", weight_bits=4, act_bits=8)


def test_builtin_methods_are_listed():
    assert {"ptq_static", "ptq_dynamic", "qat"} <= set(list_methods())


def test_plugins_load_on_first_need_with_no_import_time_cycle():
    """`import quantization` imports none of its plugins (they import it); a mitigation method's
    name, list_methods() or a plugin's name taken from quantization loads them. A fresh
    interpreter, since this test session may have imported mitigation already."""
    script = ("import sys\n"
              "import quantization\n"
              "print('at import:', 'mitigation' in sys.modules, 'comparison' in sys.modules)\n"
              "print('bits:', quantization.method_config('bias_aware').bits)\n"
              "from quantization import FairnessAwareQuantizer, compare_quantization_methods\n"
              "print('names:', FairnessAwareQuantizer.__module__, "
              "compare_quantization_methods.__module__)\n"
              "print('listed:', 'mixed_precision' in quantization.list_methods())\n")
    import subprocess
    import sys
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True).stdout
    assert "at import: False False" in output
    assert "bits: w8a8" in output
    assert "names: mitigation comparison" in output
    assert "listed: True" in output
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        quantization.nope


def test_a_registered_method_gets_a_copy_its_config_and_its_context(monkeypatch, trained_cnn):
    monkeypatch.setattr(quantization, "_METHODS", dict(quantization._METHODS))
    seen = {}

    class ToyConfig(quantization.QuantConfig):
        pass

    @register_method("toy", ToyConfig, context_keys=("note",))
    def toy(model, config, calibration_data, *, note=None, **context):
        seen.update(model=model, config=config, note=note, context=context)
        model.quant_info = describe_quantized(model, "simulated")
        return model

    result = apply_quantization(trained_cnn, "toy", note="hello", seed=3)
    assert seen["model"] is result and result is not trained_cnn
    assert seen["config"] == ToyConfig() and seen["note"] == "hello"
    assert seen["context"] == {"seed": 3}
    assert result.quant_info["fp32_layers"] == quantizable_layers(trained_cnn)
    with pytest.raises(ValueError, match="'toy' is already registered"):
        register_method("toy", ToyConfig, toy)


@pytest.mark.parametrize("method, options, message", [
    ("nope", {}, "'nope' is not registered; known methods: .*ptq_static"),
    ("ptq_static", {"bit_width": 16}, r"bit_width=16: expected an int from 2 to 8"),
    ("ptq_static", {"bit_width": 8.0}, r"bit_width=8\.0: expected an int from 2 to 8"),
    ("ptq_static", {"bits": "w9a8"}, "weight_bits=9 is not supported .* supported: 2, 3, 4, 5, 6, "
                                     "7, 8"),
    ("ptq_static", {"bits": "w8a2"}, "act_bits=2 is not supported .* supported: 4, 5, 6, 7, 8"),
    ("dynamic", {"bit_width": 4}, "weight_bits=4 is not supported by DynamicConfig; "
                                  "supported: 8"),
    ("ptq_static", {"observr": "minmax"}, "unknown option 'observr' for method 'ptq_static'; "
                                          "valid options: weight_bits, act_bits, observer"),
    ("ptq_static", {"observer": "kl"}, "observer='kl' is not supported .* minmax, "
                                       "moving_average, histogram, percentile"),
    ("ptq_static", {"bits": "int4"}, "bits='int4' is not of the form"),
    ("ptq_static", {"bits": "w4a8", "weight_bits": 4}, "either bits="),
    ("ptq_static", {"bits": "w4a8", "execution": "real_int8"},
     "execution='real_int8' needs 8-bit weights"),
    ("ptq_static", {"layer_bits": {"features.0": 9}}, r"layer_bits\['features.0'\]=9 is not "
                                                      "supported"),
    ("ptq_static", {"layer_bits": {"nope": 4}}, r"layer_bits names unknown layers \['nope'\]; "
                                                r"valid names .*\['features.0', 'features.3'"),
    ("ptq_static", {"fp32_layers": ["features.1"]}, r"fp32_layers names unknown layers "
                                                    r"\['features.1'\]"),
    ("ptq_static", {"layer_bits": {"classifier": 8}, "fp32_layers": ["classifier"]},
     "in both layer_bits and fp32_layers"),
    ("qat", {}, "method 'qat' needs train_loader"),
])
def test_bad_arguments_raise_errors_that_name_the_problem(trained_cnn, data, method, options,
                                                          message):
    with pytest.raises(ValueError, match=message):
        apply_quantization(trained_cnn, method, calibration_data=loader(data), **options)


@pytest.mark.parametrize("bit_width, expected", [(2, (2, 8)), (3, (3, 8)), (4, (4, 4)), (6, (6, 6)),
                                                  (8, (8, 8))])
def test_bit_width_k_means_k_bit_weights_and_k_or_8_bit_activations(trained_cnn, data, bit_width,
                                                                   expected):
    quantized = apply_quantization(trained_cnn, bit_width=bit_width, observer="minmax",
                                   calibration_data=loader(data))
    assert (quantized.quant_info["weight_bits"], quantized.quant_info["act_bits"]) == expected
    assert max(weight_levels(quantized).values()) <= 2 ** bit_width


def test_a_dataset_or_single_images_as_calibration_data_is_named(trained_cnn, data):
    with pytest.raises(ValueError, match="calibration_data is a TensorDataset .*make_loader"):
        apply_quantization(trained_cnn, calibration_data=data)
    with pytest.raises(ValueError, match=r"images of shape \(3, 16, 16\); expected batches"):
        apply_quantization(trained_cnn, calibration_data=[data.tensors[0][0]])


def test_bad_calibration_data_is_named(trained_cnn):
    with pytest.raises(ValueError, match="method 'ptq_static' needs calibration_data"):
        apply_quantization(trained_cnn)
    with pytest.raises(ValueError, match="calibration_data yielded no batches"):
        apply_quantization(trained_cnn, calibration_data=[])
    with pytest.raises(ValueError, match="a batch must be an image tensor"):
        apply_quantization(trained_cnn, calibration_data=[["not an image"]])
    with pytest.raises(ValueError, match="model must be a torch.nn.Module"):
        apply_quantization("resnet50")
    with pytest.raises(ValueError, match="threads must be None or an int >= 1, got 0"):
        apply_quantization(trained_cnn, calibration_data=[torch.zeros(1, 3, SIZE, SIZE)],
                           threads=0)
    with pytest.raises(ValueError, match="loader yielded no samples"):
        prediction_agreement(trained_cnn, trained_cnn, [])


def test_context_keys_name_each_methods_extra_arguments():
    assert {"train_loader", "val_loader", "device"} <= quantization.context_keys("qat")
    assert "train_loader" not in quantization.context_keys("PTQ_INT8")


def test_fbgemm_depthwise_conv_input_uses_7_bits_so_the_twin_matches():
    """The x86 engine runs convs with > 100 groups (MobileNet/EfficientNet depthwise) on fbgemm,
    whose int16 pair sums saturate on full-range u8 inputs: their inputs get 0..127."""
    torch.manual_seed(0)
    channels = 128
    model = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, groups=channels),
                          nn.Conv2d(channels, 4, 1)).eval()
    images = torch.rand(8, channels, 6, 6) * 4  # non-negative: zero point 0
    real = apply_quantization(model, calibration_data=[images], observer="minmax")
    twin = apply_quantization(model, calibration_data=[images], observer="minmax",
                              execution="simulated")
    assert ", 0, 127)" in twin.code  # the twin quantizes that input to 0..127
    with torch.no_grad():
        difference = (real(images) - twin(images)).abs().max().item()
    assert difference <= 1e-4  # full-range inputs gave ~0.3 (saturated int16 sums)


def test_fbgemm_depthwise_conv_input_is_clamped_to_7_bits_like_the_twin():
    """convert_fx quantizes to 0..255 whatever the observer's quant_max, so SiLU outputs above
    the (histogram-clipped) calibrated maximum reached fbgemm's depthwise kernel as 128..255 while
    the twin clamps them to 127 (EfficientNet, non-zero zero point). The real model clamps too."""
    torch.manual_seed(0)
    channels = 144
    model = nn.Sequential(nn.Conv2d(3, channels, 1), nn.SiLU(),
                          nn.Conv2d(channels, channels, 3, padding=1, groups=channels),
                          nn.Conv2d(channels, 4, 1)).eval()
    calibration = torch.randn(8, 3, 6, 6)
    real = apply_quantization(model, calibration_data=[calibration])
    twin = apply_quantization(model, calibration_data=[calibration], execution="simulated")
    with torch.no_grad():
        difference = (real(calibration * 3) - twin(calibration * 3)).abs().max().item()
    assert difference <= 1e-4  # unclamped: ~0.03


# --------------------------------------------------------------------------- ranges for this CPU

def _conv_stack():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(16, 32, 3), nn.ReLU(), nn.Conv2d(32, 8, 3)).eval()


@pytest.mark.parametrize("vnni, expected", [(True, "full"), (False, "reduced")])
def test_auto_activation_range_follows_the_kernels_of_the_cpu(monkeypatch, vnni, expected):
    """Without VNNI the int16 pair sums of u8 x s8 kernels saturate on 0..255 inputs, so 'auto'
    narrows every conv/linear input to 0..127; with VNNI it keeps 0..255. The twin follows."""
    for module in (quantization, int8_kernels):
        monkeypatch.setattr(module, "kernel_capability",
                            lambda: {"cpu_capability": "TEST", "vnni": vnni})
    model, images = _conv_stack(), torch.rand(8, 16, 8, 8) * 4
    twin = apply_quantization(model, calibration_data=[images], observer="minmax",
                              execution="simulated")
    levels = ", 0, 127)" if expected == "reduced" else ", 0, 255)"
    assert levels in twin.code
    assert twin.quant_info["activation_range"] == expected
    assert twin.quant_info["cpu_capability"] == "TEST"


@pytest.mark.parametrize("activation_range", ["full", "reduced"])
def test_a_forced_activation_range_is_what_the_twin_uses(activation_range):
    """Either CPU's choice can be forced; the twin then quantizes both conv inputs to it (0..255
    or 0..127), while the network's output keeps 0..255 (one fake_quantize call each)."""
    model, images = _conv_stack(), torch.rand(8, 16, 8, 8) * 4
    twin = apply_quantization(model, calibration_data=[images], observer="minmax",
                              execution="simulated", activation_range=activation_range)
    full, reduced = twin.code.count(", 0, 255)"), twin.code.count(", 0, 127)")
    assert (full, reduced) == ((3, 0) if activation_range == "full" else (1, 2))
    assert twin.quant_info["activation_range"] == activation_range


def test_the_reduced_range_runs_exactly_like_its_twin_on_any_cpu():
    """0..127 inputs cannot saturate int16 pair sums on any x86 CPU, so real INT8 and its twin
    compute the same logits (full range without VNNI differs by ~0.1 here)."""
    model, images = _conv_stack(), torch.randn(8, 16, 8, 8)
    options = dict(calibration_data=[images], observer="minmax", activation_range="reduced")
    real = apply_quantization(model, **options)
    twin = apply_quantization(model, execution="simulated", **options)
    with torch.no_grad():
        assert (real(images * 2) - twin(images * 2)).abs().max().item() <= 1e-4


class _PassThroughChains(nn.Module):
    """Conv inputs reached through pooling, flatten, dropout and identity, whose integer versions
    keep the producer's scale: the 7-bit range must be set (and clamped) at the producer."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3)
        self.pool, self.drop, self.norm = nn.AdaptiveAvgPool2d(1), nn.Dropout(0.1), nn.Identity()
        self.fc1, self.act, self.fc2 = nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 2)

    def forward(self, x):
        x = self.norm(self.drop(torch.flatten(self.pool(torch.relu(self.conv(x))), 1)))
        return self.fc2(self.norm(self.drop(self.act(self.fc1(x)))))


@pytest.mark.parametrize("observer", ["minmax", "histogram"])
def test_reduced_inputs_behind_pass_through_ops_match_the_twin(observer):
    torch.manual_seed(0)
    model, images = _PassThroughChains().eval(), torch.randn(16, 3, 8, 8)
    options = dict(calibration_data=[images], observer=observer, activation_range="reduced")
    real = apply_quantization(model, **options)
    twin = apply_quantization(model, execution="simulated", **options)
    with torch.no_grad():  # 3x the calibrated range: clamps, not only rounding, are compared
        difference = (real(images * 3) - twin(images * 3)).abs().max().item()
    # integer rounding in two layers: a few output steps; a missing clamp or a dropout quantized on
    # its own scale gave ~60
    assert difference <= 3.01 * real.fc2.scale


def test_dynamic_and_low_bit_activations_record_their_range(trained_cnn, data):
    assert apply_quantization(trained_cnn, "dynamic").quant_info["activation_range"] == "reduced"
    low = ptq(trained_cnn, data, bits="w4a4")
    assert low.quant_info["activation_range"] is None


def test_squeeze_excitation_gates_stay_float_in_both_executions():
    """EfficientNet's SE gates run in float (their rounding flipped 16% of its predictions);
    their convs are reported in fp32_layers, the convs around them are integer."""
    from torchvision.ops import SqueezeExcitation
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), SqueezeExcitation(16, 4), nn.Conv2d(16, 4, 3)).eval()
    images = torch.randn(8, 3, 10, 10)
    real = apply_quantization(model, calibration_data=[images], observer="minmax")
    twin = apply_quantization(model, calibration_data=[images], observer="minmax",
                              execution="simulated")
    for quantized in (real, twin):
        assert quantized.quant_info["fp32_layers"] == ["1.fc1", "1.fc2"]
    assert sum(isinstance(m, nnq.Conv2d) for m in real.modules()) == 2
    with torch.no_grad():
        largest = (real(images) - twin(images)).abs().max().item()
        assert largest <= 3.01 * real.get_submodule("2").scale


def test_a_config_instance_names_its_method_and_options_override_it(trained_cnn, data):
    by_name = apply_quantization(trained_cnn, "ptq_static", bits="w4a8", observer="minmax",
                                 calibration_data=loader(data))
    by_config = apply_quantization(trained_cnn, PTQStaticConfig(bits="w4a8", observer="minmax"),
                                   calibration_data=loader(data))
    assert by_config.quant_info.method == "ptq_static"
    assert by_config.quant_info.config == by_name.quant_info.config
    images = next(iter(loader(data)))[0]
    assert torch.equal(by_config(images), by_name(images))
    overridden = apply_quantization(trained_cnn, PTQStaticConfig(bits="w4a8"), weight_bits=8,
                                    act_bits=8, calibration_data=loader(data))
    assert (overridden.quant_info.weight_bits, overridden.quant_info.act_bits) == (8, 8)


def test_quant_info_is_read_only_and_replace_keeps_method_facts_apart(trained_cnn, data):
    info = apply_quantization(trained_cnn, calibration_data=loader(data),
                              execution="simulated").quant_info
    with pytest.raises(AttributeError):
        info.size_mib = 0.0
    changed = info.replace(size_mib=1.5, val_dp_gap=0.1)
    assert (changed.size_mib, changed["val_dp_gap"], info.extra) == (1.5, 0.1, {})
    assert changed.record()["val_dp_gap"] == 0.1 and "config" not in changed.record()
    with pytest.raises(KeyError):
        info["no_such_fact"]


def _plain_reference(model, data, bits):
    """The decomposed reference model as torch builds it, without this module's speed-ups."""
    first, batches = quantization._image_batches(loader(data), "calibration_data", "ptq_static")
    prepared = quantization.prepare_quantization(
        model.cpu(), PTQStaticConfig(bits=bits, observer="minmax"), first)
    quantization.calibrate(prepared, batches)
    prepared.apply(torch.ao.quantization.disable_observer)
    return quantization._convert_to_reference_decomposed_fx(prepared).eval()


@pytest.mark.parametrize("arch, bits", [("tiny_cnn", "w4a8"), ("tiny_cnn", "w8a4"),
                                        ("tiny_vit", "w4a4")])
def test_a_fast_simulated_model_computes_the_reference_bit_for_bit(data, arch, bits):
    torch.manual_seed(0)
    model = build_model(arch, image_size=SIZE).eval()
    fast = ptq(model, data, bits=bits)
    plain = _plain_reference(copy.deepcopy(model), data, bits)
    targets = {node.target for node in fast.graph.nodes}
    assert quantization._QUANTIZE not in targets and quantization._DEQUANTIZE not in targets
    assert quantization.fake_quantize in targets
    images = data.tensors[0][:64] * 3  # past the calibrated range too: the clamp must match
    with torch.inference_mode():
        assert torch.equal(fast(images), plain(images))


def test_a_cached_fake_quantized_weight_follows_an_in_place_change(trained_cnn, data):
    fast = ptq(trained_cnn, data, bits="w4a8")
    layer = next(m for m in fast.modules() if "get_weight" in m.__dict__)
    with torch.no_grad():  # where the cache is used
        before = layer.get_weight()
        assert layer.get_weight() is before
        layer.weight.mul_(-1)
        after = layer.get_weight()
        assert not torch.equal(after, before)
        assert torch.equal(after, type(layer).get_weight(layer))


def test_straight_through_fake_quantize_matches_torchs_values_and_gradients():
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 8, 5, 5, generator=generator) * 3).requires_grad_()
    scale, zero_point = torch.tensor([0.05]), torch.tensor([7], dtype=torch.int32)
    ours = quantization._StraightThrough.apply(x, scale, zero_point, 0, 15)
    theirs = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 15)
    assert torch.equal(ours, theirs)
    weights = torch.randn(x.shape, generator=generator)
    (ours_grad,) = torch.autograd.grad((ours * weights).sum(), x)
    (theirs_grad,) = torch.autograd.grad((theirs * weights).sum(), x)
    assert torch.equal(ours_grad, theirs_grad) and (ours_grad == 0).any()  # some were clamped


def test_qat_trains_to_the_same_weights_as_with_torchs_fake_quantize(monkeypatch):
    images = torch.randn(16, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(16) % 2

    def train():
        torch.manual_seed(0)
        prepared = quantization.prepare_quantization(build_model("tiny_cnn", image_size=SIZE),
                                                     quantization.QATConfig(bits="w8a4"),
                                                     images[:2], qat=True)
        optimizer = torch.optim.SGD(prepared.parameters(), lr=0.1)
        for _ in range(3):
            optimizer.zero_grad()
            nn.functional.cross_entropy(prepared(images), labels).backward()
            optimizer.step()
        return prepared.state_dict()

    ours = train()
    monkeypatch.setattr(quantization.StraightThroughFakeQuantize, "forward",
                        torch.ao.quantization.FakeQuantize.forward)
    theirs = train()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)
