"""BitLog2 post-softmax quantizer (BitLog2, KICS 2024): log2 with integer bit shifts only.

An attention probability x in [0, 1] becomes an integer

    x_int = clamp(floor(x · int_max), 0, int_max - 1)          (floor computed in float32)

whose integer log2 is the position k of its leading one bit. The dequantized integer is

    Single:  D(x_int) = 2^k
    Half:    D(x_int) = 2^k + 2^(k-1)·h,   h = bit k-1 of x_int (the value is 2^k or 1.5·2^k)

(D(0) = 0), and the dequantized value is ``x̂ = D(x_int) / s`` with an integer divisor s found on
calibration data (:mod:`vitquant.search.bitlog2_divisor`).

The scheme name carries the number of distinct values at 4 bit. For b bits:

=============  =========================  ====================  =========================
scheme         non-zero levels            int_max               values at 4 bit (int_max)
=============  =========================  ====================  =========================
Single_16      2^0 .. 2^(2^b-2)           2^(2^b - 1)           16 (32768)
Single_17      2^0 .. 2^(2^b-1)           2^(2^b)               17 (65536)
Half_16        1, {2^k, 1.5·2^k} k=1..m   2^(m+1)               16 (256)
Half_17        Half_16 and 2^(m+1)        3·2^m                 17 (384)
=============  =========================  ====================  =========================

with m = 2^(b-1) - 1. int_max must fit int64, so Single supports b <= 5 and Half b <= 6.

Two implementations that tests prove identical on every integer input:

- :func:`dequant_int`: int64 tensors, shifts, adds and comparisons only (the integer-hardware path);
- :func:`dequant_float`: the simulation path; on a float32 holding an integer, 2^floor(log2 v) is v with
  its mantissa cleared, and Half keeps the top mantissa bit: one bitwise AND. :func:`code_float` reads
  the level index from the same bits (for level counting).

Integer form (:meth:`BitLog2Quantizer.to_integer`): D(x_int) = μ·2^e with an odd μ in {1, 3} (3 for the
Half level 1.5·2^k = 3·2^(k-1)), so with k_top the leading-one position of int_max - 1

    x̂ = (2^k_top / s) · μ · 2^-(k_top - e)        mantissa μ (0 for zero), shift k_top - e >= 0

one scale per divisor and a right shift per element: attn@v becomes a sum of shifted v (plus v<<1 for
μ = 3), times 2^k_top / s once per output. The float64 scale is inexact, yet rounding the float64 product
to float32 equals forward's float32 D/s: s is a float32 integer, so its odd part o is below 2^24 and the
exact D/s lies at least 2^-26/o (relative) from any float32 rounding boundary, far beyond float64's 2^-52.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from vitquant.errors import ConfigError, WidthError
from vitquant.quantizers.base import Quantizer, check_bits
from vitquant.quantizers.integer_view import IntegerView, reject_nan
from vitquant.quantizers.spec import Params, QuantSpec, register_spec
from vitquant.quantizers.state import register_quantizer

_MAX_INT_MAX = 2**62  # int64 headroom: x_int and shifts must stay exact


@dataclass(frozen=True)
class BitLog2Scheme:
    """One BitLog2 variant at one bit width: ``half`` (keep one fractional bit) and 16/17 ``variant``."""

    half: bool
    variant: int  # 16 or 17: number of distinct values at 4 bit
    bits: int = 4

    def __post_init__(self) -> None:
        check_bits(self.bits, "BitLog2 bit width")
        if self.variant not in (16, 17):
            raise ConfigError(f"BitLog2 variant must be 16 or 17, got {self.variant!r}")
        if self.int_max > _MAX_INT_MAX:
            limit = 6 if self.half else 5
            raise WidthError(
                f"{self.name} at {self.bits} bit needs int_max = {self.int_max}, beyond int64; "
                f"BitLog2 {'Half' if self.half else 'Single'} supports at most {limit} bits "
                "(use --attn-bits to quantize the attention map with fewer bits, or a sqrt2 scheme)",
                what=self.name, widest=limit,
            )

    @property
    def name(self) -> str:
        return f"BitLog2_{'Half' if self.half else 'Single'}_{self.variant}"

    @property
    def _m(self) -> int:
        return 2 ** (self.bits - 1) - 1

    @property
    def int_max(self) -> int:
        """Exclusive upper bound of x_int (x = 1.0 maps to int_max - 1)."""
        b = self.bits
        if not self.half:
            return 2 ** (2**b - 1) if self.variant == 16 else 2 ** (2**b)
        return 2 ** (self._m + 1) if self.variant == 16 else 3 * 2**self._m

    @property
    def max_levels(self) -> int:
        """Distinct dequantized values, zero included: 2^b (variant 16) or 2^b + 1 (variant 17)."""
        return len(self.levels())

    def levels(self) -> list[int]:
        """Every value D(x_int) can take, ascending, computed by brute force over the level rule."""
        top = self.int_max - 1
        k_top = top.bit_length() - 1
        out = [0]
        for k in range(k_top + 1):
            out.append(1 << k)
            if self.half and k >= 1 and (1 << k) + (1 << (k - 1)) <= top:
                out.append((1 << k) + (1 << (k - 1)))
        return out


_SCHEME_RE = re.compile(r"^bitlog2[-_](single|half)[-_](16|17)$", re.IGNORECASE)


def parse_bitlog2(name: str, bits: int = 4) -> BitLog2Scheme:
    """``'BitLog2_Half_17'`` / ``'bitlog2-half-17'`` -> :class:`BitLog2Scheme`."""
    m = _SCHEME_RE.match(name.strip())
    if not m:
        raise ConfigError(f"not a BitLog2 scheme name: {name!r}")
    return BitLog2Scheme(half=m.group(1).lower() == "half", variant=int(m.group(2)), bits=bits)


# --------------------------------------------------------------------------- integer path
def integer_log2(x_int: torch.Tensor) -> torch.Tensor:
    """Leading-one position k of each positive int64 (0 for 0), by a 6-step binary search.

    Uses only right shifts, comparisons, adds and selects.
    """
    if x_int.dtype != torch.int64:
        raise TypeError(f"integer_log2 needs int64, got {x_int.dtype}")
    k = torch.zeros_like(x_int)
    for step in (32, 16, 8, 4, 2, 1):
        candidate = k + step
        k = torch.where((x_int >> candidate) > 0, candidate, k)
    return k


def dequant_int(x_int: torch.Tensor, half: bool) -> torch.Tensor:
    """D(x_int) on int64 tensors: 2^k (Single) or 2^k + h·2^(k-1) (Half); D(0) = 0."""
    k = integer_log2(x_int)
    one = torch.ones_like(x_int)
    value = one << k
    if half:
        below = (k - 1).clamp_(min=0)
        h = (x_int >> below) & one
        value = value + torch.where(k > 0, h << below, torch.zeros_like(x_int))
    return torch.where(x_int > 0, value, torch.zeros_like(x_int))


def code_int(x_int: torch.Tensor, half: bool) -> torch.Tensor:
    """Index of D(x_int) in :meth:`BitLog2Scheme.levels` (0 for zero), integer ops only."""
    k = integer_log2(x_int)
    if half:
        below = (k - 1).clamp_(min=0)
        h = torch.where(k > 0, (x_int >> below) & 1, torch.zeros_like(x_int))
        code = torch.where(k > 0, (k << 1) + h, torch.ones_like(x_int))
    else:
        code = k + 1
    return torch.where(x_int > 0, code, torch.zeros_like(x_int))


# --------------------------------------------------------------------------- simulation path
_SINGLE_MASK = -0x00800000  # 0xFF800000 as int32: sign + exponent, mantissa cleared
_HALF_MASK = -0x00400000  # 0xFFC00000 as int32: sign + exponent + top mantissa bit


def to_int_domain(x: torch.Tensor, scheme: BitLog2Scheme) -> torch.Tensor:
    """``clamp(floor(x · int_max), 0, int_max - 1)`` as a float32 tensor holding integers.

    For int_max above 2^24, int_max - 1 is not a float32; the clamp uses the largest float32 below
    int_max, which has the same leading bits and so the same D().
    """
    top = torch.nextafter(torch.tensor(float(scheme.int_max)), torch.tensor(0.0)).item()
    return torch.mul(x.to(torch.float32), float(scheme.int_max)).floor_().clamp_(0.0, top)


def dequant_float(v: torch.Tensor, half: bool) -> torch.Tensor:
    """D(v) for a float32 tensor of non-negative integers: clear the mantissa bits below the kept ones."""
    if v.dtype != torch.float32:
        raise TypeError(f"dequant_float needs float32, got {v.dtype}")
    bits = v.view(torch.int32) & (_HALF_MASK if half else _SINGLE_MASK)
    return bits.view(torch.float32)


def code_float(v: torch.Tensor, half: bool) -> torch.Tensor:
    """:func:`code_int` read from the float32 exponent field (k = exponent - 127, h = top mantissa bit)."""
    if v.dtype != torch.float32:
        raise TypeError(f"code_float needs float32, got {v.dtype}")
    bits = v.view(torch.int32)
    k = (bits >> 23) - 127
    if half:
        code = torch.where(k > 0, (k << 1) + ((bits >> 22) & 1), 1)
    else:
        code = k + 1
    return torch.where(bits > 0, code, 0).to(torch.int64)


def odd_mantissa_shift(x_int: torch.Tensor, half: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """D(x_int) = μ · 2^e with odd μ in {1, 3} (0 for zero, e = 0 there): ``(μ, e)``, integer ops only."""
    k = integer_log2(x_int)
    h = torch.zeros_like(x_int)
    if half:  # bit k-1 set: D = 2^k + 2^(k-1) = 3·2^(k-1)
        h = torch.where(k > 0, (x_int >> (k - 1).clamp_(min=0)) & 1, h)
    positive = x_int > 0
    mantissa = torch.where(positive, 1 + (h << 1), 0)
    return mantissa, torch.where(positive, k - h, 0)


@register_quantizer
class BitLog2Quantizer(Quantizer):
    """BitLog2 fake-quant with a fitted integer divisor ``s`` (per tensor or broadcast-shaped): x̂ = D(x_int) / s."""

    kind: ClassVar[str] = "bitlog2"
    meta_types: ClassVar[dict[str, type]] = {"bits": int, "half": bool, "variant": int}
    tensor_dtypes: ClassVar[dict[str, torch.dtype]] = {"divisor": torch.int64}

    def __init__(self, scheme: BitLog2Scheme, divisor: int | torch.Tensor) -> None:
        super().__init__()
        self.scheme = scheme
        self.bits = scheme.bits
        d = torch.as_tensor(divisor, dtype=torch.float64)
        if not torch.isfinite(d).all() or (d < 1).any() or (d != d.round()).any():
            raise ConfigError(f"BitLog2 divisor must be a positive integer, got {d.flatten()[:4].tolist()}")
        self.register_buffer("divisor", d.to(torch.float32))

    @property
    def max_levels(self) -> int:
        return self.scheme.max_levels

    def to_int(self, x: torch.Tensor) -> torch.Tensor:
        """x_int as int64 (the integer input of :func:`dequant_int`)."""
        return to_int_domain(x, self.scheme).to(torch.int64)

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        v = to_int_domain(x, self.scheme)
        if torch.isnan(v).any():
            raise ValueError("BitLog2 quantizer got NaN input")
        return code_float(v, self.scheme.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """D(x_int) / s. NaN input stays non-finite (NaN, or inf for Single: its mask keeps no mantissa)."""
        d = dequant_float(to_int_domain(x, self.scheme), self.scheme.half)
        return d.div_(self.divisor).to(x.dtype)

    def to_integer(self, x: torch.Tensor) -> IntegerView:
        """x̂ = (2^k_top / s) · μ · 2^(-shift): μ in {0, 1, 3}, shift = k_top - e (see the module doc)."""
        v = to_int_domain(x, self.scheme)
        reject_nan(v, self.scheme.name)
        mantissa, e = odd_mantissa_shift(v.to(torch.int64), self.scheme.half)
        k_top = (self.scheme.int_max - 1).bit_length() - 1
        shift = torch.where(mantissa > 0, k_top - e, 0)
        return IntegerView(mantissa, shift, float(2**k_top) / self.divisor.to(torch.float64))

    def state_meta(self) -> dict[str, Any]:
        return {"bits": self.bits, "half": self.scheme.half, "variant": self.scheme.variant}

    @classmethod
    def from_state(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> BitLog2Quantizer:
        return cls(BitLog2Scheme(half=meta["half"], variant=meta["variant"], bits=meta["bits"]), tensors["divisor"])

    def extra_repr(self) -> str:
        div = int(self.divisor) if self.divisor.numel() == 1 else f"x{self.divisor.numel()}"
        return f"{self.scheme.name}, bits={self.bits}, int_max={self.scheme.int_max}, divisor={div}"


@register_spec
@dataclass(frozen=True, kw_only=True)
class BitLog2Spec(QuantSpec):
    """BitLog2 Single/Half, 16/17: the divisor in closed form (default) or searched over an integer grid."""

    variant: int = 17
    half: bool = True

    kind: ClassVar[str] = "bitlog2"
    default_search: ClassVar[str] = "percentile"
    nonnegative: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.scheme  # validates variant and int_max for the bit width

    @property
    def scheme(self) -> BitLog2Scheme:
        return BitLog2Scheme(half=self.half, variant=self.variant, bits=self.bits)

    @property
    def format_name(self) -> str:
        return self.scheme.name

    @property
    def max_levels(self) -> int:
        return self.scheme.max_levels

    def check_input(self, rows: torch.Tensor, where: str) -> None:
        from vitquant.errors import NumericalError

        lo, hi = float(rows.min()), float(rows.max())
        if lo < 0 or hi > 1.0 + 1e-6:
            raise NumericalError(f"{where}: BitLog2 needs probabilities in [0, 1], got range [{lo}, {hi}]")

    def initialize(self, rows: torch.Tensor, where: str) -> Params:
        from vitquant.search.bitlog2_divisor import row_divisors

        return {"divisor": row_divisors(rows, self.scheme)}

    def grid(self, rows: torch.Tensor, init: Params) -> Params:
        """32 integer divisors spaced geometrically from s*/2 to 2·s* (s* the closed-form optimum)."""
        factors = torch.logspace(-1, 1, 32, base=2.0, dtype=torch.float64).unsqueeze(1)
        cand = (init["divisor"].double().unsqueeze(0) * factors).round().clamp(1, self.scheme.int_max - 1)
        return {"divisor": cand.float()}

    def build(self, params: Params, shape: tuple[int, ...]) -> BitLog2Quantizer:
        return BitLog2Quantizer(self.scheme, params["divisor"].reshape(shape))
