"""Benchmark: exact integer matmuls (``vitquant.kernels.gemm``) against float32 matmul on DeiT-Tiny shapes.

For each product of a DeiT-Tiny block at batch 8 (8-bit activations with 4-bit and 8-bit weights; 8-bit
q, k, attention and v), times in turns, best of ``--repeats``:

- ``fp32``: torch matmul of the same values held as float32 (the FP model's cost: no conversion);
- ``int``: ``int_linear`` / ``int_matmul`` with backend "int" on int8/uint8 tensors (int64 matmul);
- ``float``: the same with backend "float" and declared bounds (bound check, conversion, float GEMMs).

Reports milliseconds and throughput relative to fp32 measured in this run (1.0 = as fast), the float
plan of each product, and checks both backends return the same integers.

    cd benchmarks && PYTHONPATH=../src:. python int_gemm.py
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from attention_schemes import commit_note, environment, write_results
from vitquant.kernels import exact_float_plan, int_linear, int_matmul

S8, U8, W4 = (-128, 127), (0, 255), (-8, 7)
# name: (kind, a shape, a range, b shape, b range); linear weights are [out, in]
CASES = {
    "qkv x·Wᵀ A8W4": ("linear", (197, 192), S8, (576, 192), W4),
    "qkv x·Wᵀ A8W8": ("linear", (197, 192), S8, (576, 192), S8),
    "fc2 x·Wᵀ A8W4": ("linear", (197, 768), S8, (192, 768), W4),
    "fc2 x·Wᵀ A8W8": ("linear", (197, 768), S8, (192, 768), S8),
    "fc2 x·Wᵀ A8(unsigned)W8": ("linear", (197, 768), U8, (192, 768), S8),
    "q·kᵀ 8-bit": ("matmul", (3, 197, 64), S8, (3, 64, 197), S8),
    "attn·v u8 x s8": ("matmul", (3, 197, 197), U8, (3, 197, 64), S8),
}


def _ints(gen: torch.Generator, shape: tuple[int, ...], bounds: tuple[int, int]) -> torch.Tensor:
    dtype = torch.uint8 if bounds[0] >= 0 else torch.int8
    return torch.randint(bounds[0], bounds[1] + 1, shape, generator=gen).to(dtype)


def _best_in_turns(fns: dict[str, Callable[[], torch.Tensor]], repeats: int, warmup: int) -> dict[str, float]:
    """Best-of-``repeats`` seconds of each function, timed in turns (a slow spell hits all alike)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _case(name: str, batch: int, gen: torch.Generator, repeats: int, warmup: int) -> dict:
    kind, a_shape, a_range, b_shape, b_range = CASES[name]
    a = _ints(gen, (batch, *a_shape), a_range)
    b = _ints(gen, (batch, *b_shape) if kind == "matmul" else b_shape, b_range)
    a_bound, b_bound = max(-a_range[0], a_range[1]), max(-b_range[0], b_range[1])
    af, bf = a.float(), b.float()
    if kind == "linear":
        fns = {
            "fp32": lambda: torch.nn.functional.linear(af, bf),
            "int": lambda: int_linear(a, b, backend="int"),
            "float": lambda: int_linear(a, b, backend="float", x_bound=a_bound, w_bound=b_bound),
        }
    else:
        fns = {
            "fp32": lambda: torch.matmul(af, bf),
            "int": lambda: int_matmul(a, b, backend="int"),
            "float": lambda: int_matmul(a, b, backend="float", a_bound=a_bound, b_bound=b_bound),
        }
    k = a_shape[-1]
    plan = exact_float_plan(k, a_bound, b_bound)
    seconds = _best_in_turns(fns, repeats, warmup)
    return {
        "product": name, "a_shape": [batch, *a_shape], "b_shape": list(b.shape), "kind": kind,
        "a_range": list(a_range), "b_range": list(b_range), "K": k, "K_A_B": k * a_bound * b_bound,
        "float_plan": {"dtype": str(plan.dtype).removeprefix("torch."), "chunk": plan.chunk,
                       "gemms": -(-k // plan.chunk) if plan.chunk < k else 1},
        "exact": bool(torch.equal(fns["int"](), fns["float"]())),
        "ms": {m: s * 1e3 for m, s in seconds.items()},
        "relative_throughput": {m: seconds["fp32"] / s for m, s in seconds.items()},
    }


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    rows = [_case(name, args.batch, gen, args.repeats, args.warmup) for name in CASES]
    return {
        "command": "python benchmarks/int_gemm.py " + " ".join(sys.argv[1:]),
        "batch": args.batch, "repeats": args.repeats, "seed": args.seed, **environment(), "rows": rows,
    }


def to_markdown(res: dict) -> str:
    lines = [
        f"Exact integer matmuls vs float32 matmul, DeiT-Tiny shapes at batch {res['batch']}; best of "
        f"{res['repeats']} timed in turns; {res['threads']} CPU thread(s), torch {res['torch']}; {commit_note(res)}.",
        "Throughput relative to fp32 (1.00 = as fast; 0.50 = half as fast). `int`: int64 matmul; `float`: "
        "exact float GEMMs (plan: dtype x GEMMs over K), bound check and conversions included.",
        "",
        "| product | a @ b | K·A·B | float plan | fp32 ms | int ms | float ms | int vs fp32 | float vs fp32 | exact |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in res["rows"]:
        ms, rel, plan = r["ms"], r["relative_throughput"], r["float_plan"]
        b_shape = r["b_shape"][::-1] if r["kind"] == "linear" else r["b_shape"]  # show Wᵀ
        lines.append(
            f"| {r['product']} | {r['a_shape']} @ {b_shape} | {r['K_A_B']:.3g} | {plan['dtype']} x{plan['gemms']} "
            f"| {ms['fp32']:.2f} | {ms['int']:.2f} | {ms['float']:.2f} | {rel['int']:.2f} | {rel['float']:.2f} "
            f"| {'yes' if r['exact'] else 'NO'} |"
        )
    lines += ["", f"Command: `{res['command'].strip()}`"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args(argv)
    res = run(args)
    write_results(res, args.out, "int_gemm", to_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
