"""Model names (short names of the experiments, timm names) and the family adapters."""

from __future__ import annotations

import pytest
import timm

from vitquant.errors import ConfigError
from vitquant.models import SHORT_NAMES, adapter_for, resolve_model_name

EXPECTED = {
    "vit_small": "vit_small_patch16_224",
    "vit_base": "vit_base_patch16_224",
    "deit_tiny": "deit_tiny_patch16_224",
    "deit_small": "deit_small_patch16_224",
    "deit_base": "deit_base_patch16_224",
    "swin_tiny": "swin_tiny_patch4_window7_224",
    "swin_small": "swin_small_patch4_window7_224",
}


@pytest.mark.parametrize("short", sorted(EXPECTED))
def test_short_names(short):
    assert resolve_model_name(short) == EXPECTED[short]
    assert timm.is_model(EXPECTED[short])


def test_short_name_table_is_exactly_the_seven_models():
    assert dict(SHORT_NAMES) == EXPECTED


def test_short_name_surrounding_whitespace_is_ignored():
    assert resolve_model_name("  deit_tiny\n") == "deit_tiny_patch16_224"


@pytest.mark.parametrize(
    "name", ["deit_tiny_patch16_224", "vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "deit_tiny_patch16_224.fb_in1k"]
)
def test_timm_names_pass_through(name):
    assert resolve_model_name(name) == name


@pytest.mark.parametrize("name", ["deit_huge_imaginary", "", "DeiT_Tiny", "resnet_tiny"])
def test_unknown_name_is_a_config_error(name):
    with pytest.raises(ConfigError, match="unknown model") as info:
        resolve_model_name(name)
    assert "deit_tiny" in str(info.value)  # the message lists the short names


def test_adapter_for_vit_deit_and_swin(tiny):
    families = {kind: adapter_for(tiny.model(kind)).family for kind in tiny.kinds}
    assert "vit" in families["vit"] and families["vit"] == families["deit_distilled"]
    assert "swin" in families["swin"]


def test_adapter_for_resnet_names_supported_families():
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    with pytest.raises(ConfigError) as info:
        adapter_for(model)
    message = str(info.value)
    assert "ResNet" in message
    assert "vit" in message and "swin" in message
