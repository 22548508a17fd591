"""Calibration / evaluation split: a seeded calibration draw, never evaluated on."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

from vitquant.data.datasets import ImageRecord
from vitquant.errors import DataError

logger = logging.getLogger(__name__)


def _check_size(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{name} must be an integer, got {value!r}")
    return value


def split_calibration_eval(
    calib_records: Sequence[ImageRecord],
    eval_records: Sequence[ImageRecord],
    calib_size: int,
    eval_size: int | None,
    seed: int,
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Draw ``calib_size`` calibration records and return ``(calibration, evaluation)``.

    Calibration: ``calib_size`` records drawn without replacement by ``random.Random(seed)`` from
    ``calib_records`` sorted by path (so the draw depends only on the set of files and the seed), and
    returned sorted by path. Evaluation: ``eval_records`` in sorted order without any record whose
    resolved path was drawn for calibration; with ``eval_size``, a sample of that many drawn by the same
    seeded generator (after the calibration draw), returned sorted by path. The two are
    disjoint even when both come from the same folder.
    """
    if _check_size(calib_size, "calib_size") < 1:
        raise DataError(f"empty calibration set: calib_size must be at least 1, got {calib_size}")
    if eval_size is not None and _check_size(eval_size, "eval_size") < 1:
        raise DataError(f"empty evaluation set: eval_size must be at least 1 or None, got {eval_size}")
    pool = sorted(calib_records, key=lambda r: r.path)
    if calib_size > len(pool):
        raise DataError(
            f"calib_size {calib_size} is larger than the {len(pool)} calibration images available"
        )

    rng = random.Random(seed)
    calibration = sorted(rng.sample(pool, calib_size), key=lambda r: r.path)
    calib_paths = {r.path.resolve() for r in calibration}
    ordered_eval = sorted(eval_records, key=lambda r: r.path)
    evaluation = [r for r in ordered_eval if r.path.resolve() not in calib_paths]
    if not evaluation:
        raise DataError(
            f"evaluation set is empty after removing the {calib_size} calibration images "
            f"from {len(eval_records)} evaluation images"
        )
    if eval_size is not None:
        if eval_size > len(evaluation):
            logger.warning(
                "eval_size %d is more than the %d evaluation images left: using all of them",
                eval_size,
                len(evaluation),
            )
        else:  # a seeded sample across the whole set, not the first classes in path order
            evaluation = sorted(rng.sample(evaluation, eval_size), key=lambda r: r.path)
    logger.info("calibration: %d images (seed %s), evaluation: %d images", calib_size, seed, len(evaluation))
    return calibration, evaluation
