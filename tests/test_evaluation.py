import itertools
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import evaluation
import models
from datasets import load_dataset, make_loader

COLUMNS = ["sample_id", "y_true", "y_pred", "score", "gender", "age", "group"]


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """The synthetic CelebA-format set, small: ~30 test images at 32 px."""
    root = tmp_path_factory.mktemp("data")
    return load_dataset("synthetic", root, image_size=32,
                        synthetic={"n_images": 200, "image_size": 32}).test


def red_minus_blue():
    """A fixed model whose logits are (0, mean red - mean blue): easy to predict by hand."""
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
    with torch.no_grad():
        model[2].weight.copy_(torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, -1.0]]))
        model[2].bias.zero_()
    return model


def test_predict_table_schema_values_and_join_on_sample_id(faces):
    # A shuffled loader: rows come out in another order than the metadata's.
    table = evaluation.predict(red_minus_blue().train(), make_loader(faces, 8, shuffle=True),
                               progress=False)
    assert list(table.columns) == COLUMNS
    assert len(table) == len(faces) and table["sample_id"].is_unique
    assert table["sample_id"].tolist() != faces.metadata["sample_id"].tolist()

    truth = faces.metadata.set_index("sample_id").loc[table["sample_id"]]
    for column in ("gender", "age", "group"):
        assert table[column].tolist() == truth[column].tolist()
    assert table["y_true"].tolist() == truth["target"].tolist()

    position = dict(zip(faces.metadata["sample_id"], range(len(faces))))
    images = torch.stack([faces[position[sid]][0] for sid in table["sample_id"]])
    margin = images[:, 0].mean((1, 2)) - images[:, 2].mean((1, 2))
    torch.testing.assert_close(torch.tensor(table["score"].to_numpy(), dtype=torch.float32),
                               torch.sigmoid(margin))
    assert table["y_pred"].tolist() == (margin > 0).long().tolist()


def test_predict_puts_the_model_in_eval_mode(faces):
    model = models.build_model("tiny_cnn", image_size=32).train()
    first = evaluation.predict(model, make_loader(faces, 8), progress=False)
    assert not model.training
    again = evaluation.predict(model, make_loader(faces, 4), progress=False)
    assert first["score"].tolist() == pytest.approx(again["score"].tolist(), abs=1e-6)


@pytest.mark.parametrize("name", models.list_models())
def test_every_architecture_predicts(faces, name):
    model = models.build_model(name, image_size=32)
    few = faces.subset(range(4))
    table = evaluation.predict(model, make_loader(few, 4), progress=False)
    assert table["sample_id"].tolist() == few.metadata["sample_id"].tolist()
    assert table["score"].between(0, 1).all() and set(table["y_pred"]) <= {0, 1}


def quantized_tiny_cnn(faces):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    images = torch.stack([faces[i][0] for i in range(8)])
    prepared = prepare_fx(models.build_model("tiny_cnn", image_size=32).eval(),
                          get_default_qconfig_mapping("x86"), (images,))
    prepared(images)
    return convert_fx(prepared)


def test_quantized_models_are_detected_and_run_on_cpu_whatever_was_asked(faces, monkeypatch):
    quantized = quantized_tiny_cnn(faces)
    assert evaluation.is_quantized(quantized)
    assert not evaluation.is_quantized(models.build_model("tiny_cnn"))
    # Pretend a GPU was asked for and found: the quantized model must still run on the CPU.
    monkeypatch.setattr(evaluation, "resolve_device", lambda device: torch.device("cuda"))
    table = evaluation.predict(quantized, make_loader(faces, 8), device="cuda", progress=False)
    assert len(table) == len(faces)


def test_predict_needs_dataset_metadata(faces):
    bare = [(torch.zeros(3, 32, 32), 0, 0, "a.jpg")] * 2
    with pytest.raises(ValueError, match="needs loader.dataset.metadata.*list has no such"):
        evaluation.predict(red_minus_blue(), DataLoader(bare, batch_size=2))

    few = faces.subset(range(4))
    few.metadata = few.metadata.drop(columns="age")
    with pytest.raises(ValueError, match="lacks columns \\['age'\\]"):
        evaluation.predict(red_minus_blue(), make_loader(few, 4))

    few = faces.subset(range(4))
    few.metadata = few.metadata.assign(sample_id=["x.jpg"] * 4)
    with pytest.raises(ValueError, match="duplicated sample_id values \\['x.jpg'\\]"):
        evaluation.predict(red_minus_blue(), make_loader(few, 4))


def test_measure_latency_is_positive_and_restores_threads_and_model():
    model = models.build_model("tiny_cnn", image_size=16).train()
    original = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        milliseconds = evaluation.measure_latency(model, 16, 2, threads=2, warmup=1, repeats=3)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(original)
    assert milliseconds > 0
    assert model.training and model.features[0].weight.is_contiguous()

    best, layout = evaluation.fp32_reference_latency(model, 16, warmup=1, repeats=3)
    assert best > 0 and layout in evaluation.LAYOUTS
    assert model.features[0].weight.is_contiguous()


@pytest.mark.parametrize("kwargs, message", [
    (dict(repeats=0), "repeats must be an int >= 1, got 0"),
    (dict(batch_size=0), "batch_size must be an int >= 1, got 0"),
    (dict(threads=0), "threads must be an int >= 1, got 0"),
])
def test_measure_latency_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        evaluation.measure_latency(models.build_model("tiny_cnn"), 16, **kwargs)


def test_model_size_counts_serialized_weights_and_shrinks_when_quantized():
    layer = nn.Sequential(nn.Linear(512, 512))
    fp32 = evaluation.model_size_mib(layer)
    assert 512 * 513 * 4 / 2**20 <= fp32 < 512 * 513 * 4 / 2**20 + 0.01
    int8 = torch.ao.quantization.quantize_dynamic(layer, {nn.Linear}, dtype=torch.qint8)
    assert evaluation.model_size_mib(int8) < 0.3 * fp32


def test_predict_needs_two_class_logits(faces):
    one_logit = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 1))
    with pytest.raises(ValueError, match=r"classes >= 2\) logits, got shape \(4, 1\)"):
        evaluation.predict(one_logit, make_loader(faces.subset(range(4)), 4), progress=False)


def test_median_interval_uses_order_statistics_at_95_percent():
    assert evaluation.median_interval(range(5)) is None  # 5 values cannot give 95%
    assert evaluation.median_interval([3, 1, 2, 6, 5, 4]) == (1, 6)
    # n = 20: P(Binomial(20, 1/2) <= 5) = 0.021 <= 0.025 < P(<= 6), so x(6) .. x(15)
    assert evaluation.median_interval(range(1, 21)) == (6, 15)


def fake_clock(monkeypatch, increments):
    """time.perf_counter advancing by ``increments`` (cycled) at each call."""
    ticks = itertools.accumulate(itertools.cycle(increments))
    monkeypatch.setattr(evaluation.time, "perf_counter", lambda: next(ticks))


def test_latency_repeats_stop_once_the_median_is_stable(monkeypatch):
    fake_clock(monkeypatch, [0.001])  # every run takes 1 ms
    stats = evaluation.latency_stats(models.build_model("tiny_cnn", image_size=16), 16,
                                     warmup=0, repeats=30)
    assert stats["repeats"] == evaluation.MIN_REPEATS and stats["stable"]
    assert stats["ci_low_ms"] == pytest.approx(1) and stats["ci_high_ms"] == pytest.approx(1)
    assert stats["latency_ms"] == pytest.approx(1)


def test_latency_repeats_stop_at_the_maximum_when_the_median_is_not_stable(monkeypatch):
    fake_clock(monkeypatch, [0.001, 0.002, 0.007])  # runs of 7, 2, 1, 7, 2, 1 ... ms
    model = models.build_model("tiny_cnn", image_size=16)
    unstable = evaluation.latency_stats(model, 16, warmup=0, repeats=9)
    assert unstable["repeats"] == 9 and not unstable["stable"]
    assert unstable["ci_low_ms"] == pytest.approx(1) and unstable["ci_high_ms"] == pytest.approx(7)
    few = evaluation.latency_stats(model, 16, warmup=0, repeats=3)
    assert few["repeats"] == 3 and math.isnan(few["ci_low_ms"]) and not few["stable"]
    with pytest.raises(ValueError, match="tolerance must be a fraction in \\(0, 1\\), got 3"):
        evaluation.latency_stats(model, 16, tolerance=3)


def test_cpu_load_says_how_busy_the_cpu_is():
    load = evaluation.cpu_load(sample_s=0.05)
    assert set(load) == {"load_avg_1m", "other_cores", "cpu_shared"}
    assert isinstance(load["cpu_shared"], bool) and load["load_avg_1m"] >= 0
    if not math.isnan(load["other_cores"]):
        assert load["cpu_shared"] == (load["other_cores"] >= evaluation.SHARED_CORES)
