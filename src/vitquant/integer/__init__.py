"""Integer-only execution of quantized Vision Transformers.

- :mod:`~vitquant.integer.program`: the integer program (ops over named integer tensors) and its file;
- :mod:`~vitquant.integer.ops`: the op set, written once for int64 and for its float64 twin;
- :mod:`~vitquant.integer.convert`: a calibrated ViT/DeiT -> integer program (dyadic requantization,
  integer kernels, integer residual stream, BitLog2 attn@v as shifted sums);
- :mod:`~vitquant.integer.convert_swin`: a calibrated Swin -> integer program (windows, shifts, relative
  position bias and shift mask on the q·kᵀ grid, patch merging, pooled head);
- :mod:`~vitquant.integer.conversion`: :func:`convert_model`, either family (imported lazily: it needs timm);
- :mod:`~vitquant.integer.exact`: the calibrated model switched to the program's arithmetic (its exact
  simulation, bit for bit; needs the model, so timm: not imported here);
- :mod:`~vitquant.integer.execute`: :class:`IntegerModel`, the strict integer executor (no timm);
- :mod:`~vitquant.integer.fileformat`: the single-file container (``.vqm``).
"""

from vitquant.integer.execute import IntegerModel, StrictModeError, load
from vitquant.integer.fileformat import FORMAT_NAME, FORMAT_VERSION, read_vqm, write_vqm
from vitquant.integer.program import PROGRAM_VERSION, IntegerProgram, Op

__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "PROGRAM_VERSION", "IntegerModel", "IntegerProgram", "Op",
    "StrictModeError", "convert_model", "load", "read_vqm", "write_vqm",
]


def __getattr__(name: str):
    """``convert_model`` on first use (conversion imports timm; running a program does not)."""
    if name == "convert_model":
        from vitquant.integer.conversion import convert_model

        return convert_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
