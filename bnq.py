"""The notebook API in one import, with every quantization method registered::

    import bnq
    quantized = bnq.apply_quantization(model, "bias_aware", calibration_data=loader)
    metrics = bnq.compute_fairness_metrics(quantized, test_loader, sensitive_attr=["gender", "age"])

``quantization`` holds the engine and its built-in methods; importing ``mitigation`` (as this
module does) registers the mitigation methods beside them.
"""
from comparison import QuantizationComparison, compare_quantization_methods
from fairness_metrics import compute_fairness_metrics
from mitigation import FairnessAwareQuantizer
from quantization import (
    SHORT_NAMES,
    apply_quantization,
    list_methods,
    method_config,
    register_method,
)

__all__ = ["FairnessAwareQuantizer", "QuantizationComparison", "SHORT_NAMES",
           "apply_quantization", "compare_quantization_methods", "compute_fairness_metrics",
           "list_methods", "method_config", "register_method"]
