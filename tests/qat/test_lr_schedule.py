"""The warm-up + cosine factor against its formula, written out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from vitquant.errors import ConfigError
from vitquant.qat import CosineWarmup


def test_values_of_a_short_schedule():
    """6 steps, 2 of warm-up: 1/3, 2/3, then ½(1 + cos(π·j/4)) for j = 0..3."""
    schedule = CosineWarmup(total=6, warmup=2)
    expected = [1 / 3, 2 / 3, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))]
    assert [schedule.factor(s) for s in range(6)] == pytest.approx(expected, abs=1e-15)


def test_without_warmup_the_cosine_starts_at_the_base_rate_and_stays_positive():
    schedule = CosineWarmup(total=100)
    factors = [schedule.factor(s) for s in range(100)]
    assert factors[0] == 1.0 and factors[50] == pytest.approx(0.5)
    assert all(a > b for a, b in zip(factors, factors[1:])) and factors[-1] > 0


def test_apply_sets_every_group_from_its_base_rate():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.AdamW([{"params": [params[0]], "lr": 1e-3}, {"params": [params[1]], "lr": 1e-1}])
    for group in opt.param_groups:
        group["base_lr"] = group["lr"]
    CosineWarmup(total=4, warmup=1).apply(opt, 0)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5e-3, 0.5e-1])


def test_bad_schedules_and_steps_are_refused():
    with pytest.raises(ConfigError, match="warm-up < steps"):
        CosineWarmup(total=3, warmup=3)
    with pytest.raises(ConfigError):
        CosineWarmup(total=0)
    with pytest.raises(ValueError, match="step 4 outside"):
        CosineWarmup(total=4).factor(4)
