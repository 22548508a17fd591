"""Number formats. Each quantizer states ``max_levels``: the distinct values it can emit."""

from vitquant.quantizers.base import Quantizer, check_bits
from vitquant.quantizers.bitlog2 import BitLog2Quantizer, BitLog2Scheme, parse_bitlog2
from vitquant.quantizers.log_sqrt2 import LogSqrt2Quantizer
from vitquant.quantizers.uniform import UniformQuantizer

__all__ = [
    "BitLog2Quantizer",
    "BitLog2Scheme",
    "LogSqrt2Quantizer",
    "Quantizer",
    "UniformQuantizer",
    "check_bits",
    "parse_bitlog2",
]
