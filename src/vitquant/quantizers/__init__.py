"""Number formats. Each quantizer states ``max_levels``: the distinct values it can emit.

Importing this package registers every format's spec (:func:`make_spec` by kind).
"""

from vitquant.quantizers.adalog import AdaLogQuantizer, AdaLogSpec
from vitquant.quantizers.base import Quantizer, check_bits
from vitquant.quantizers.bitlog2 import BitLog2Quantizer, BitLog2Scheme, BitLog2Spec, parse_bitlog2
from vitquant.quantizers.log_sqrt2 import LogSqrt2Quantizer, LogSqrt2Spec
from vitquant.quantizers.ptf import PTFSpec
from vitquant.quantizers.spec import GRANULARITIES, QuantSpec, make_spec, register_spec, spec_kinds
from vitquant.quantizers.twin_uniform import TwinUniformSpec
from vitquant.quantizers.uniform import UniformQuantizer, UniformSpec

__all__ = [
    "AdaLogQuantizer",
    "AdaLogSpec",
    "TwinUniformSpec",
    "GRANULARITIES",
    "BitLog2Quantizer",
    "BitLog2Scheme",
    "BitLog2Spec",
    "LogSqrt2Quantizer",
    "LogSqrt2Spec",
    "PTFSpec",
    "QuantSpec",
    "Quantizer",
    "UniformQuantizer",
    "UniformSpec",
    "check_bits",
    "make_spec",
    "parse_bitlog2",
    "register_spec",
    "spec_kinds",
]
