"""Block reconstruction as a pipeline stage after calibration: calibrated model -> reconstructed model.

The model adapter names the units (:meth:`~vitquant.models.adapters.base.ModelAdapter.reconstruction_units`):
the transformer blocks and Swin's patch merging, and with ``ends`` (the default) the patch embedding
before them and the head after them. They are reconstructed one by one, in order
(:func:`~vitquant.reconstruction.block.reconstruct_block`):

1. the first unit's input on the reconstruction images, in the quantized model (everything before it
   quantized) and in the full-precision model; with ``ends`` the images themselves;
2. per unit: the full-precision unit's output is the target (the patch embedding's: the first block's
   input with tokens and position embedding; the head's: the FP logits); the quantized unit is trained
   on its quantized input, hardened, and its output becomes the next unit's quantized input (so each
   unit sees the errors of the units before it, already reconstructed);
3. the levels every point uses are counted again on the reconstruction images.

With ``loss="fisher"`` each unit's squared error is weighted element by element by BRECQ's Fisher
approximation (:func:`~vitquant.reconstruction.fisher.fisher_weights`): the gradient of the KL
divergence from the FP logits, through the full-precision units after it (the head included, also
when ``ends`` is off), computed once per unit before it trains.

Without ``ends`` the patch embedding and the head keep their calibrated quantizers. The
calibrated model passed in is left untouched: the result holds a reconstructed copy, still a
"calibrated model" (ordinary fitted quantizers, level reports, integer conversion).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vitquant.calibration.passes import first_unit_input, forward_chunked
from vitquant.calibration.pipeline import CalibrationResult, check_images, recount
from vitquant.errors import ConfigError
from vitquant.models.adapters import adapter_for
from vitquant.reconstruction.block import CHUNK, BlockReport, reconstruct_block, trainable_layers
from vitquant.reconstruction.config import ReconstructionConfig
from vitquant.reconstruction.fisher import fisher_weights

log = logging.getLogger(__name__)


@dataclass
class ReconstructionResult:
    """The reconstructed model, its calibration result brought up to date (levels), and per block the
    error before and after."""

    model: nn.Module
    calibration: CalibrationResult  # of the reconstructed model: same config, points re-counted
    config: ReconstructionConfig
    images: int
    seconds: float
    blocks: list[BlockReport] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.config.to_dict(),
            "images": self.images,
            "seconds": self.seconds,
            "blocks": [b.to_dict() for b in self.blocks],
        }


def _fisher_tails(float_model: nn.Module, names: list[str]) -> list[list[nn.Module]]:
    """Per unit of ``names``: the full-precision units after it up to the logits (the head included)."""
    chain = adapter_for(float_model).reconstruction_units(float_model, True)
    order = [n for n, _ in chain]
    return [[unit for _, unit in chain[order.index(name) + 1:]] for name in names]


def reconstruct(
    float_model: nn.Module,
    calibrated: CalibrationResult,
    images: torch.Tensor,
    config: ReconstructionConfig | None = None,
    progress: bool = False,
) -> ReconstructionResult:
    """Reconstruct every unit of a copy of ``calibrated.model`` against ``float_model`` on ``images``
    (the first ``config.image_count`` of them; use calibration images, never evaluation ones)."""
    config = config or ReconstructionConfig()
    check_images(images, "reconstruction images")
    images = images[: config.image_count(images.shape[0])]
    start = time.perf_counter()
    qmodel = copy.deepcopy(calibrated.model).eval()
    qmodel.requires_grad_(False)
    float_model = float_model.eval()
    q_units = adapter_for(qmodel).reconstruction_units(qmodel, config.ends)
    f_units = adapter_for(float_model).reconstruction_units(float_model, config.ends)
    if not any(trainable_layers(unit) for _, unit in q_units):
        raise ConfigError("reconstruction needs uniformly quantized weights in the model's units; this model has none")
    if [n for n, _ in q_units] != [n for n, _ in f_units]:
        raise ConfigError("the float model's blocks do not match the calibrated model's")

    if config.ends:  # the first unit is the patch embedding: it takes the images
        x_q = x_f = images
    else:
        x_q = first_unit_input(qmodel, q_units, images, CHUNK)
        x_f = first_unit_input(float_model, f_units, images, CHUNK)
    tails = _fisher_tails(float_model, [n for n, _ in f_units]) if config.loss == "fisher" else None
    fp_logits = forward_chunked(float_model, images, CHUNK) if tails is not None else None
    blocks = []
    for i, ((name, q_unit), (_, f_unit)) in enumerate(zip(q_units, f_units)):
        target = forward_chunked(f_unit, x_f, CHUNK)
        weights = fisher_weights(q_unit, x_q, tails[i], fp_logits) if tails is not None else None
        report = reconstruct_block(q_unit, x_q, target, config, config.seed + i, name, progress, weights)
        log.info("%s: error %.4g -> %.4g (%.1f s)%s", name, report.loss_before, report.loss_after, report.seconds,
                 " (worse after hardening: calibrated quantizers kept)" if report.reverted else "")
        blocks.append(report)
        x_q, x_f = forward_chunked(q_unit, x_q, CHUNK), target
    del x_q, x_f

    refreshed = recount(calibrated, qmodel, list(images.split(CHUNK)), "reconstruction images")
    seconds = time.perf_counter() - start
    log.info("reconstructed %d units on %d images in %.1f s", len(blocks), images.shape[0], seconds)
    return ReconstructionResult(qmodel, refreshed, config, int(images.shape[0]), seconds, blocks)
