"""Integer square root by Newton iterations with shifts (I-ViT, I-BERT LayerNorm).

    k₀ = 2^⌈bitlen(v)/2⌉ ≥ √v,   k_{i+1} = min(k_i, (k_i + ⌊v / k_i⌋) >> 1)

Starting above √v, the iterates decrease monotonically to ⌊√v⌋ (quadratic convergence once close);
10 iterations (I-ViT's count) reach ⌊√v⌋ exactly for every v < 2^52 (tested against ``math.isqrt``).
The bit length comes from integer comparisons against powers of two, so no float op is involved.
"""

from __future__ import annotations

import torch

from vitquant.kernels.arith import Arith

NEWTON_ITERATIONS = 10
MAX_BITS = 52  # inputs below 2^52 (the exact range of both backends)


def bit_length(v: torch.Tensor, arith: Arith) -> torch.Tensor:
    """Number of bits of non-negative integers ``v`` (0 for 0), by comparisons with 2^j."""
    powers = arith.tensor(torch.tensor([2**j for j in range(MAX_BITS + 1)]))
    return (v.unsqueeze(-1) >= powers).sum(dim=-1).to(arith.dtype)


def isqrt(v: torch.Tensor, arith: Arith, iterations: int = NEWTON_ITERATIONS) -> torch.Tensor:
    """⌊√v⌋ of non-negative integers ``v < 2^52``, in ``arith`` (0 for 0)."""
    safe = torch.clamp(v, min=1)  # iterates stay >= 1 (v = 0 handled at the end)
    half_bits = arith.shift_right(bit_length(safe, arith) + 1, 1)
    k = arith.shift_left(torch.ones_like(v), half_bits)
    for _ in range(iterations):
        nxt = arith.shift_right(k + arith.floor_div(safe, k), 1)
        k = torch.minimum(k, nxt)
    return torch.where(v == 0, torch.zeros_like(v), k)
