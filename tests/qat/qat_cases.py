"""A tiny calibrated ViT with training images, and a trainer on it, shared by the QAT tests."""

from __future__ import annotations

import torch

from vitquant.calibration import quantize_model
from vitquant.qat import QATTrainer, TensorImages, TrainConfig
from vitquant.qconfig import QConfig


def calibrated_case(qconfig: QConfig) -> tuple:
    """(float model, calibration result, calibration images): the tiny ViT calibrated with ``qconfig`` on
    6 images; and 24 training images of 10 classes."""
    from conftest import images, make_vit

    torch.manual_seed(0)
    model = make_vit()
    calib = images(6, 32, seed=1)
    result = quantize_model(model, calib, qconfig)
    train = TensorImages(images(24, 32, seed=2), torch.arange(24) % 10)
    return model, result, calib, train


def make_trainer(case: tuple, **settings) -> QATTrainer:
    """A trainer on ``case`` (6 steps of 4 images, rates 1e-3, label weight 0.5 unless ``settings`` say otherwise)."""
    model, result, calib, train = case
    config = TrainConfig(**{"steps": 6, "batch_size": 4, "lr": 1e-3, "quant_lr": 1e-3, "label_weight": 0.5, **settings})
    return QATTrainer(model, result, train, config, calib)
