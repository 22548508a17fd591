"""AdaLog: adaptive-base logarithmic quantizer (Wu et al., "AdaLog", ECCV 2024).

Base b = 2^(q/r) with a fixed r = 37 and an integer q >= 1 (q = 37: base 2), scale s > 0, per row:

    c  = round(-log2(min(x/s, 1)) · r / q)            (float32, round-half-to-even)
    x̂ = 0                                             if c >= 2^b  (and x = 0)
    x̂ = s / D · T[(c·q) mod r] · 2^(-floor(c·q / r))  otherwise

with D = 2^(b+1) - 2 and the integer table T[j] = round(2^(-j/r) · D), j = 0..r-1 (values in [D/2, D]).
This is the hardware "table + shift" form the paper derives (Eqs. 7-10) and the published simulation
uses; it replaces the ideal level s · 2^(-c·q/r) (:func:`ideal_levels`) with a relative error below
1/D per level (|round(D·u) - D·u| <= 1/2 with D·u >= D/2).

2^b non-zero levels plus an exact zero: ``max_levels = 2^b + 1`` per row (the ``Sqrt2_17`` convention
of the published code). With the rounded table two codes can share a value (e.g. small q at 2 bits);
:meth:`AdaLogQuantizer.codes` labels each value by the smallest such code, so codes stay an injective
labelling of values. Levels below float32's range underflow to 0 and take the zero code.

``forward`` gathers from a per-row level table built with exactly the formula above, so it equals
``s / D * torch.ldexp(T[j], -shift)`` bit for bit (see :func:`table_and_shift`).

Integer form (:meth:`AdaLogQuantizer.to_integer`): mantissa T[j], the shift, scale fl32(s / D) (as the level
table computes it; float32 · (T[j]·2^-shift) is then the exact float64 product rounded once). Where
T[j]·2^-shift falls below float32's normal range (x/s near 2^-149 with a large q: shifts past ~140) the
table's float32 may have rounded it, even to 0; there mantissa and shift are those of that float32 value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from vitquant.errors import ConfigError, NumericalError
from vitquant.quantizers.base import Quantizer, check_bits
from vitquant.quantizers.integer_view import IntegerView, dyadic
from vitquant.quantizers.spec import Params, QuantSpec, register_spec
from vitquant.quantizers.state import register_quantizer

ADALOG_R = 37
Q_MAX = 1 << 24  # q is stored in float32: integers are exact up to 2^24
SEARCH_Q = tuple(range(10, 138))  # AdaLog's q grid: 128 values, base 2^(10/37) ~ 1.21 .. 2^(137/37) ~ 13
INIT_Q = tuple(range(10, 138, 9))  # data-only fit: 15 of them (37 included)
INIT_PERCENTILES = (0.999, 0.9999, 0.99999)
SEARCH_SCALES = 32


def table_denominator(bits: int) -> int:
    """D = 2^(b+1) - 2: the table's full scale (T is an unsigned (b+1)-bit integer)."""
    return 2 ** (check_bits(bits) + 1) - 2


def adalog_table(bits: int) -> torch.Tensor:
    """T[j] = round(2^(-j/r) · D) for j = 0..r-1 as int64 ``[r]`` (D = 2^(b+1) - 2)."""
    d = table_denominator(bits)
    j = torch.arange(ADALOG_R, dtype=torch.float64)
    return torch.round(torch.exp2(-j / ADALOG_R) * d).to(torch.int64)


def _as_int_q(q: torch.Tensor | int) -> torch.Tensor:
    q = torch.as_tensor(q)
    if q.is_floating_point():
        if not torch.isfinite(q).all() or (q != q.round()).any():
            raise ConfigError("AdaLog q must be a finite integer")
        q = q.to(torch.int64)
    if q.dtype != torch.int64:
        q = q.to(torch.int64)
    if (q < 1).any() or (q > Q_MAX).any():
        raise ConfigError(f"AdaLog q must be an integer in [1, {Q_MAX}]")
    return q


def table_and_shift(
    codes: torch.Tensor, q: torch.Tensor | int, bits: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer dequantization of non-zero codes c in [0, 2^b): ``(T[(c·q) mod r], floor(c·q / r))``.

    int64 ops only; ``q`` broadcasts against ``codes``. The value is ``s / D * ldexp(T, -shift)``.
    """
    if codes.dtype != torch.int64:
        raise ConfigError(f"AdaLog codes must be int64, got {codes.dtype}")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= 2 ** check_bits(bits)):
        raise ConfigError(f"AdaLog non-zero codes must be in [0, 2^{bits}); the zero code has no table entry")
    cq = codes * _as_int_q(q).to(codes.device)
    table = adalog_table(bits).to(codes.device)
    return table[torch.remainder(cq, ADALOG_R)], torch.div(cq, ADALOG_R, rounding_mode="floor")


def adalog_levels(bits: int, scale: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Table-form value of every code, ``[..., 2^b + 1]`` (last entry: the zero code), float32.

    ``scale`` and ``q`` broadcast to the leading shape; ``levels[..., c] = s / D * ldexp(T[j], -shift)``.
    """
    scale = torch.as_tensor(scale, dtype=torch.float32)
    q_int = _as_int_q(q)
    scale, q_int = torch.broadcast_tensors(scale, q_int.to(scale.device))
    codes = torch.arange(2**bits, dtype=torch.int64, device=scale.device)
    t, shift = table_and_shift(codes, q_int.unsqueeze(-1), bits)
    values = scale.unsqueeze(-1) / table_denominator(bits) * torch.ldexp(t.to(torch.float32), -shift)
    return torch.cat([values, values.new_zeros(values.shape[:-1] + (1,))], dim=-1)


def ideal_levels(bits: int, scale: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The float definition s · 2^(-c·q/r) of the non-zero codes, ``[..., 2^b]`` in float64."""
    scale = torch.as_tensor(scale, dtype=torch.float64)
    q64 = _as_int_q(q).to(device=scale.device, dtype=torch.float64)
    scale, q64 = torch.broadcast_tensors(scale, q64)
    c = torch.arange(2 ** check_bits(bits), dtype=torch.float64, device=scale.device)
    return scale.unsqueeze(-1) * torch.exp2(-c * q64.unsqueeze(-1) / ADALOG_R)


def _canonical_codes(levels: torch.Tensor, bits: int) -> torch.Tensor:
    """Code labelling values: the smallest code of each run of equal levels (levels are non-increasing
    in c), the zero code for levels that underflow to 0; ``[..., 2^b + 2]`` (last entry: NaN slot)."""
    zero_code = 2**bits
    vals = levels[..., :zero_code]
    idx = torch.arange(zero_code, device=levels.device).expand_as(vals)
    starts = torch.ones_like(vals, dtype=torch.bool)
    starts[..., 1:] = vals[..., 1:] != vals[..., :-1]
    canon = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=-1).values
    canon = torch.where(vals == 0, torch.full_like(canon, zero_code), canon)
    tail = torch.tensor([zero_code, -1], device=levels.device).expand(vals.shape[:-1] + (2,))
    return torch.cat([canon, tail], dim=-1)


def _scaled_log(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """-log2(min(x/s, 1)) · r in float32 (x/s as the published code; NaN for NaN or negative x)."""
    return torch.div(x, scale).clamp_(max=1.0).log2_().neg_().mul_(ADALOG_R)


def _table_index(u: torch.Tensor, q: torch.Tensor, bits: int) -> torch.Tensor:
    """round(u / q) as a table index: the code 0..2^b-1, 2^b (zero: c >= 2^b, x = 0), 2^b + 1 (NaN)."""
    zero_code = 2**bits
    c = torch.div(u, q).round_().clamp_(max=zero_code)
    return c.nan_to_num_(nan=zero_code + 1).to(torch.int64)


@register_quantizer
class AdaLogQuantizer(Quantizer):
    """AdaLog with fitted ``scale`` (s) and integer ``q`` (base 2^(q/37)), broadcast-shaped like
    :class:`~vitquant.quantizers.UniformQuantizer` (scalar per tensor, e.g. ``[C, 1]`` per channel).

    Non-negative input; NaN or negative input gives NaN in ``forward`` and an error in ``codes``.
    """

    kind: ClassVar[str] = "adalog"
    tensor_dtypes: ClassVar[dict[str, torch.dtype]] = {"scale": torch.float32, "q": torch.int64}

    def __init__(self, bits: int, scale: torch.Tensor, q: torch.Tensor) -> None:
        super().__init__()
        self.bits = check_bits(bits)
        scale = torch.as_tensor(scale, dtype=torch.float32)
        if not torch.isfinite(scale).all() or (scale <= 0).any():
            raise ConfigError("AdaLog scale must be finite and > 0")
        q_int = _as_int_q(q).to(scale.device)
        scale, q_int = torch.broadcast_tensors(scale, q_int)
        levels = adalog_levels(self.bits, scale, q_int)  # [..., 2^b + 1]
        nan_slot = levels.new_full(levels.shape[:-1] + (1,), float("nan"))
        table = torch.cat([levels, nan_slot], dim=-1)
        self.register_buffer("scale", scale.clone(memory_format=torch.contiguous_format))
        self.register_buffer("q", q_int.to(torch.float32).clone(memory_format=torch.contiguous_format))
        self.register_buffer("level_table", table.reshape(-1))
        self.register_buffer("code_table", _canonical_codes(levels, self.bits).reshape(-1))
        rows = scale.numel()
        offsets = torch.arange(rows, dtype=torch.int64, device=scale.device) * table.shape[-1]
        self.register_buffer("row_offset", offsets.reshape(scale.shape))

    @property
    def zero_code(self) -> int:
        return 2**self.bits

    @property
    def max_levels(self) -> int:
        return 2**self.bits + 1

    def levels(self) -> torch.Tensor:
        """Value of every code per row, ``[rows, 2^b + 1]`` (``levels()[row, codes] == forward``)."""
        return self.level_table.reshape(-1, self.zero_code + 2)[:, :-1]

    def _index(self, x: torch.Tensor) -> torch.Tensor:
        """Flat index into the per-row tables of every element of x."""
        idx = _table_index(_scaled_log(x.to(torch.float32), self.scale), self.q, self.bits)
        return idx if self.scale.numel() == 1 else idx.add_(self.row_offset)

    def log_codes(self, x: torch.Tensor) -> torch.Tensor:
        """The raw exponent index c (int64; 2^b for zero) before values are deduplicated."""
        idx = _table_index(_scaled_log(x.to(torch.float32), self.scale), self.q, self.bits)
        if (idx > self.zero_code).any():
            raise NumericalError("AdaLog quantizer got NaN or negative input")
        return idx

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        codes = self.code_table.take(self._index(x))
        if (codes < 0).any():
            raise NumericalError("AdaLog quantizer got NaN or negative input")
        return codes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.level_table.take(self._index(x)).to(x.dtype)

    def to_integer(self, x: torch.Tensor) -> IntegerView:
        """x̂ = fl32(s / D) · T[j] · 2^(-shift) (:func:`table_and_shift`); mantissa 0 for the zero code."""
        c = self.log_codes(x)  # raises on NaN or negative input
        nonzero = c < self.zero_code
        table, shift = table_and_shift(torch.where(nonzero, c, 0), self.q, self.bits)
        unit = torch.ldexp(table.to(torch.float32), -shift)  # as adalog_levels computes it
        exact = unit >= torch.finfo(torch.float32).tiny  # normal: the ldexp dropped no bit of T
        unit_mantissa, unit_shift = dyadic(unit)
        mantissa = torch.where(nonzero, torch.where(exact, table, unit_mantissa), 0)
        shift = torch.where(nonzero, torch.where(exact, shift, unit_shift), 0)
        step = self.scale / table_denominator(self.bits)  # float32, as in adalog_levels
        return IntegerView(mantissa, shift, step.to(torch.float64))

    def extra_repr(self) -> str:
        kind = f"per-channel x{self.scale.numel()}" if self.scale.numel() > 1 else f"q={int(self.q)}"
        return f"bits={self.bits}, r={ADALOG_R}, {kind}, levels={self.max_levels}"


# --------------------------------------------------------------------------- data-only fit


def sort_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows sorted ascending ``[R, M]``, their float64 prefix sums ``[R, M + 1]`` and sums of squares
    ``[R]``: the inputs of :func:`piecewise_sq_error`."""
    ordered = torch.sort(rows, dim=1).values.contiguous()
    prefix = torch.zeros(rows.shape[0], rows.shape[1] + 1, dtype=torch.float64, device=rows.device)
    torch.cumsum(ordered, dim=1, dtype=torch.float64, out=prefix[:, 1:])
    return ordered, prefix, ordered.double().square().sum(dim=1)


def piecewise_sq_error(
    sorted_rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor], bounds: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """Summed squared error ``[K, R]`` of K piecewise-constant quantizers on each row, from sorted rows.

    Candidate k maps x in ``[bounds[k, r, i-1], bounds[k, r, i])`` to ``values[k, r, i]`` (``bounds
    [K, R, B]`` ascending, ``values [K, R, B + 1]``). With bucket counts n and sums S:
    Σ(v - x)² = Σx² + Σ_buckets (n·v² - 2·v·S), so each candidate costs O(B log M), not O(M). Inputs
    equal to a bound go to the upper bucket; only inputs within rounding of a bound can be bucketed
    differently from the quantizer's own float32 arithmetic.
    """
    ordered, prefix, total_sq = sorted_rows
    k, n_r, n_b = bounds.shape
    queries = bounds.to(ordered.dtype).permute(1, 0, 2).reshape(n_r, k * n_b).contiguous()
    pos = torch.searchsorted(ordered, queries).reshape(n_r, k, n_b)
    first = torch.zeros(n_r, k, 1, dtype=pos.dtype, device=pos.device)
    edges = torch.cat([first, pos, torch.full_like(first, ordered.shape[1])], dim=-1)  # [R, K, B + 2]
    cum = prefix.gather(1, edges.reshape(n_r, -1)).reshape(edges.shape)
    count = edges.diff(dim=-1).permute(1, 0, 2).to(torch.float64)
    total = cum.diff(dim=-1).permute(1, 0, 2)
    v = values.to(torch.float64)
    return total_sq + (count * v * v - 2 * v * total).sum(dim=-1)


def adalog_sq_error(rows: torch.Tensor, scales: torch.Tensor, qs: torch.Tensor, bits: int) -> torch.Tensor:
    """Summed squared fake-quant error of every row ``[R, M]`` for every (s, q): ``[S, Q, R]``.

    ``scales`` is ``[S, R]`` (> 0), ``qs`` ``[Q]`` integers. Table-form levels as :class:`AdaLogQuantizer`;
    code c covers x/s in [2^(-(c+1/2)q/r), 2^(-(c-1/2)q/r)) (:func:`piecewise_sq_error` on sorted rows).
    """
    levels = adalog_levels(bits, scales.unsqueeze(1), qs.reshape(1, -1, 1))  # [S, Q, R, 2^b + 1]
    n_s, n_q, n_r, _ = levels.shape
    c = torch.arange(2**bits - 1, -1, -1, dtype=torch.float64, device=rows.device)  # smallest level first
    q64 = qs.to(torch.float64).reshape(1, -1, 1, 1)
    bounds = scales.to(torch.float64).reshape(n_s, 1, n_r, 1) * torch.exp2(-(c + 0.5) * q64 / ADALOG_R)
    values = torch.cat([levels[..., -1:], levels[..., :-1].flip(-1)], dim=-1)  # 0, then levels ascending
    k = n_s * n_q
    err = piecewise_sq_error(sort_rows(rows), bounds.reshape(k, n_r, -1), values.reshape(k, n_r, -1))
    return err.reshape(n_s, n_q, n_r)


def fit_adalog_params(rows: torch.Tensor, bits: int) -> Params:
    """Per-row (s, q): s among the 0.999/0.9999/0.99999 quantiles and the max, q in 10, 19, .., 136,
    the pair with the least squared error (first on ties). All-zero rows: s = 1, q = 37."""
    from vitquant.search.quantiles import row_quantiles

    top = rows.amax(dim=1)
    cand = torch.cat([row_quantiles(rows, list(INIT_PERCENTILES)), top.unsqueeze(0)])  # [S, R]
    usable = torch.isfinite(cand) & (cand > 0)
    safe = torch.where(usable, cand, torch.ones_like(cand))
    qs = torch.tensor(INIT_Q, dtype=torch.float32, device=rows.device)
    err = adalog_sq_error(rows, safe, qs, bits)  # [S, Q, R]
    err = torch.where(usable.unsqueeze(1), err, torch.full_like(err, float("inf")))
    best = err.reshape(-1, rows.shape[0]).argmin(dim=0)  # first minimum in (s, q) order
    r_idx = torch.arange(rows.shape[0], device=rows.device)
    scale = safe[best // len(INIT_Q), r_idx]
    q = qs[best % len(INIT_Q)]
    degenerate = ~(top > 0)
    scale = torch.where(degenerate, torch.ones_like(scale), scale)
    q = torch.where(degenerate, torch.full_like(q, float(ADALOG_R)), q)
    return {"scale": scale, "q": q}


def positive_quantile(rows: torch.Tensor, p: float) -> torch.Tensor:
    """The p-quantile (linear interpolation) of each row's positive entries, ``[R]`` (0 if none)."""
    n_pos = (rows > 0).sum(dim=1)
    n = n_pos.clamp(min=1).to(torch.float64)
    rank = p * (n - 1)  # ascending among the positives
    lo, hi = rank.floor(), rank.ceil()
    weight = (rank - lo).to(rows.dtype)
    # the positives are the n_pos largest entries: ascending rank k is descending index n - 1 - k
    d_lo, d_hi = (n - 1 - lo).to(torch.int64), (n - 1 - hi).to(torch.int64)
    top = torch.topk(rows, int(d_lo.max()) + 1, dim=1).values
    low, high = top.gather(1, d_lo.unsqueeze(1))[:, 0], top.gather(1, d_hi.unsqueeze(1))[:, 0]
    out = torch.lerp(low, high, weight)
    return torch.where(n_pos > 0, out, torch.zeros_like(out))


@register_spec
@dataclass(frozen=True, kw_only=True)
class AdaLogSpec(QuantSpec):
    """AdaLog (ECCV 2024): (s, q) by a quantile x base MSE fit, or searched over q in 10..137 (discrete)
    and 32 scales from the 0.9 quantile of the positive entries to the max (continuous, refinable)."""

    kind: ClassVar[str] = "adalog"
    nonnegative: ClassVar[bool] = True
    refinable: ClassVar[tuple[str, ...]] = ("scale",)

    @property
    def format_name(self) -> str:
        return "AdaLog"

    @property
    def max_levels(self) -> int:
        return 2**self.bits + 1

    def initialize(self, rows: torch.Tensor, where: str) -> Params:
        return fit_adalog_params(rows, self.bits)

    def grid(self, rows: torch.Tensor, init: Params) -> Params:
        top = rows.amax(dim=1)
        degenerate = ~(top > 0)
        top = torch.where(degenerate, torch.ones_like(top), top)
        low = positive_quantile(rows, 0.9).clamp(min=torch.finfo(torch.float32).tiny)
        low = torch.where(degenerate, top, low)
        t = torch.linspace(0, 1, SEARCH_SCALES, device=rows.device).unsqueeze(1)
        q = torch.tensor(SEARCH_Q, dtype=torch.float32, device=rows.device).unsqueeze(1)
        return {"scale": low + t * (top - low), "q": q.expand(-1, rows.shape[0])}

    def build(self, params: Params, shape: tuple[int, ...]) -> AdaLogQuantizer:
        return AdaLogQuantizer(self.bits, params["scale"].reshape(shape), params["q"].reshape(shape))
