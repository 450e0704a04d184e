"""Neural-network building blocks: the MLP classifier, QuantLinear (QAT), PackedLinear (inference), surgery."""

from qwave.nn.mlp import MLPClassifier
from qwave.nn.packed_linear import PackedLinear
from qwave.nn.quant_linear import QuantLinear
from qwave.nn.surgery import calibrate, pack_model, ptq, quantize_model

__all__ = ["MLPClassifier", "PackedLinear", "QuantLinear", "calibrate", "pack_model", "ptq", "quantize_model"]
