"""The default main job (``vitquant quantize`` with no options, on the real DeiT-Tiny) gives the model it
gave when ``golden/default_job_deit_tiny.json`` was written: the same calibration images, recipe,
fitted parameters, code histograms and logits (see ``default_job_fingerprint.py``).

The six-scheme pin calls ``quantize_model`` with ``repq_vit_qconfig`` directly; this one goes through the
command line and its defaults (data split, decoding, recipe, batching), so a change there fails here.
Tolerances as the six-scheme pin: float noise only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "calibration"))  # the six-scheme pin's fingerprint helpers

from default_job_fingerprint import GOLDEN, PINNED_ENV  # noqa: E402
from scheme_fingerprint import assert_same_model  # noqa: E402
from vitquant.paths import default_sample_images, default_weights  # noqa: E402

pytestmark = pytest.mark.real_model
SCRIPT = Path(__file__).parent / "default_job_fingerprint.py"


@pytest.fixture(scope="module")
def fingerprint() -> dict:
    if default_sample_images() is None or default_weights("deit_tiny_patch16_224") is None:
        pytest.skip("shared DeiT-Tiny weights or ImageNet sample not present")
    proc = subprocess.run([sys.executable, str(SCRIPT)], env={**os.environ, **PINNED_ENV},
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    if got["capability"] != "AVX2":  # not an x86-64 CPU with AVX2: other kernels, another model by design
        pytest.skip(f"the pinned fingerprint needs torch's AVX2 kernels; this CPU runs {got['capability']}")
    return got


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


def test_default_job_calibrates_on_the_same_images_with_the_same_recipe(fingerprint, golden):
    assert fingerprint["calibration_files"] == golden["calibration_files"], "the default job calibrates on other images"
    assert fingerprint["evaluation_files"] == golden["evaluation_files"], "the default job evaluates other images"
    assert torch.allclose(torch.tensor(fingerprint["calibration_images"][:2], dtype=torch.float64),
                          torch.tensor(golden["calibration_images"][:2], dtype=torch.float64), rtol=1e-6), \
        "the calibration images decode to other tensors (transform, resize, crop)"
    assert fingerprint["calibration_images"][2] == golden["calibration_images"][2]
    assert fingerprint["qconfig"] == golden["qconfig"], "the default job's resolved QConfig changed"


def test_default_job_gives_the_pinned_model(fingerprint, golden):
    """Fitted parameters, code histograms and logits as the six-scheme pin compares them."""
    assert_same_model(fingerprint, golden)
