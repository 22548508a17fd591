"""Fingerprint of the default main job: ``vitquant quantize`` with no options (real DeiT-Tiny, W4A4,
bitlog2-half-17, 32 calibration images of the shared sample, seed 0), run through the command line.

``test_default_job.py`` runs this file as a script in a process of its own and compares what it prints
with ``golden/default_job_deit_tiny.json``. ``python tests/default_job_fingerprint.py --write`` rewrites
that file; do so only when a change is *meant* to alter the default job's model, and say so in the commit.

The process runs with the CPU's vector kernels held at AVX2 (:data:`PINNED_ENV`, set before torch loads)
and 2 threads. The quantized model depends on the float rounding of those kernels: the same code gives
64.36 % top-1 on the 968 evaluation images with torch's AVX-512 kernels and 62.29 % with its AVX2 ones,
so a fingerprint taken with whatever the machine offers would differ between machines. Every x86-64
machine with AVX2 computes the pinned fingerprint.

The fingerprint: the job's calibration and evaluation files, a checksum of the decoded calibration
images, its resolved QConfig, and the six-scheme pin's fingerprint of the calibrated model (fitted
parameters, code histograms, logits of the first 50 classes and the top-1 class) on the first
:data:`EVAL_IMAGES` evaluation images (``--eval-size``, which leaves the calibration as it is).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).parent / "golden" / "default_job_deit_tiny.json"
#: vector kernels and threads of the fingerprint's process (ATen, oneDNN, MKL; read when torch loads)
PINNED_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
              "OMP_NUM_THREADS": "2"}
EVAL_IMAGES = 8


def fingerprint() -> dict[str, Any]:
    """Run the default job (``quantize --eval-size 8``) and fingerprint what it calibrated."""
    import torch

    sys.path.insert(0, str(Path(__file__).parent / "calibration"))
    from scheme_fingerprint import fingerprint as model_fingerprint
    from vitquant import cli, workflow
    from vitquant.data import load_batch

    captured: dict[str, Any] = {}
    originals = {name: getattr(workflow, name) for name in ("resolve_data", "load_images", "quantize_model")}

    def resolve_data(job):  # noqa: ANN001, ANN202
        captured["data"] = originals["resolve_data"](job)
        return captured["data"]

    def load_images(records, transform, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        captured.setdefault("transform", transform)  # the first call decodes the calibration images
        return originals["load_images"](records, transform, *args, **kwargs)

    def quantize_model(model, images, qconfig, **kwargs):  # noqa: ANN001, ANN003, ANN202
        captured["result"] = originals["quantize_model"](model, images, qconfig, **kwargs)
        captured["images"] = images
        return captured["result"]

    for name, function in {"resolve_data": resolve_data, "load_images": load_images, "quantize_model": quantize_model}.items():
        setattr(workflow, name, function)
    try:
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
            report_path = Path(tmp) / "report.json"
            code = cli.main(["quantize", "--eval-size", str(EVAL_IMAGES), "--json", str(report_path), "-q"])
            if code != 0:
                raise SystemExit(f"vitquant quantize exited with {code}")
            report = json.loads(report_path.read_text())
    finally:
        for name, function in originals.items():
            setattr(workflow, name, function)
    data, images = captured["data"], captured["images"]
    eval_images = load_batch(data.evaluation, captured["transform"])
    return {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "calibration_files": [r.path.name for r in data.calibration],
        "evaluation_files": [r.path.name for r in data.evaluation],
        "calibration_images": [float(images.double().sum()), float(images.double().abs().sum()), list(images.shape)],
        "qconfig": report["config"]["qconfig"],
        **model_fingerprint(captured["result"], eval_images),
    }


def main() -> int:
    missing = {k: v for k, v in PINNED_ENV.items() if os.environ.get(k) != v}
    if missing:  # the kernels are chosen when torch loads: start again with the pinned environment
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **PINNED_ENV})
    got = fingerprint()
    if "--write" in sys.argv[1:]:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(got))
        print(f"wrote {GOLDEN}", file=sys.stderr)
    else:
        print(json.dumps(got))
    return 0


if __name__ == "__main__":
    sys.exit(main())
