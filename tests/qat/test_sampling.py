"""The seeded order of training images: every image once per epoch, processes splitting one step's images."""

from __future__ import annotations

import torch

from vitquant.qat.sampling import LazyBatches, StepSampler


def test_each_epoch_takes_every_image_at_most_once_in_a_new_order():
    sampler = StepSampler(count=10, batch_size=3, seed=1)
    assert sampler.steps_per_epoch == 3
    batches = list(sampler.batches(0, 6))
    first, second = sum(batches[:3], []), sum(batches[3:], [])
    assert len(set(first)) == len(set(second)) == 9 and first != second  # one image left out per epoch


def test_two_processes_take_together_what_one_process_takes():
    one = StepSampler(count=20, batch_size=4, seed=3)
    two = [StepSampler(count=20, batch_size=2, seed=3, rank=r, world_size=2) for r in range(2)]
    for step, whole in enumerate(one.batches(0, 12)):
        parts = [next(iter(s.batches(step, step + 1))) for s in two]
        assert parts[0] + parts[1] == whole
        assert torch.equal(torch.cat([s.flips(step) for s in two]), one.flips(step))


def test_a_resumed_range_continues_the_same_order_and_seeds_differ():
    sampler = StepSampler(count=17, batch_size=4, seed=0)
    assert list(sampler.batches(0, 9))[5:] == list(LazyBatches(sampler, 5, 9))
    assert len(LazyBatches(sampler, 5, 9)) == 4
    assert list(StepSampler(count=17, batch_size=4, seed=1).batches(0, 4)) != list(sampler.batches(0, 4))
    flips = torch.stack([sampler.flips(s) for s in range(200)])
    assert 0.4 < flips.float().mean() < 0.6
