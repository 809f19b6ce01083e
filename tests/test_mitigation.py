import pandas as pd
import pytest
import torch

import mitigation as mit

# --------------------------------------------------------------------------- penalties

def test_dp_penalty_is_spread_of_group_mean_probability():
    probs = torch.tensor([0.9, 0.7, 0.2, 0.4])
    logits = torch.logit(probs)
    groups = torch.tensor([0, 0, 1, 1])
    assert mit.dp_penalty(logits, groups).item() == pytest.approx(0.8 - 0.3, abs=1e-6)
    two_class = torch.stack([torch.zeros(4), logits], dim=1)  # softmax over [0, z] = sigmoid(z)
    assert mit.dp_penalty(two_class, groups).item() == pytest.approx(0.5, abs=1e-6)


def test_eo_penalty_conditions_on_label():
    # Equal positive rate overall per group, but unequal within each label.
    probs = torch.tensor([0.9, 0.1, 0.5, 0.5])
    targets = torch.tensor([1, 0, 1, 0])
    groups = torch.tensor([0, 0, 1, 1])
    logits = torch.logit(probs)
    assert mit.dp_penalty(logits, groups).item() == pytest.approx(0.0, abs=1e-6)
    assert mit.eo_penalty(logits, targets, groups).item() == pytest.approx(0.4, abs=1e-6)


def test_penalty_single_group_is_zero_and_differentiable():
    logits = torch.randn(5, requires_grad=True)
    penalty = mit.dp_penalty(logits, torch.zeros(5, dtype=torch.long))
    penalty.backward()
    assert penalty.item() == 0.0 and logits.grad is not None


def test_penalty_rejects_multiclass_logits():
    with pytest.raises(ValueError, match="not binary"):
        mit.dp_penalty(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))


def test_loss_hook_rejects_bad_arguments():
    with pytest.raises(ValueError, match="penalty='xx' is not supported; supported: "):
        mit.fairness_loss_hook("xx", 1.0)
    with pytest.raises(ValueError, match="negative"):
        mit.fairness_loss_hook("dp", -1.0)


def _train_logistic(lam, penalty="dp", steps=300, seed=0):
    """Logistic regression on a task whose label rate differs by group and whose one feature leaks
    the group."""
    gen = torch.Generator().manual_seed(seed)
    n = 400
    groups = torch.randint(0, 2, (n,), generator=gen)
    targets = (torch.rand(n, generator=gen) < torch.where(groups == 1, 0.8, 0.2)).long()
    features = torch.stack([targets + 0.8 * torch.randn(n, generator=gen), groups.float()], dim=1)
    torch.manual_seed(seed)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    hook = mit.fairness_loss_hook(penalty, lam)
    for _ in range(steps):
        logits = model(features)
        loss = hook(logits, targets, groups, torch.nn.functional.cross_entropy(logits, targets))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        logits = model(features)
    return mit.dp_penalty(logits, groups).item(), mit.eo_penalty(logits, targets, groups).item()


def test_dp_penalty_lowers_dp_gap_on_planted_gap():
    dp_plain, _ = _train_logistic(lam=0.0)
    dp_fair, _ = _train_logistic(lam=5.0)
    assert dp_plain > 0.3
    assert dp_fair < 0.5 * dp_plain


def test_eo_penalty_lowers_eo_gap_on_planted_gap():
    _, eo_plain = _train_logistic(lam=0.0, penalty="eo")
    _, eo_fair = _train_logistic(lam=5.0, penalty="eo")
    assert eo_fair < 0.5 * eo_plain


# --------------------------------------------------------------------------- ranking and allocation

def _sensitivity(scores):
    return pd.DataFrame(
        [{"layer": layer, "bits": 4, "delta_loss": s, "delta_worst_group_loss": -s,
          "delta_dp_gap": 0.0}
         for layer, s in scores.items()]
    )


def test_rank_layers_by_criterion():
    table = _sensitivity({"a": 0.1, "b": 0.5, "c": 0.3})
    assert mit.rank_layers(table, "overall") == ["b", "c", "a"]
    assert mit.rank_layers(table, "worst_group") == ["a", "c", "b"]
    with pytest.raises(ValueError, match="criterion='loss' is not supported; supported: "):
        mit.rank_layers(table, "loss")


@pytest.mark.parametrize("budget", [8.0, 6.5, 5.0, 4.0])
def test_allocate_bits_meets_average_bit_budget_and_protects_sensitive_layer(budget):
    sizes = {"a": 1000, "b": 1000, "c": 2000}
    table = _sensitivity({"a": 0.01, "b": 0.9, "c": 0.02})
    bits = mit.allocate_bits(table, sizes, budget, choices=(8, 4))
    average = sum(sizes[k] * v for k, v in bits.items()) / sum(sizes.values())
    assert average <= budget + 1e-9
    assert set(bits) == set(sizes) and set(bits.values()) <= {8, 4}
    assert bits["b"] == max(bits.values())  # the fragile layer is the last to lose bits


def test_allocate_bits_lowers_every_layer_one_level_before_a_second():
    sizes = {"a": 1000, "b": 1000}
    table = _sensitivity({"a": 0.1, "b": 0.9})
    assert mit.allocate_bits(table, sizes, 4.0, choices=(8, 4, 2)) == {"a": 4, "b": 4}
    assert mit.allocate_bits(table, sizes, 3.0, choices=(8, 4, 2)) == {"a": 2, "b": 4}


def test_allocate_bits_mib_budget():
    sizes = {"a": 2**20, "b": 2**20}  # 1 MiB each at 8 bits
    table = _sensitivity({"a": 0.1, "b": 0.9})
    bits = mit.allocate_bits(table, sizes, 1.6, unit="mib")
    assert bits == {"a": 4, "b": 8}
    assert mit.weight_size_mib(bits, sizes) <= 1.6


def test_allocate_bits_impossible_budget_is_clear():
    table = _sensitivity({"a": 0.1})
    with pytest.raises(ValueError, match="cannot be met"):
        mit.allocate_bits(table, {"a": 100}, 2.0, choices=(8, 4))
    with pytest.raises(ValueError, match="no size"):
        mit.allocate_bits(table, {}, 8.0)
    with pytest.raises(ValueError, match="budget_unit='bytes' is not supported"):
        mit.allocate_bits(table, {"a": 100}, 8.0, unit="bytes")


# ---------------------------------------------------------------- engine-backed methods (tiny data)

import copy  # noqa: E402

import datasets  # noqa: E402
import models  # noqa: E402
import quantization  # noqa: E402
import training  # noqa: E402
from datasets import make_loader  # noqa: E402

# Smiling rate planted per group: the trained model inherits a large DP gap.
PLANTED_RATES = {"Female/Young": 0.9, "Male/Young": 0.5, "Male/Old": 0.1, "Female/Old": 0.5}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """~400 synthetic 32 px faces, skewed groups (default shares) and a planted label gap."""
    root = tmp_path_factory.mktemp("planted")
    return datasets.load_dataset("synthetic", root, image_size=32, seed=0,
                                 synthetic={"n_images": 400, "image_size": 32,
                                            "smiling_rate": PLANTED_RATES})


@pytest.fixture(scope="module")
def trained(planted):
    torch.manual_seed(0)
    model = models.build_model("tiny_cnn", image_size=32)
    training.fit(model, make_loader(planted.train, 64, shuffle=True), epochs=10, lr=0.01,
                 device="cpu", progress=False)
    return model.eval()


@pytest.fixture(scope="module")
def fragile(trained):
    """`trained` with features.3 made fragile: input channel 0 is dead (always 0), and features.3
    gives it a huge weight in every output channel. FP32 ignores it (0 x 1e4); per-channel 4-bit
    quantization rounds every other weight of the layer to 0."""
    model = copy.deepcopy(trained)
    with torch.no_grad():
        model.features[1].weight[0] = 0.0
        model.features[1].bias[0] = -1e3
        model.features[3].weight[:, 0] = 1e4
    return model


def _outputs(model, loader):
    with torch.no_grad():
        return torch.cat([model(images) for images, *_ in loader])


def test_balanced_draws_are_balanced_and_random_ones_follow_the_skew(planted):
    balanced = mit.calibration_draws(planted.train, 40, "balanced", draws=3, seed=0)
    randoms = mit.calibration_draws(planted.train, 40, "random", draws=3, seed=0)
    assert [sorted(d.group_counts().values()) for d in balanced] == [[10, 10, 10, 10]] * 3
    assert len({tuple(d.metadata["sample_id"]) for d in balanced}) == 3  # the draws differ
    for i, draw in enumerate(randoms):
        counts = draw.group_counts()
        assert sum(counts.values()) == 40 and len(set(counts.values())) > 1
        expected = datasets.random_subset(planted.train, 40, datasets.calibration_seed(0, i))
        assert list(draw.metadata["sample_id"]) == list(expected.metadata["sample_id"])


def test_bias_aware_calibration_calibrates_on_the_balanced_subset(planted, trained):
    loader = make_loader(planted.train, 64)
    aware = quantization.apply_quantization(trained, "bias_aware_calibration", 8, loader,
                                            calibration_size=40, seed=3, observer="minmax")
    balanced = make_loader(datasets.balanced_subset(planted.train, 40, 3), 64)
    same = quantization.apply_quantization(trained, "ptq_static", 8, balanced, observer="minmax")
    everything = quantization.apply_quantization(trained, "ptq_static", 8, loader,
                                                 observer="minmax")
    test = make_loader(planted.test, 64)
    assert torch.equal(_outputs(aware, test), _outputs(same, test))
    assert not torch.equal(_outputs(aware, test), _outputs(everything, test))
    assert aware.quant_info["method"] == "bias_aware_calibration"
    assert aware.quant_info["config"]["calibration_size"] == 40


def test_bias_aware_calibration_needs_group_metadata(trained):
    tensors = torch.utils.data.DataLoader(torch.randn(8, 3, 32, 32), batch_size=4)
    with pytest.raises(datasets.NotAGroupDataset,
                       match="calibration_data .*a `metadata` pandas DataFrame"):
        quantization.apply_quantization(trained, "bias_aware_calibration", 8, tensors)
    with pytest.raises(ValueError, match="calibration='stratified' is not supported"):
        quantization.apply_quantization(trained, "bias_aware_calibration", 8, tensors,
                                        calibration="stratified")


def test_layer_sensitivity_ranks_the_fragile_layer_first(planted, trained, fragile):
    evaluated = make_loader(planted.train, 64)
    calibration = make_loader(datasets.balanced_subset(planted.train, 40, 0), 64)
    table = mit.layer_sensitivity(fragile, None, 4, calibration, evaluated,
                                  progress=False).set_index("layer")
    fp32_accuracy = mit.evaluate_groups(trained, evaluated)["accuracy"]
    # FP32 still works: only quantization breaks it
    assert abs(table.attrs["reference"]["accuracy"] - fp32_accuracy) < 0.05
    assert list(table.index) == quantization.quantizable_layers(fragile)
    assert mit.rank_layers(table.reset_index(), "overall")[0] == "features.3"
    assert mit.rank_layers(table.reset_index(), "worst_group")[0] == "features.3"
    assert table.loc["features.3", "delta_loss"] > 0.1
    assert table.drop(index="features.3")["delta_loss"].abs().max() < 0.05
    with pytest.raises(ValueError, match="not quantizable layers"):
        mit.layer_sensitivity(fragile, ["features.1"], 4, calibration, evaluated)


def test_a_sensitivity_pass_on_the_same_model_and_data_is_made_once(planted, fragile, monkeypatch):
    evaluated = make_loader(planted.val, 64)
    calibration = make_loader(datasets.balanced_subset(planted.train, 40, 1), 64)
    first = mit.layer_sensitivity(fragile, None, 4, calibration, evaluated, progress=False)
    calls = []
    real = mit.apply_quantization
    monkeypatch.setattr(mit, "apply_quantization", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = mit.layer_sensitivity(fragile, None, 4, calibration, evaluated, progress=False)
    pd.testing.assert_frame_equal(first, again)
    assert calls == [] and again.attrs["reference"] == first.attrs["reference"]
    # other calibration data
    other = make_loader(datasets.balanced_subset(planted.train, 40, 2), 64)
    mit.layer_sensitivity(fragile, None, 4, other, evaluated, progress=False)
    assert len(calls) == len(quantization.quantizable_layers(fragile))


def test_mixed_precision_resolves_by_name_meets_budget_and_protects_fragile_layer(planted, fragile):
    calibration = make_loader(datasets.balanced_subset(planted.train, 40, 0), 64)
    quantized = quantization.apply_quantization(fragile, "mixed_precision", bits="w4a8",
                                                calibration_data=calibration,
                                                budget=6.0,
                                                eval_data=make_loader(planted.train, 64),
                                                progress=False)
    info = quantized.quant_info
    modules = dict(fragile.named_modules())
    sizes = {name: modules[name].weight.numel() for name in info["layer_bits"]}
    average = sum(sizes[k] * b for k, b in info["layer_bits"].items()) / sum(sizes.values())
    assert info["method"] == "mixed_precision" and info["execution"] == "simulated"
    assert set(info["layer_bits"]) == set(quantization.quantizable_layers(fragile))
    assert average <= 6.0 and info["layer_bits"]["features.3"] == 8
    assert 4 in info["layer_bits"].values()


def test_mixed_precision_fp32_head_keeps_only_the_classifier_float(planted, trained):
    calibration = make_loader(datasets.balanced_subset(planted.train, 40, 0), 64)
    quantized = quantization.apply_quantization(trained, "mixed_precision", bits="w4a8",
                                                calibration_data=calibration,
                                                fp32_head=True, choices=[4])
    assert quantized.quant_info["fp32_layers"] == ["classifier"]
    assert set(quantized.quant_info["layer_bits"].values()) == {4}
    with pytest.raises(ValueError, match="choices=9 is not supported"):
        quantization.method_config("mixed_precision", choices=[8, 9])


def test_sensitive_layer_preservation_keeps_the_fragile_layer_fp32(planted, fragile):
    calibration = make_loader(datasets.balanced_subset(planted.train, 40, 0), 64)
    quantized = quantization.apply_quantization(fragile, "sensitive_layer_preservation",
                                                bits="w4a8",
                                                calibration_data=calibration, preserve_count=1,
                                                eval_data=make_loader(planted.train, 64),
                                                progress=False)
    assert quantized.quant_info["fp32_layers"] == ["features.3"]
    with pytest.raises(ValueError, match="needs preserve_count or preserve_budget_mib"):
        quantization.method_config("sensitive_layer_preservation", preserve_count=None)


def test_choose_preserved_layers_respects_count_budget_and_harm():
    table = _sensitivity({"a": 0.5, "b": 0.3, "c": -0.1}).assign(params=[2**20, 1000, 1000])
    # keeping a at FP32 over 8 bits costs 3 MiB; a budget of 1 MiB skips it for b
    assert mit.choose_preserved_layers(table, "overall", count=5, budget_mib=1.0) == ["b"]
    assert mit.choose_preserved_layers(table, "overall", count=1) == ["a"]
    assert mit.choose_preserved_layers(table, "overall", count=5) == ["a", "b"]  # c does not hurt


def _finetuned_dp_gap(planted, trained, lam):
    train = make_loader(planted.train, 64, shuffle=True, seed=0)
    quantized = quantization.apply_quantization(trained, "fairness_finetune", 8, None,
                                                train_loader=train, lam=lam,
                                                epochs=3, lr=0.01, device="cpu", seed=0,
                                                progress=False)
    assert quantized.quant_info["method"] == "fairness_finetune"
    return mit.evaluate_groups(quantized, planted.train)["dp_gap"]


def test_fairness_finetune_penalty_lowers_the_dp_gap(planted, trained):
    plain, fair = _finetuned_dp_gap(planted, trained, 0.0), _finetuned_dp_gap(planted, trained, 5.0)
    assert plain > 0.3
    assert fair < plain - 0.1


def test_fairness_aware_quantizer_meets_a_generous_constraint(planted, trained):
    quantizer = mit.FairnessAwareQuantizer(bit_width=4, max_dp_gap=1.0, calibration_size=40,
                                           progress=False)
    model = quantizer.quantize(model=trained, calibration_data=planted.train,
                               validation_data=planted.val)
    assert quantizer.constraint_met is True and len(quantizer.history) == 1
    assert (quantizer.final_dp_gap == quantizer.history[0]["dp_gap"]
            == model.quant_info["val_dp_gap"])
    assert quantizer.gap_measured_on == "validation"
    assert model.quant_info["calibration"] == "balanced-40"
    report = quantizer.evaluate(make_loader(planted.test, 64))
    assert 0 <= report["dp_gap"] <= 1 and report["constraint_met"] is True


def test_fairness_aware_quantizer_reports_an_impossible_constraint(planted, trained, caplog):
    quantizer = mit.FairnessAwareQuantizer(bit_width=4, max_dp_gap=0.0, calibration_size=40,
                                           progress=False)
    model = quantizer.quantize(model=trained, calibration_data=planted.train)
    layers = quantization.quantizable_layers(trained)
    assert quantizer.fp32_metrics["dp_gap"] > 0.1
    assert quantizer.constraint_met is False and "cannot be met" in caplog.text
    assert quantizer.gap_measured_on == "calibration"
    # 4 -> 8 bits, then 8 bits -> FP32, layer by layer
    assert len(quantizer.history) == 1 + 2 * len(layers)
    assert sorted(quantizer.history[-1]["fp32_layers"]) == sorted(layers)
    assert quantizer.final_dp_gap == min(step["dp_gap"] for step in quantizer.history)
    assert model.quant_info["constraint_met"] is False


def test_fairness_aware_quantizer_without_constraint_only_calibrates(planted, trained):
    quantizer = mit.FairnessAwareQuantizer(bit_width=4, max_dp_gap=0.0, calibration_size=40,
                                           progress=False)
    quantizer.quantize(trained, planted.train, fairness_constraint=False,
                       validation_data=planted.val)
    assert quantizer.constraint_met is None and len(quantizer.history) == 1


def test_fairness_aware_quantizer_rejects_bad_input(planted, trained):
    with pytest.raises(ValueError, match=r"sensitive attributes \['race'\] are not in the dataset"):
        mit.FairnessAwareQuantizer(sensitive_attributes=["race"]).quantize(trained, planted.train)
    with pytest.raises(ValueError, match="max_dp_gap=-0.1"):
        mit.FairnessAwareQuantizer(max_dp_gap=-0.1)
    with pytest.raises(ValueError, match="weight_bits=9"):
        mit.FairnessAwareQuantizer(bit_width=9)
    with pytest.raises(ValueError, match="call quantize"):
        mit.FairnessAwareQuantizer().evaluate(planted.test)


def test_names_resolve_through_the_engine():
    assert {"bias_aware_calibration", "mixed_precision", "fairness_finetune",
            "sensitive_layer_preservation"} <= set(quantization.list_methods())
    import bnq
    assert bnq.FairnessAwareQuantizer is mit.FairnessAwareQuantizer
