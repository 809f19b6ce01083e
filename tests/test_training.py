import math

import pytest
import torch
from torch.fx import symbolic_trace
from torch.utils.data import DataLoader

import models
from training import accuracy, fit, resolve_device, seed_everything


def separable(n=64, size=16, seed=0, flip=False):
    """Contract 4-tuples whose label is the sign of a shift in the red channel."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=generator)
    images = torch.randn(n, 3, size, size, generator=generator) * 0.5
    images[:, 0] += (labels.float() * 2 - 1)[:, None, None]
    shown = 1 - labels if flip else labels
    return [(images[i], int(shown[i]), i % 3, f"s{i}") for i in range(n)]


def loader(data, shuffle=False, batch_size=8):
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle)


def fresh_model(seed=0):
    seed_everything(seed)
    return models.build_model("tiny_cnn", image_size=16)


def test_fit_lowers_the_loss_and_learns_a_separable_task():
    model = fresh_model()
    result = fit(model, loader(separable(), shuffle=True), loader(separable(seed=1)), epochs=3,
                 lr=0.05, progress=False)
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < losses[0]
    assert result.best_val_accuracy > 0.9
    assert result.epochs_run == 3 and len(result.history) == 3 and result.train_time_s > 0
    assert not model.training


def test_same_seed_gives_identical_weights_and_another_seed_does_not():
    def train(seed):
        model = fresh_model()
        fit(model, loader(separable(), shuffle=True), epochs=2, lr=0.05, seed=seed,
            progress=False)
        return model.state_dict()

    first, again, other = train(0), train(0), train(1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_fit_leaves_global_random_state_and_threads_unchanged():
    model = fresh_model()
    torch.manual_seed(123)
    rng_before, threads_before = torch.get_rng_state(), torch.get_num_threads()
    fit(model, loader(separable(n=16), shuffle=True), epochs=1, lr=0.01, progress=False)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.get_num_threads() == threads_before


def test_loss_hook_sees_each_batch_and_its_loss_is_the_one_trained():
    data = separable(n=32)
    calls = []

    def plus_five(logits, targets, group_codes, base_loss):
        calls.append(group_codes.tolist())
        assert logits.shape == (len(targets), 2) and base_loss.ndim == 0
        return base_loss + 5.0

    plain, hooked = fresh_model(), fresh_model()
    plain_result = fit(plain, loader(data), epochs=1, lr=0.05, progress=False)
    hooked_result = fit(hooked, loader(data), epochs=1, lr=0.05, loss_hook=plus_five,
                        progress=False)
    assert calls == [[i % 3 for i in range(start, start + 8)] for start in range(0, 32, 8)]
    assert hooked_result.history[0]["train_loss"] == pytest.approx(
        plain_result.history[0]["train_loss"] + 5.0)
    # a constant does not change gradients; a penalty on the logits does
    assert all(torch.equal(v, hooked.state_dict()[k]) for k, v in plain.state_dict().items())
    penalised = fresh_model()
    fit(penalised, loader(data), epochs=1, lr=0.05, progress=False,
        loss_hook=lambda logits, targets, groups, base: base + logits.pow(2).mean())
    assert not torch.equal(penalised.classifier.weight, plain.classifier.weight)


def test_max_steps_caps_the_steps_of_each_epoch():
    steps = []
    fit(fresh_model(), loader(separable()), epochs=2, lr=0.01, max_steps=3, progress=False,
        loss_hook=lambda logits, targets, groups, base: steps.append(1) or base)
    assert len(steps) == 6


def test_model_ends_with_the_best_validation_weights():
    # Validation labels are flipped: the more the model learns, the worse it scores there.
    model = fresh_model()
    val = loader(separable(seed=1, flip=True))
    result = fit(model, loader(separable(), shuffle=True), val, epochs=4, lr=0.02,
                 progress=False)
    val_accuracies = [row["val_accuracy"] for row in result.history]
    assert result.best_epoch == 1 + val_accuracies.index(max(val_accuracies))
    assert result.best_epoch < 4
    assert accuracy(model, val) == result.best_val_accuracy


def test_schedules_and_optimizers():
    cosine = fit(fresh_model(), loader(separable(n=16)), epochs=2, lr=0.1, progress=False)
    constant = fit(fresh_model(), loader(separable(n=16)), epochs=2, lr=0.1, optimizer="sgd",
                   scheduler="none", progress=False)
    assert [row["lr"] for row in cosine.history] == pytest.approx([0.05, 0.0], abs=1e-12)
    assert [row["lr"] for row in constant.history] == [0.1, 0.1]
    assert constant.best_val_accuracy is None and constant.best_epoch == 2


def test_fit_trains_fx_graph_modules_such_as_prepared_qat_models():
    from torch.ao.quantization import get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    data = separable(n=32)
    traced = symbolic_trace(fresh_model())
    qat = prepare_qat_fx(fresh_model().train(), get_default_qat_qconfig_mapping("x86"),
                         (torch.zeros(1, 3, 16, 16),))
    for graph_module in (traced, qat):
        result = fit(graph_module, loader(data), loader(data), epochs=2, lr=0.05,
                     progress=False)
        assert accuracy(graph_module, loader(data)) == result.best_val_accuracy


@pytest.mark.parametrize("kwargs, message", [
    (dict(epochs=0), "epochs must be an int >= 1, got 0"),
    (dict(lr=0.0), "lr must be > 0, got 0.0"),
    (dict(optimizer="adam"), "unknown optimizer 'adam'; choose one of \\['adamw', 'sgd'\\]"),
    (dict(scheduler="step"), "unknown scheduler 'step'"),
    (dict(max_steps=0), "max_steps must be None or an int >= 1, got 0"),
    (dict(device="tpu"), "device must be 'auto', 'cpu' or 'cuda', got 'tpu'"),
])
def test_bad_fit_arguments_are_named(kwargs, message):
    arguments = dict(epochs=1, lr=0.01, progress=False) | kwargs
    with pytest.raises(ValueError, match=message):
        fit(fresh_model(), loader(separable(n=8)), **arguments)


def test_unusable_inputs_get_clear_errors():
    with pytest.raises(ValueError, match="train_loader yields no batches"):
        fit(fresh_model(), loader([]), epochs=1, lr=0.01)
    with pytest.raises(ValueError, match="batches must be \\(images, targets, group_codes"):
        fit(fresh_model(), loader([(torch.zeros(3, 16, 16), 0)] * 4), epochs=1, lr=0.01)
    with pytest.raises(FloatingPointError, match="loss is nan"):
        fit(fresh_model(), loader(separable(n=8)), epochs=1, lr=0.01, progress=False,
            loss_hook=lambda logits, targets, groups, base: base * math.nan)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_channels_last_trains_the_same_model_and_keeps_the_layout():
    import profiling
    profiling.reset()
    plain, last = fresh_model(), fresh_model()
    fit(plain, loader(separable()), epochs=1, lr=0.05, progress=False)
    fit(last, loader(separable()), epochs=1, lr=0.05, progress=False, channels_last=True)
    weight = last.features[0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    for a, b in zip(plain.state_dict().values(), last.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-4)
    steps = {row["step"]: row["count"] for row in profiling.table()}
    assert steps["training_step"] == 2 * len(loader(separable()))


def test_a_one_epoch_run_has_no_weights_to_choose_and_skips_validation():
    passes = []

    class Counting(list):
        def __iter__(self):
            passes.append(1)
            return super().__iter__()

    val = Counting(loader(separable(seed=1)))
    one = fit(fresh_model(), loader(separable()), val, epochs=1, lr=0.02, progress=False)
    assert passes == [] and one.best_val_accuracy is None and one.best_epoch == 1
    two = fit(fresh_model(), loader(separable()), val, epochs=2, lr=0.02, progress=False)
    assert len(passes) == 2 and two.best_val_accuracy is not None
