"""The eval transform comes from the model's timm pretrained config."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from PIL import Image

from vitquant.data import data_config, eval_transform, list_images
from vitquant.errors import ConfigError
from vitquant.paths import default_sample_images


@pytest.fixture(scope="module")
def deit():
    return timm.create_model("deit_tiny_patch16_224", pretrained=False)


def gradient_image(width=320, height=240) -> Image.Image:
    """A non-uniform image, so different crops give different tensors."""
    x = torch.linspace(0, 255, width).to(torch.uint8)
    y = torch.linspace(0, 255, height).to(torch.uint8)
    blue = torch.full((height, width), 60, dtype=torch.uint8)
    arr = torch.stack([x.expand(height, width), y[:, None].expand(height, width), blue], -1)
    return Image.fromarray(arr.numpy(), "RGB")


def test_data_config_from_model(deit):
    cfg = data_config(deit)
    assert cfg["input_size"] == (3, 224, 224)
    assert cfg["interpolation"] == "bicubic"
    assert cfg["mean"] == pytest.approx((0.485, 0.456, 0.406))
    assert cfg["std"] == pytest.approx((0.229, 0.224, 0.225))
    assert cfg["crop_pct"] == pytest.approx(deit.pretrained_cfg["crop_pct"])


def test_crop_pct_override(deit):
    assert data_config(deit, crop_pct=0.875)["crop_pct"] == 0.875
    assert data_config(deit, crop_pct=1)["crop_pct"] == 1.0
    resize = eval_transform(deit, crop_pct=0.875).transforms[0]
    assert resize.size == 256  # 224 / 0.875: the standard DeiT "resize 256, crop 224"


@pytest.mark.parametrize("crop_pct", [0, -0.5, 1.01, math.nan, "0.9", True])
def test_bad_crop_pct(deit, crop_pct):
    with pytest.raises(ConfigError, match="crop_pct"):
        data_config(deit, crop_pct=crop_pct)


def test_eval_transform_output(deit):
    image = gradient_image()
    tensor = eval_transform(deit)(image)
    assert tensor.shape == (3, 224, 224) and tensor.dtype == torch.float32
    assert tensor.mean().abs() < 3  # normalized, not 0..255
    assert not torch.equal(tensor, eval_transform(deit, crop_pct=0.5)(image))


def test_eval_transform_is_deterministic(deit):
    transform = eval_transform(deit)
    image = gradient_image()
    assert torch.equal(transform(image), transform(image))


@pytest.mark.real_model
def test_real_sample_transform(deit):
    root = default_sample_images()
    if root is None:
        pytest.skip("shared imagenet-sample folder not found")
    record = list_images(root)[0]
    with Image.open(record.path) as img:
        tensor = eval_transform(deit)(img.convert("RGB"))
    assert tensor.shape == (3, 224, 224) and tensor.dtype == torch.float32
    assert torch.isfinite(tensor).all()
