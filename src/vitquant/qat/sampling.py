"""Which training images each process takes at each step, and which of them are flipped.

Every epoch is a seeded permutation of the ``n`` training images (``random.Random`` seeded with the
seed and the epoch). A step takes the next ``b · P`` images of it (``b`` per process, ``P`` processes;
an epoch has ⌊n / (b·P)⌋ steps, the rest of the permutation is dropped), and process ``r`` takes the
``r``-th run of ``b`` of them. Whether an image is flipped horizontally is drawn per step and position,
seeded likewise. Everything is a function of (seed, step), so a resumed run takes the same images
as an uninterrupted one, and ``P`` processes of ``b`` images take, together, the images one process of
``b·P`` would.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch


def epoch_order(count: int, seed: int, epoch: int) -> list[int]:
    """The permutation of ``range(count)`` of one epoch."""
    order = list(range(count))
    random.Random(f"vitquant-qat-order:{seed}:{epoch}").shuffle(order)
    return order


@dataclass(frozen=True)
class StepSampler:
    """The images of process ``rank`` of ``world_size`` at every step (see the module docstring)."""

    count: int  # training images
    batch_size: int  # per process
    seed: int = 0
    rank: int = 0
    world_size: int = 1

    @property
    def steps_per_epoch(self) -> int:
        return self.count // (self.batch_size * self.world_size)

    def batches(self, start: int, end: int) -> Iterator[list[int]]:
        """Image indices of steps ``start``..``end - 1`` (read lazily; one permutation per epoch)."""
        per_step, epoch, order = self.batch_size * self.world_size, -1, []
        for step in range(start, end):
            e, j = divmod(step, self.steps_per_epoch)
            if e != epoch:
                epoch, order = e, epoch_order(self.count, self.seed, e)
            first = j * per_step + self.rank * self.batch_size
            yield order[first:first + self.batch_size]

    def flips(self, step: int) -> torch.Tensor:
        """Which of this process's images of ``step`` are flipped (bool ``[batch_size]``, p = ½)."""
        rng = random.Random(f"vitquant-qat-flip:{self.seed}:{step}")
        drawn = [rng.random() < 0.5 for _ in range(self.batch_size * self.world_size)]
        first = self.rank * self.batch_size
        return torch.tensor(drawn[first:first + self.batch_size], dtype=torch.bool)


class LazyBatches:
    """``StepSampler.batches(start, end)`` as a re-iterable object (a DataLoader's batch sampler)."""

    def __init__(self, sampler: StepSampler, start: int, end: int) -> None:
        self.sampler, self.start, self.end = sampler, start, end

    def __iter__(self) -> Iterator[list[int]]:
        return self.sampler.batches(self.start, self.end)

    def __len__(self) -> int:
        return self.end - self.start
