"""One fitted quantizer of every class at each granularity, with a float32 input that sweeps its whole
range densely and adds the extremes; shared by ``test_integer_view.py`` and ``test_state.py``."""

from __future__ import annotations

import math

import torch

from vitquant.quantizers import (
    AdaLogQuantizer,
    BitLog2Quantizer,
    BitLog2Scheme,
    FixedPointQuantizer,
    LogSqrt2Quantizer,
    Quantizer,
    TwinGeluQuantizer,
    TwinSoftmaxQuantizer,
    UniformQuantizer,
)

EXTREMES = [0.0, -0.0, 1e-45, 1e-40, 1e-30, 1e-8, 0.5, 1.0, 1.5, 3e38, math.inf]
GAIN_C = torch.tensor([0.01, 0.3, 1.0, 2.5, 40.0])  # per-channel ranges (5 channels)
GAIN_H = torch.tensor([0.5, 1.0, 3.0])  # per-head ranges (3 heads)
HEAD = (3, 1, 1)  # parameter shape of a per-head quantizer on [B, H, N, N]


def probabilities(n: int = 30_000) -> torch.Tensor:
    """[0, 1] densely, a log sweep down to 1e-40 (deep levels) and the extremes (float32)."""
    return torch.cat([torch.linspace(0, 1, n), torch.logspace(-40, 0, n // 3), torch.tensor(EXTREMES)])


def signed(n: int = 30_000, span: float = 4.0) -> torch.Tensor:
    """[-span, span] densely plus the extremes with both signs (float32)."""
    ext = torch.tensor(EXTREMES)
    return torch.cat([torch.linspace(-span, span, n), ext, -ext])


def channels(flat: torch.Tensor, last: bool = True) -> torch.Tensor:
    """``flat`` in every channel c times GAIN_C[c]: tokens ``[M, 1, C]`` (last) or weights ``[C, M]``."""
    x = flat.unsqueeze(1) * GAIN_C
    return x.unsqueeze(1) if last else x.t().contiguous()


def heads(flat: torch.Tensor) -> torch.Tensor:
    """An attention-map-like ``[B, 3, 8, 8]`` tensor holding ``flat`` in every head h, times GAIN_H[h]."""
    n = -(-flat.numel() // 64) * 64
    maps = torch.cat([flat, flat[: n - flat.numel()]]).reshape(-1, 1, 8, 8)
    return maps * GAIN_H.reshape(1, *HEAD)


def _per_head(*values: float) -> torch.Tensor:
    return torch.tensor(values).reshape(HEAD)


def cases() -> list[tuple[str, Quantizer, torch.Tensor]]:
    """``(id, quantizer, float32 input)`` for every class, per tensor and per channel or head."""
    p, s = probabilities(), signed()
    half17, single16 = BitLog2Scheme(True, 17, bits=4), BitLog2Scheme(False, 16, bits=3)
    zeros_c = torch.tensor([[-3.0], [0], [128], [255], [300]])  # zero points outside [0, 255] too
    return [
        ("uniform-tensor", UniformQuantizer(4, torch.tensor(0.37), torch.tensor(6.0)), s),
        ("uniform-channel-weight", UniformQuantizer(8, 0.01 * GAIN_C.reshape(-1, 1), zeros_c), channels(s, False)),
        ("uniform-channel-last", UniformQuantizer(3, 0.5 * GAIN_C, torch.tensor([0.0, 2, 4, 7, -1])), channels(s)),
        ("uniform-head", UniformQuantizer(2, _per_head(0.2, 1.0, 0.03), _per_head(1, 2, 0)), heads(s)),
        ("bitlog2-half17-tensor", BitLog2Quantizer(half17, 37), p),
        ("bitlog2-single16-head", BitLog2Quantizer(single16, _per_head(1, 45, 127)), heads(p)),
        # divisors whose odd part is as large as a float32 integer allows (just under 2^24)
        ("bitlog2-half16-6bit-head",
         BitLog2Quantizer(BitLog2Scheme(True, 16, 6), _per_head(3, 16777213 * 128, 2**24 - 1)), heads(p)),
        ("log_sqrt2-17-tensor", LogSqrt2Quantizer(4, 17, torch.tensor(0.8)), p),
        ("log_sqrt2-16-head", LogSqrt2Quantizer(3, 16, _per_head(1.0, 0.3, 0.05)), heads(p)),
        ("log_sqrt2-17-8bit-head", LogSqrt2Quantizer(8, 17, _per_head(1.0, 0.3, 5e-3)), heads(p)),
        ("adalog-tensor", AdaLogQuantizer(4, torch.tensor(0.9), torch.tensor(37.0)), p),
        ("adalog-channel-last", AdaLogQuantizer(3, 2.0 * GAIN_C, torch.tensor([10.0, 19, 37, 100, 137])), channels(p)),
        # s = 1e30, q = 1000: x/s down to 2^-149 reaches shifts > 149, where float32 rounds T·2^-shift
        ("adalog-8bit-head", AdaLogQuantizer(8, _per_head(1.0, 1e30, 1e-20), _per_head(137, 1000, 60)),
         heads(torch.cat([p, 2e30 * p]))),
        ("twin_softmax-tensor", TwinSoftmaxQuantizer(4, torch.tensor(2.0)), torch.cat([p, -p[:100]])),
        ("twin_softmax-head", TwinSoftmaxQuantizer(8, _per_head(0, 5, 100)), heads(p)),
        ("twin_gelu-tensor", TwinGeluQuantizer(4, torch.tensor(0.31)), s),
        ("twin_gelu-channel-last", TwinGeluQuantizer(3, 0.1 * GAIN_C), channels(s)),
        ("fixed_point-24-tensor", FixedPointQuantizer(24, torch.tensor(4.0 / (2**23 - 1))), s),
        ("fixed_point-31-channel-last", FixedPointQuantizer(31, 2e-9 * GAIN_C), channels(s)),
        ("fixed_point-8-tensor", FixedPointQuantizer(8, torch.tensor(0.03)), s),
    ]


CASES = cases()
CASE_IDS = [name for name, _, _ in CASES]
