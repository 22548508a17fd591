"""Accuracy and fp-vs-quantized fidelity meters, accumulated batch by batch (vectorized).

Both merge exactly (:meth:`merge`): counts are integers, and the mean KL is the correctly rounded sum
(``math.fsum``) of the per-image float64 values, so it depends neither on how the images were batched
nor on how they were split over processes.
"""

from __future__ import annotations

import math

import torch

from vitquant.errors import NumericalError

__all__ = ["ClassificationMeter", "FidelityMeter"]


def _check_logits(logits: torch.Tensor, name: str) -> None:
    """Require a 2-D ``[B, C]`` tensor of finite values (raises ValueError / NumericalError)."""
    if logits.dim() != 2:
        raise ValueError(f"{name} must have shape [B, C], got {tuple(logits.shape)}")
    if logits.shape[1] == 0:
        raise ValueError(f"{name} must have at least one class, got shape {tuple(logits.shape)}")
    finite_rows = torch.isfinite(logits).all(dim=1)
    bad = int((~finite_rows).sum())
    if bad:
        raise NumericalError(
            f"{name}: {bad} of {logits.shape[0]} rows contain NaN or inf values"
        )


def _percent(count: int, total: int) -> float:
    """``100 * count / total``; raises ValueError when nothing was accumulated."""
    if total == 0:
        raise ValueError("no images accumulated yet: call update() first")
    return 100.0 * count / total


class ClassificationMeter:
    """Running top-1 / top-5 accuracy over batches of logits and integer labels."""

    def __init__(self) -> None:
        self._images = 0
        self._top1_correct = 0
        self._top5_correct = 0

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add one batch: ``logits`` ``[B, C]``, ``labels`` ``[B]`` with class indices."""
        _check_logits(logits, "logits")
        if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
            raise ValueError(
                f"labels must have shape [{logits.shape[0]}] to match logits "
                f"{tuple(logits.shape)}, got {tuple(labels.shape)}"
            )
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
        if labels.numel() == 0:
            return
        num_classes = logits.shape[1]
        labels = labels.to(logits.device)
        if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
            raise ValueError(
                f"labels must lie in [0, {num_classes - 1}], "
                f"got range [{int(labels.min())}, {int(labels.max())}]"
            )
        k = min(5, num_classes)
        topk = logits.topk(k, dim=1).indices  # [B, k], sorted by score
        hits = topk == labels.unsqueeze(1)
        self._top1_correct += int(hits[:, 0].sum())
        self._top5_correct += int(hits.any(dim=1).sum())
        self._images += int(labels.shape[0])

    def merge(self, other: ClassificationMeter) -> None:
        """Add the counts of ``other`` (e.g. another process's share of the images)."""
        self._images += other._images
        self._top1_correct += other._top1_correct
        self._top5_correct += other._top5_correct

    @property
    def images(self) -> int:
        """Number of images accumulated so far."""
        return self._images

    @property
    def top1(self) -> float:
        """Top-1 accuracy in percent."""
        return _percent(self._top1_correct, self._images)

    @property
    def top5(self) -> float:
        """Top-5 accuracy in percent (top-``min(5, C)`` when there are fewer classes)."""
        return _percent(self._top5_correct, self._images)

    def to_dict(self) -> dict:
        """``{"images", "top1", "top5"}`` as plain Python numbers."""
        return {"images": self.images, "top1": self.top1, "top5": self.top5}


class FidelityMeter:
    """How closely quantized logits follow full-precision logits on the same images."""

    def __init__(self) -> None:
        self._images = 0
        self._agree = 0
        self._kl: list[torch.Tensor] = []  # per-image float64 values, on the CPU

    def update(self, fp_logits: torch.Tensor, q_logits: torch.Tensor) -> None:
        """Add one batch of paired ``[B, C]`` logits from the fp and the quantized model."""
        _check_logits(fp_logits, "fp_logits")
        _check_logits(q_logits, "q_logits")
        if fp_logits.shape != q_logits.shape:
            raise ValueError(
                f"fp_logits {tuple(fp_logits.shape)} and q_logits {tuple(q_logits.shape)} differ in shape"
            )
        q_logits = q_logits.to(fp_logits.device)
        self._agree += int((fp_logits.argmax(dim=1) == q_logits.argmax(dim=1)).sum())
        self._kl.append(_kl_per_row(fp_logits, q_logits).cpu())
        self._images += int(fp_logits.shape[0])

    def merge(self, other: FidelityMeter) -> None:
        """Add the image pairs of ``other`` (e.g. another process's share of the images)."""
        self._images += other._images
        self._agree += other._agree
        self._kl.extend(other._kl)

    @property
    def images(self) -> int:
        """Number of image pairs accumulated so far."""
        return self._images

    @property
    def top1_agreement(self) -> float:
        """Percent of images whose fp and quantized argmax classes are equal."""
        return _percent(self._agree, self._images)

    @property
    def mean_kl(self) -> float:
        """Mean over images of KL(softmax(fp) || softmax(q)) in nats: the correctly rounded sum of the
        per-image values divided by the number of images (independent of batching and merge order)."""
        if self._images == 0:
            raise ValueError("no images accumulated yet: call update() first")
        return math.fsum(torch.cat(self._kl).tolist()) / self._images

    def to_dict(self) -> dict:
        """``{"images", "top1_agreement", "mean_kl"}`` as plain Python numbers."""
        return {
            "images": self.images,
            "top1_agreement": self.top1_agreement,
            "mean_kl": self.mean_kl,
        }


def _kl_per_row(fp_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(fp) || softmax(q)) per row, computed in float64 from log-softmax."""
    log_p = torch.log_softmax(fp_logits.to(torch.float64), dim=1)
    log_q = torch.log_softmax(q_logits.to(torch.float64), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)
