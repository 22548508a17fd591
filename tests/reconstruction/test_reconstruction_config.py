"""Reconstruction settings: bad values are clear errors, image counts, the β schedule."""

from __future__ import annotations

import pytest

from vitquant.errors import ConfigError
from vitquant.reconstruction import ReconstructionConfig


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"iters": 0}, "--recon-iters must be a positive integer"),
        ({"iters": 2.5}, "--recon-iters must be a positive integer"),
        ({"batch_size": 0}, "--recon-batch-size must be a positive integer"),
        ({"images": 0}, "--recon-images must be at least 1"),
        ({"weight_lr": 0.0}, "weight_lr must be a finite number > 0"),
        ({"act_lr": float("nan")}, "act_lr must be a finite number > 0"),
        ({"drop_prob": 1.0}, "--qdrop must be in [0, 1)"),
        ({"warmup": 1.0}, "warmup must be in [0, 1)"),
        ({"beta": (20.0, 0.0)}, "beta must be two numbers > 0"),
        ({"loss": "l1"}, "unknown --recon-loss 'l1'; choose one of mse, fisher"),
    ],
)
def test_bad_settings_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        ReconstructionConfig(**options)


def test_image_count_defaults_to_every_image_up_to_1024_and_refuses_more_than_given():
    assert ReconstructionConfig().image_count(32) == 32
    assert ReconstructionConfig().image_count(5000) == 1024
    assert ReconstructionConfig(images=16).image_count(32) == 16
    with pytest.raises(ConfigError, match="only 32 calibration images; raise --calib-size"):
        ReconstructionConfig(images=64).image_count(32)


def test_beta_is_off_during_warmup_then_anneals_from_start_to_end():
    cfg = ReconstructionConfig(iters=100, warmup=0.2, beta=(20.0, 2.0))
    assert cfg.beta_at(0) is None and cfg.beta_at(19) is None
    assert cfg.beta_at(20) == 20.0
    assert cfg.beta_at(60) == pytest.approx(11.0)
    assert cfg.beta_at(99) == pytest.approx(2.0 + 18.0 / 80)
    assert cfg.to_dict()["beta"] == [20.0, 2.0]
