"""Training settings: validated on construction with the flag in the message; steps from epochs."""

from __future__ import annotations

import pytest

from vitquant.errors import ConfigError
from vitquant.qat import TrainConfig


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "--steps must be a positive integer, got 0"),
        ({"steps": 2.5}, "--steps must be a positive integer, got 2.5"),
        ({"epochs": -1}, "--epochs must be a positive integer, got -1"),
        ({"steps": 3, "epochs": 1}, "give --steps or --epochs, not both"),
        ({"batch_size": 0}, "--train-batch-size must be a positive integer"),
        ({"lr": -1e-4}, "--lr must be a finite number > 0, got -0.0001"),
        ({"lr": float("nan")}, "--lr must be a finite number > 0"),
        ({"quant_lr": 0.0}, "--quant-lr must be a finite number > 0, got 0.0"),
        ({"weight_decay": -0.1}, "--weight-decay must be a finite number >= 0"),
        ({"warmup": 1.0}, "--warmup must be a fraction of the steps in [0, 1), got 1.0"),
        ({"kd_weight": -1.0}, "--kd-weight must be a finite number >= 0"),
        ({"kd_weight": 0.0, "dgd_weight": 0.0}, "nothing to train on"),
        ({"temperature": 0.0}, "--temperature must be a finite number > 0"),
        ({"checkpoint_every": 5}, "--checkpoint-every needs --checkpoint FILE"),
        ({"resume": True}, "--resume needs --checkpoint FILE"),
    ],
)
def test_bad_settings_are_refused_with_the_flag_named(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        TrainConfig(**kwargs)


def test_checkpoint_that_is_a_directory_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        TrainConfig(checkpoint=tmp_path)


def test_total_steps_from_steps_or_epochs_and_too_few_images():
    assert TrainConfig(steps=7, batch_size=4).total_steps(10) == 7
    assert TrainConfig(epochs=3, batch_size=4).total_steps(10) == 3 * 2  # the incomplete batch dropped
    assert TrainConfig(batch_size=4).total_steps(10) == 2  # neither: one epoch
    assert TrainConfig(epochs=1, batch_size=2).total_steps(10, world_size=2) == 2  # 4 images per step
    with pytest.raises(ConfigError, match=r"5 training images do not fill one step of 8 images \(--train-batch-size 4 x 2"):
        TrainConfig(steps=1, batch_size=4).total_steps(5, world_size=2)


def test_warmup_steps_and_what_a_resume_must_match(tmp_path):
    assert TrainConfig(warmup=0.1).warmup_steps(40) == 4
    assert TrainConfig(warmup=0.9).warmup_steps(1) == 0  # at most total - 1
    a = TrainConfig(steps=4, checkpoint=tmp_path / "a.pt", checkpoint_every=2)
    b = TrainConfig(steps=4, checkpoint=tmp_path / "b.pt", resume=True)
    assert a.resume_key() == b.resume_key()  # where and how often it is saved may change
    assert TrainConfig(steps=5).resume_key() != a.resume_key()
    assert a.to_dict()["checkpoint"] == str(tmp_path / "a.pt")
