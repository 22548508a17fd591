"""vitquant: post-training quantization of Vision Transformers.

Data flows one way: model + calibration images -> quantized model -> report.

- ``vitquant.quantizers``: number formats (uniform, log-sqrt2, BitLog2), each with a hard level bound.
- ``vitquant.search``: how their parameters are found from data (percentile/MSE, divisor search).
- ``vitquant.qconfig``: which quantizer goes at which quantization point (plain data).
- ``vitquant.nn``: quantizable layers and explicit quantization points.
- ``vitquant.models``: timm model names, weights, and one adapter per model family.
- ``vitquant.reparam``: RepQ-ViT post-LayerNorm scale reparameterization.
- ``vitquant.calibration``: the calibration pipeline.
- ``vitquant.data`` / ``vitquant.evaluation``: images in, accuracy and fidelity report out.
- ``vitquant.integer``: a calibrated model as an integer program; ``vitquant.load(path)`` runs a saved one.
"""

__version__ = "0.1.0"

from vitquant.errors import VitQuantError

__all__ = ["VitQuantError", "__version__", "load"]


def load(path, backend: str = "int", gemm: str = "float", strict: bool = True):
    """The integer model saved at ``path`` (``vitquant quantize --save``): ``model(images) -> logits``; the
    fast executor by default (``gemm="int"``: the strict int64 executor, the same integers)."""
    from vitquant.integer.execute import load as load_program

    return load_program(path, backend=backend, gemm=gemm, strict=strict)
