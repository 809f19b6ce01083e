"""Calibration sets smaller than the default size are used whole; a too-large explicit size is named."""
import logging

import pytest
import torch

from datasets import make_loader, random_subset
from mitigation import (CALIBRATION_SIZE_TOO_LARGE, DEFAULT_CALIBRATION_SIZE,
                        FairnessAwareQuantizer)
from models import build_model
from quantization import apply_quantization


@pytest.fixture(scope="module")
def fp32_model():
    torch.manual_seed(0)
    return build_model("tiny_cnn", num_classes=2, image_size=32).eval()


@pytest.fixture
def small_calibration(tiny_synthetic_splits):
    subset = random_subset(tiny_synthetic_splits.train, 100, seed=0)
    assert len(subset) < DEFAULT_CALIBRATION_SIZE
    return make_loader(subset, batch_size=50)


def test_seed_style_bias_aware_call_uses_a_small_loader_whole(fp32_model, small_calibration, caplog):
    with caplog.at_level(logging.INFO, logger="mitigation"):
        quantized = apply_quantization(fp32_model, method="bias_aware_calibration", bit_width=8,
                                       calibration_data=small_calibration)
    assert "holds 100 samples, fewer than the default calibration size 512" in caplog.text
    assert quantized.quant_info["method"] in ("ptq_static", "bias_aware_calibration")


def test_an_explicit_calibration_size_over_the_data_names_the_option(fp32_model, small_calibration):
    with pytest.raises(ValueError) as err:
        apply_quantization(fp32_model, method="bias_aware_calibration", bit_width=8,
                           calibration_data=small_calibration, calibration_size=512)
    assert str(err.value) == CALIBRATION_SIZE_TOO_LARGE.format(
        n=512, available=100, default=DEFAULT_CALIBRATION_SIZE)


def test_fairness_aware_quantizer_uses_a_small_calibration_set_whole(fp32_model, small_calibration,
                                                                      tiny_synthetic_splits, caplog):
    quantizer = FairnessAwareQuantizer(bit_width=8, max_dp_gap=1.0, progress=False, device="cpu")
    with caplog.at_level(logging.INFO, logger="mitigation"):
        quantizer.quantize(fp32_model, small_calibration,
                           validation_data=make_loader(tiny_synthetic_splits.val, 64))
    assert "calibrating on all of them" in caplog.text
    assert quantizer.model.quant_info["calibration"] == "balanced-100"
    with pytest.raises(ValueError, match="calibration_size=300 is larger than the 100 samples"):
        FairnessAwareQuantizer(bit_width=8, calibration_size=300, progress=False,
                               device="cpu").quantize(fp32_model, small_calibration)
