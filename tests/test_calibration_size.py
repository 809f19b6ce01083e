"""Calibration sets: with no size, the largest set of the kind asked for; a set that cannot keep
its composition warns; a too-large explicit size is named; the counts reach quant_info."""
import warnings

import numpy as np
import pytest
import torch

from datasets import make_loader, random_subset
from mitigation import (
    CALIBRATION_SIZE_TOO_LARGE,
    DEFAULT_CALIBRATION_SIZE,
    CalibrationWarning,
    FairnessAwareQuantizer,
    largest_calibration_size,
)
from models import build_model
from quantization import apply_quantization


@pytest.fixture(scope="module")
def fp32_model():
    torch.manual_seed(0)
    return build_model("tiny_cnn", num_classes=2, image_size=32).eval()


@pytest.fixture
def imbalanced_pool(tiny_synthetic_splits):
    """256 training samples whose groups are far from equal (the synthetic shares)."""
    subset = random_subset(tiny_synthetic_splits.train, 256, seed=0)
    counts = np.array(list(subset.group_counts().values()))
    assert counts.max() >= 2 * counts.min()
    return subset


def test_bias_aware_on_an_imbalanced_loader_is_balanced_and_differs_from_plain_ptq(
        fp32_model, imbalanced_pool):
    loader = make_loader(imbalanced_pool, batch_size=64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationWarning)  # no silent fallback, and no warning
        balanced = apply_quantization(fp32_model, method="bias_aware_calibration", bit_width=8,
                                      calibration_data=loader)
    plain = apply_quantization(fp32_model, method="PTQ_INT8", calibration_data=loader)
    counts = balanced.quant_info["calibration_group_counts"]
    assert max(counts.values()) - min(counts.values()) <= 1
    assert sum(counts.values()) == largest_calibration_size(imbalanced_pool, "balanced")
    assert balanced.quant_info["calibration"] == f"balanced-{sum(counts.values())}"
    images = next(iter(make_loader(imbalanced_pool, batch_size=128)))[0]
    with torch.no_grad():
        assert not torch.equal(balanced(images), plain(images))


def test_a_size_that_cannot_be_balanced_warns_with_the_counts(fp32_model, imbalanced_pool):
    largest = largest_calibration_size(imbalanced_pool, "balanced")
    with pytest.warns(CalibrationWarning, match=f"allow at most {largest}"):
        quantized = apply_quantization(fp32_model, method="bias_aware_calibration", bit_width=8,
                                       calibration_data=make_loader(imbalanced_pool, 64),
                                       calibration_size=largest + 20)
    assert sum(quantized.quant_info["calibration_group_counts"].values()) == largest + 20


def test_largest_sizes_per_kind(imbalanced_pool):
    counts = np.array(list(imbalanced_pool.group_counts().values()))
    assert largest_calibration_size(imbalanced_pool, "random") == 256
    assert largest_calibration_size(imbalanced_pool, "balanced") == len(counts) * counts.min()
    enriched = largest_calibration_size(imbalanced_pool, "minority_enriched")
    assert largest_calibration_size(imbalanced_pool, "balanced") <= enriched <= 256


def test_an_explicit_calibration_size_over_the_data_names_the_option(fp32_model, imbalanced_pool):
    with pytest.raises(ValueError) as err:
        apply_quantization(fp32_model, method="bias_aware_calibration", bit_width=8,
                           calibration_data=make_loader(imbalanced_pool, 64), calibration_size=512)
    assert str(err.value) == CALIBRATION_SIZE_TOO_LARGE.format(
        n=512, available=256, kind="balanced", default=DEFAULT_CALIBRATION_SIZE)


def test_fairness_aware_quantizer_records_its_balanced_set(fp32_model, imbalanced_pool,
                                                           tiny_synthetic_splits):
    quantizer = FairnessAwareQuantizer(bit_width=8, max_dp_gap=1.0, progress=False, device="cpu")
    quantizer.quantize(fp32_model, make_loader(imbalanced_pool, 64),
                       validation_data=make_loader(tiny_synthetic_splits.val, 64))
    counts = quantizer.model.quant_info["calibration_group_counts"]
    assert max(counts.values()) - min(counts.values()) <= 1
    assert quantizer.model.quant_info["calibration"] == f"balanced-{sum(counts.values())}"
    with pytest.raises(ValueError, match="calibration_size=300 is larger than the 256 samples"):
        FairnessAwareQuantizer(bit_width=8, calibration_size=300, progress=False,
                               device="cpu").quantize(fp32_model, make_loader(imbalanced_pool, 64))
