"""``benchmarks/integer.py`` counts the images bit-identical to the exact simulation (tiny model, no benchmark run)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from integer_cases import calibrated
from vitquant.integer.convert import plan_vit
from vitquant.integer.exact import is_exact
from vitquant.integer.execute import IntegerModel

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _benchmark_module():
    sys.path.insert(0, str(BENCHMARKS))  # its sibling modules (attention_schemes, recipes)
    try:
        spec = importlib.util.spec_from_file_location("benchmark_integer", BENCHMARKS / "integer.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_benchmark_reports_images_bit_identical_to_the_exact_simulation():
    bench = _benchmark_module()
    _, qmodel, _, _, images = calibrated("w4a4-bitlog2")
    plan = plan_vit(qmodel)
    integer = IntegerModel(plan.program)
    batches = [images[:3], images[3:]]
    logits, twin, exact = bench.integer_against_simulations(qmodel, plan, integer, batches)
    n = len(images)
    assert twin == n and (exact.images, exact.identical, exact.within_one, exact.max_lsb) == (n, n, n, 0)
    assert torch.equal(logits, integer(images))
    assert not is_exact(qmodel)  # the calibrated model is the fake-quantized one again
    row = {"row": "W4A4", "attention": "bitlog2", "sim_top1": 1.0, "int_top1": 1.0, "int_agreement_sim": 1.0,
           "int_agreement_fp": 1.0, "bit_identical_twin": twin, "bit_identical_exact": exact.identical, "images": len(images),
           "file_ratio_fp": 0.2, "speed_ratio": {"simulated": 1.0, "int_gemm_int": 0.1, "int_gemm_float": 0.5,
                                                    "int_gemm_float_compiled": 0.6},
           "compile_seconds": 3.0, "fast_bit_identical_strict": True}
    res = {"model": "tiny", "calibration_images": 8, "seed": 0, "evaluation_images": 8, "eval_dir": "/x/y",
           "fp_top1": 1.0, "timing_batch": 2, "threads": 1, "torch": torch.__version__, "rows": [row],
           "repeats": 3, "command": "python benchmarks/integer.py"}
    table = bench.to_markdown(res)
    assert "bit-identical to the exact simulation" in table and f"| {n} / {n} | {n} / {n} |" in table
