"""The notebook entry points stop bad arguments at the boundary, with the fix in the message."""

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from datasets import make_loader
from fairness_metrics import (
    BAD_IMAGE_SHAPE,
    META_DEVICE,
    NO_SENSITIVE_ATTR,
    NOT_A_LOADER,
    NOT_A_MODEL,
    compute_fairness_metrics,
)
from models import build_model


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model("tiny_cnn", num_classes=2, image_size=32)


@pytest.fixture
def test_loader(tiny_synthetic_splits):
    return make_loader(tiny_synthetic_splits.test, batch_size=32)


def test_a_model_that_is_not_a_module_is_a_type_error(test_loader):
    with pytest.raises(TypeError) as err:
        compute_fairness_metrics("m", test_loader)
    assert str(err.value) == NOT_A_MODEL.format(kind="str")


@pytest.mark.parametrize("wrong", ["list", "dataset"])
def test_a_list_or_a_dataset_instead_of_a_loader_is_a_type_error(model, tiny_synthetic_splits,
                                                                 wrong):
    data = tiny_synthetic_splits.test if wrong == "dataset" else [tiny_synthetic_splits.test[0]]
    with pytest.raises(TypeError) as err:
        compute_fairness_metrics(model, data)
    assert str(err.value) == NOT_A_LOADER.format(kind=type(data).__name__)
    assert "datasets.make_loader(dataset" in str(err.value)


@pytest.mark.parametrize("attr", [None, [], 5])
def test_no_sensitive_attribute_is_named_with_the_available_ones(model, test_loader, attr):
    with pytest.raises(ValueError) as err:
        compute_fairness_metrics(model, test_loader, sensitive_attr=attr)
    available = [c for c in test_loader.dataset.metadata.columns if c != "sample_id"]
    assert str(err.value) == NO_SENSITIVE_ATTR.format(attr=attr, available=available)


class _Gray(Dataset):
    """The synthetic test split with one-channel images (metadata kept)."""

    def __init__(self, base):
        self.base, self.metadata = base, base.metadata

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        image, *rest = self.base[i]
        return (image[:1], *rest)


def test_a_one_channel_batch_is_named_before_the_model_runs(model, tiny_synthetic_splits):
    loader = DataLoader(_Gray(tiny_synthetic_splits.test), batch_size=32)
    with pytest.raises(ValueError) as err:
        compute_fairness_metrics(model, loader)
    first = next(name for name, m in model.named_modules() if hasattr(m, "in_channels"))
    assert str(err.value) == BAD_IMAGE_SHAPE.format(shape=(1, 32, 32), layer=first, expected=3)


def test_a_meta_device_model_is_named(test_loader):
    with torch.device("meta"):
        model = build_model("tiny_cnn", num_classes=2, image_size=32)
    with pytest.raises(ValueError) as err:
        compute_fairness_metrics(model, test_loader)
    name = next(n for n, _ in model.named_parameters())
    assert str(err.value) == META_DEVICE.format(name=name)


def test_the_callers_model_mode_is_restored(model, test_loader):
    model.train()
    frozen = next(m for m in model.modules() if m is not model)
    frozen.eval()  # a submodule the caller keeps in eval mode
    result = compute_fairness_metrics(model, test_loader)
    assert 0 <= result["accuracy"] <= 1
    assert model.training and not frozen.training


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_the_callers_device_is_restored(model, test_loader):
    compute_fairness_metrics(model, test_loader, device="cuda")
    assert next(model.parameters()).device.type == "cpu"


def test_a_model_at_chance_gets_a_warning_by_the_analysis_rule(model, test_loader):
    from fairness_metrics import NotAboveChanceWarning

    with torch.no_grad():  # a constant model: balanced accuracy exactly 0.5
        for parameter in model.parameters():
            parameter.zero_()
    with pytest.warns(NotAboveChanceWarning, match="not clearly above chance"):
        metrics = compute_fairness_metrics(model, test_loader, sensitive_attr="gender")
    assert metrics["above_chance"] is False
    assert metrics["balanced_accuracy_low"] <= 0.5


# ----------------------------------------------------------------------------- apply_quantization

def test_apply_quantization_names_a_one_channel_calibration_batch(model, tiny_synthetic_splits):
    from quantization import apply_quantization

    loader = DataLoader(_Gray(tiny_synthetic_splits.train), batch_size=32)
    with pytest.raises(ValueError) as err:
        apply_quantization(model, "ptq_static", calibration_data=loader)
    first = next(name for name, m in model.named_modules() if hasattr(m, "in_channels"))
    assert str(err.value) == BAD_IMAGE_SHAPE.format(shape=(1, 32, 32), layer=first, expected=3)


def test_apply_quantization_names_a_meta_device_model(tiny_synthetic_splits):
    from quantization import apply_quantization

    with torch.device("meta"):
        model = build_model("tiny_cnn", num_classes=2, image_size=32)
    for method in ("ptq_static", "ptq_dynamic"):
        with pytest.raises(ValueError) as err:
            apply_quantization(model, method, calibration_data=make_loader(
                tiny_synthetic_splits.train, batch_size=32))
        assert str(err.value) == META_DEVICE.format(name=next(n for n,
                                                              _ in model.named_parameters()))


def test_apply_quantization_takes_a_loader_of_bare_image_tensors(model):
    from quantization import apply_quantization

    images = DataLoader(torch.randn(64, 3, 32, 32), batch_size=32)
    quantized = apply_quantization(model, "ptq_static", calibration_data=images)
    assert quantized(torch.zeros(2, 3, 32, 32)).shape == (2, 2)
