"""Number formats. Each quantizer states ``max_levels``: the distinct values it can emit.

Importing this package registers every format's spec (:func:`make_spec` by kind) and every quantizer
class (:func:`quantizer_from_state` by kind). ``Quantizer.to_integer`` gives a quantized tensor's integer
form (:class:`IntegerView`), ``Quantizer.state`` its fitted parameters as plain data (:class:`QuantizerState`),
:func:`summarize_state` those in short (reports, ``vitquant inspect``).
"""

from vitquant.errors import NotIntegerError
from vitquant.quantizers.adalog import AdaLogQuantizer, AdaLogSpec
from vitquant.quantizers.base import Quantizer, check_bits
from vitquant.quantizers.bitlog2 import BitLog2Quantizer, BitLog2Scheme, BitLog2Spec, parse_bitlog2
from vitquant.quantizers.fixed_point import FixedPointQuantizer, FixedPointSpec
from vitquant.quantizers.integer_view import IntegerView
from vitquant.quantizers.kernel_input import KERNEL_INPUT_BITS, KernelInputSpec
from vitquant.quantizers.log_sqrt2 import LogSqrt2Quantizer, LogSqrt2Spec
from vitquant.quantizers.ptf import PTFSpec
from vitquant.quantizers.spec import GRANULARITIES, QuantSpec, make_spec, register_spec, spec_kinds
from vitquant.quantizers.state import QuantizerState, quantizer_from_state, quantizer_kinds, register_quantizer
from vitquant.quantizers.summary import summarize_state
from vitquant.quantizers.twin_uniform import TwinGeluQuantizer, TwinSoftmaxQuantizer, TwinUniformSpec
from vitquant.quantizers.uniform import UniformQuantizer, UniformSpec

__all__ = [
    "AdaLogQuantizer",
    "AdaLogSpec",
    "TwinUniformSpec",
    "FixedPointQuantizer",
    "FixedPointSpec",
    "GRANULARITIES",
    "BitLog2Quantizer",
    "BitLog2Scheme",
    "BitLog2Spec",
    "IntegerView",
    "KERNEL_INPUT_BITS",
    "KernelInputSpec",
    "LogSqrt2Quantizer",
    "LogSqrt2Spec",
    "NotIntegerError",
    "PTFSpec",
    "QuantSpec",
    "Quantizer",
    "QuantizerState",
    "TwinGeluQuantizer",
    "TwinSoftmaxQuantizer",
    "UniformQuantizer",
    "UniformSpec",
    "check_bits",
    "make_spec",
    "parse_bitlog2",
    "quantizer_from_state",
    "quantizer_kinds",
    "register_quantizer",
    "register_spec",
    "spec_kinds",
    "summarize_state",
]
