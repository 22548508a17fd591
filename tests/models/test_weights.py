"""Weights: local state dicts (safetensors / .pth, wrapped or not), the shared copy, and download errors."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

import vitquant.models.weights as weights_module
from vitquant.errors import WeightsError
from vitquant.models import create_model, load_state_dict
from vitquant.paths import default_weights

_REAL_CREATE = timm.create_model


@pytest.fixture(scope="module")
def deit_state() -> dict[str, torch.Tensor]:
    """A random-weight deit_tiny_patch16_224 state dict (the architecture create_model('deit_tiny') builds)."""
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def small_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {"a.weight": torch.randn(3, 4), "a.bias": torch.randn(3), "step": torch.tensor(7)}


def _assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert torch.equal(got[key], value), key


def test_load_safetensors(tmp_path, small_state):
    path = tmp_path / "w.safetensors"
    save_file(small_state, str(path))
    _assert_same(load_state_dict(path), small_state)
    _assert_same(load_state_dict(str(path)), small_state)  # str paths too


@pytest.mark.parametrize("wrapper", [None, "model", "state_dict", "model_ema"])
def test_load_pth_plain_and_wrapped(tmp_path, small_state, wrapper):
    obj = small_state if wrapper is None else {wrapper: small_state, "epoch": 300, "args": "x"}
    path = tmp_path / "w.pth"
    torch.save(obj, path)
    _assert_same(load_state_dict(path), small_state)


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_state_dict(tmp_path / "absent.safetensors")
    with pytest.raises(WeightsError, match="is not a file"):
        load_state_dict(tmp_path)  # a directory is not a weights file


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
def test_garbage_file(tmp_path, suffix):
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(b"\x00\x01 definitely not a checkpoint " * 10)
    with pytest.raises(WeightsError, match="garbage"):
        load_state_dict(path)


@pytest.mark.parametrize("obj", [[torch.zeros(2)], {"a": torch.zeros(2), "b": 3}, torch.zeros(3)], ids=["list", "mixed", "tensor"])
def test_pth_without_a_tensor_state_dict(tmp_path, obj):
    path = tmp_path / "w.pth"
    torch.save(obj, path)
    with pytest.raises(WeightsError, match="state dict"):
        load_state_dict(path)


def test_create_model_from_given_weights(tmp_path, deit_state):
    path = tmp_path / "deit.pth"
    torch.save({"model": deit_state}, path)
    model, source = create_model("deit_tiny", weights=path)
    assert not model.training
    assert source == str(path.resolve())
    _assert_same(model.state_dict(), deit_state)


def test_create_model_with_mismatched_weights(tmp_path):
    torch.manual_seed(0)
    other = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(WeightsError, match="do not fit deit_tiny_patch16_224"):
        create_model("deit_tiny", weights=path)


def test_create_model_with_missing_keys(tmp_path, deit_state):
    partial = dict(deit_state)
    del partial["head.weight"]
    path = tmp_path / "partial.pth"
    torch.save(partial, path)
    with pytest.raises(WeightsError, match="head.weight"):
        create_model("deit_tiny", weights=path)


def test_create_model_missing_weights_file(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        create_model("deit_tiny", weights=tmp_path / "nope.pth")


def test_create_model_uses_shared_weights_by_default():
    shared = default_weights("deit_tiny_patch16_224")
    if shared is None:
        pytest.skip("shared DeiT-Tiny weights not present")
    from safetensors.torch import load_file

    model, source = create_model("deit_tiny")
    assert source == str(shared.resolve())
    assert not model.training
    _assert_same(model.state_dict(), load_file(str(shared)))
    assert sum(p.numel() for p in model.parameters()) == 5_717_416


@pytest.fixture
def no_shared_no_download(monkeypatch):
    """No local weights, and a timm whose pretrained download fails (as offline)."""
    calls = []

    def fake_create(name, pretrained=False, **kwargs):
        calls.append((name, pretrained))
        if pretrained:
            raise ConnectionError("no network in this test")
        return _REAL_CREATE(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", fake_create)
    monkeypatch.setattr(weights_module, "default_weights", lambda name: None)
    return calls


def test_download_failure_is_a_weights_error_pointing_at_weights_option(no_shared_no_download):
    with pytest.raises(WeightsError, match="--weights") as info:
        create_model("deit_tiny")
    assert "deit_tiny_patch16_224" in str(info.value)
    assert "ConnectionError" in str(info.value)
    assert isinstance(info.value.__cause__, ConnectionError)
    assert ("deit_tiny_patch16_224", True) in no_shared_no_download


def test_no_download_allowed_is_a_weights_error(no_shared_no_download):
    with pytest.raises(WeightsError, match="--weights"):
        create_model("deit_tiny", download=False)
    assert all(not pretrained for _, pretrained in no_shared_no_download)  # never tried the hub


def test_download_success_path(no_shared_no_download, monkeypatch):
    """With a working hub, create_model asks timm for pretrained weights and reports that source."""
    calls = no_shared_no_download
    built = []

    def hub_ok(name, pretrained=False, **kwargs):
        calls.append((name, pretrained))
        torch.manual_seed(0)
        model = _REAL_CREATE(name, pretrained=False, **kwargs).train()
        if pretrained:
            built.append(model)
        return model

    monkeypatch.setattr(timm, "create_model", hub_ok)
    model, source = create_model("deit_tiny")
    assert ("deit_tiny_patch16_224", True) in calls
    assert built and model is built[-1]
    assert source.startswith("timm pretrained: ")
    assert not model.training


def test_create_model_rejects_unsupported_family_before_any_download(no_shared_no_download):
    from vitquant.errors import ConfigError

    with pytest.raises(ConfigError, match="supported families"):
        create_model("resnet18")
    assert all(not pretrained for _, pretrained in no_shared_no_download)
