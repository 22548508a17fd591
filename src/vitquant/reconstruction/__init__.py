"""Block reconstruction after calibration (BRECQ / QDrop): learned weight rounding and activation steps."""

from vitquant.reconstruction.block import BlockReport, TrainableBlock, block_error, reconstruct_block
from vitquant.reconstruction.config import ReconstructionConfig
from vitquant.reconstruction.stage import ReconstructionResult, reconstruct

__all__ = [
    "BlockReport",
    "ReconstructionConfig",
    "ReconstructionResult",
    "TrainableBlock",
    "block_error",
    "reconstruct",
    "reconstruct_block",
]
