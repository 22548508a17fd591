"""Integer-only execution of quantized Vision Transformers.

- :mod:`~vitquant.integer.fileformat`: the single-file container (``.vqm``) a quantized model is saved in.
"""

from vitquant.integer.fileformat import FORMAT_NAME, FORMAT_VERSION, read_vqm, write_vqm

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "read_vqm", "write_vqm"]
