"""Shared set-up of the benchmark plumbing tests: a benchmark script loaded as a module, its data
loading replaced by the tiny ViT with 4 calibration and 8 evaluation images."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def tiny_benchmark(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ModuleType:
    """``benchmarks/<name>.py`` as a module whose ``load_eval`` gives the tiny ViT."""
    from conftest import images, make_vit

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = make_vit()
    batches = [images(8, 32, seed=3)]
    with torch.no_grad():
        fp_logits = model(batches[0])
    data = SimpleNamespace(eval_dir=tmp_path, calib_dir=tmp_path, evaluation=[])

    def load_eval(args):
        return model, "tiny random ViT", data, images(4, 32, seed=1), batches, torch.arange(8) % 10, fp_logits

    monkeypatch.setattr(module, "load_eval", load_eval)
    return module
