"""Exact products of integer matrices: ``a @ b`` accumulated without error, returned as int64.

Two backends return the same integers:

- ``"int"``: torch's int64 matmul, no float anywhere (the reference, and the strict backend);
- ``"float"``: float GEMMs on the integers, exact by this bound. Let ``|a| <= A``, ``|b| <= B`` and K
  be the contracted size. Every product a_ik·b_kj is an integer of magnitude <= A·B, so every partial
  sum of at most K of them, in whatever order, blocking or use of FMA the GEMM picks, is an integer of
  magnitude <= K·A·B. A binary float with a p-bit significand holds every integer of magnitude <= 2^p,
  and IEEE multiply, add and FMA return the exact result whenever it is representable; so a GEMM whose
  partial sums all stay below 2^p is exact (p = 24 for float32, 53 for float64). The plan
  (:func:`exact_float_plan`):

      K·A·B < 2^24     one float32 GEMM
      A·B   < 2^24     float32 GEMMs over chunks of k_c = floor((2^24 - 1) / (A·B)) products
      K·A·B < 2^53     one float64 GEMM
      A·B   < 2^53     float64 GEMMs over chunks of floor((2^53 - 1) / (A·B)) products
      otherwise        refused (a single product may be inexact)

  and the chunk results, exact integers, are summed in int64. It needs IEEE float32 GEMMs: a torch set
  to TF32 or bfloat16 float32 matmuls is refused.

Both backends need K·A·B < 2^63 (plus the bias bound for :func:`int_linear`), so no partial sum can
overflow int64.

:class:`Int8Linear` is a third exact form for a linear layer whose activations and weight rows each span
at most 256 integers (every 8-bit code range): both are shifted into int8 and multiplied by torch's int8
GEMM with int32 accumulation (``torch._int_mm``; several times faster than a float32 GEMM on CPUs with
VNNI), the shifts undone by a per-token and a per-channel correction (its docstring). The bounds are declared (``a_bound``, ``b_bound``: the inputs are checked against them
with one min/max pass, O(size) against the GEMM's O(M·K·N)) or measured with the same pass.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from vitquant.errors import ConfigError, DtypeError, RangeError

#: integer dtypes the products accept (all cast to int64 without loss)
INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
GEMM_BACKENDS = ("int", "float")
#: float32 / float64 hold every integer of magnitude <= 2^24 / 2^53; the plan keeps sums below these
FLOAT32_EXACT = 2**24
FLOAT64_EXACT = 2**53
INT64_LIMIT = 2**63


class FloatPlan(NamedTuple):
    """GEMMs in ``dtype`` over ``chunk`` products of the contracted axis at a time (``chunk >= K``: one GEMM)."""

    dtype: torch.dtype
    chunk: int


def exact_float_plan(k: int, a_bound: int, b_bound: int) -> FloatPlan:
    """The float plan for K products of magnitude <= A·B: ``chunk · A·B < 2^p`` (p = 24 for float32,
    53 for float64), float32 whenever ``A·B < 2^24``; :class:`RangeError` when ``A·B >= 2^53``."""
    if min(k, a_bound, b_bound) < 0:
        raise ConfigError(f"contracted size and bounds must be >= 0, got K={k}, A={a_bound}, B={b_bound}")
    ab = a_bound * b_bound
    for dtype, limit in ((torch.float32, FLOAT32_EXACT), (torch.float64, FLOAT64_EXACT)):
        if k * ab < limit:
            return FloatPlan(dtype, k)
        if ab < limit:
            return FloatPlan(dtype, (limit - 1) // ab)
    raise RangeError(f"|a|·|b| may reach {a_bound}·{b_bound} >= 2^53: no float GEMM holds one product exactly")


def int_matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    backend: str = "int",
    a_bound: int | None = None,
    b_bound: int | None = None,
) -> torch.Tensor:
    """Exact ``a @ b`` of integer tensors as int64, batched and broadcast like :func:`torch.matmul`.

    ``|a| <= a_bound``, ``|b| <= b_bound`` (checked; measured when None) and K·A·B < 2^63; the
    ``"float"`` backend follows :func:`exact_float_plan` (module docstring for the bound).
    """
    k, a_max, b_max = _resolve(a, b, backend, (a_bound, b_bound), ("a", "b"))
    return _product(a, b, backend, k, a_max, b_max)


def int_linear(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    backend: str = "int",
    x_bound: int | None = None,
    w_bound: int | None = None,
) -> torch.Tensor:
    """Exact ``x @ wᵀ + bias`` as int64 for integer weights ``w`` of shape [out, in] and ``bias`` [out].

    Needs K·X·W + max|bias| < 2^63; otherwise as :func:`int_matmul`.
    """
    _check_integer(w, "w")
    if w.dim() != 2:
        raise ConfigError(f"int_linear needs weights of shape [out, in], got {tuple(w.shape)}")
    bias_max = 0
    if bias is not None:
        _check_integer(bias, "bias")
        bias_max = _bound(bias, None, "bias")
    k, x_max, w_max = _resolve(x, w.mT, backend, (x_bound, w_bound), ("x", "w"), bias_max)
    out = _product(x, w.mT, backend, k, x_max, w_max)
    return out if bias is None else out.add_(bias.to(torch.int64))


def _resolve(
    a: torch.Tensor,
    b: torch.Tensor,
    backend: str,
    declared: tuple[int | None, int | None],
    names: tuple[str, str],
    extra: int = 0,
) -> tuple[int, int, int]:
    """Check dtypes, shapes and bounds; return (K, A, B) with K·A·B + extra < 2^63."""
    if backend not in GEMM_BACKENDS:
        raise ConfigError(f"unknown integer GEMM backend {backend!r}; choose from {', '.join(GEMM_BACKENDS)}")
    for t, name in zip((a, b), names):
        _check_integer(t, name)
    if a.dim() == 0 or b.dim() == 0:
        raise ConfigError(f"matmul needs tensors of at least one dimension, got {tuple(a.shape)} @ {tuple(b.shape)}")
    k = a.shape[-1]
    if b.shape[_contracted_axis(b)] != k:
        raise ConfigError(f"contracted sizes differ: {names[0]} {tuple(a.shape)}, {names[1]} {tuple(b.shape)}")
    a_max = _bound(a, declared[0], names[0])
    b_max = _bound(b, declared[1], names[1])
    if k * a_max * b_max + extra >= INT64_LIMIT:
        raise RangeError(
            f"K·|{names[0]}|·|{names[1]}| = {k}·{a_max}·{b_max} (+ {extra}) reaches 2^63: int64 accumulation could overflow"
        )
    return k, a_max, b_max


def _product(a: torch.Tensor, b: torch.Tensor, backend: str, k: int, a_max: int, b_max: int) -> torch.Tensor:
    """``a @ b`` as int64 for checked inputs (see :func:`_resolve`)."""
    if backend == "int":
        return torch.matmul(a.to(torch.int64), b.to(torch.int64))
    plan = exact_float_plan(k, a_max, b_max)
    if plan.dtype == torch.float32:
        require_ieee_float32(a.device)
    return planned_matmul(a, b, plan)


def planned_matmul(a: torch.Tensor, b: torch.Tensor, plan: FloatPlan) -> torch.Tensor:
    """``a @ b`` as int64 by ``plan``, made for the bounds of these integer-valued tensors and their
    contracted size, with IEEE float32 GEMMs (:func:`require_ieee_float32`): the caller's proof, nothing
    is checked here. One GEMM, or chunk GEMMs whose exact results are summed in int64."""
    af, bf = a.to(plan.dtype), b.to(plan.dtype)
    k = a.shape[-1]
    if plan.chunk >= k:
        return torch.matmul(af, bf).to(torch.int64)
    axis = _contracted_axis(b)
    out = None
    for start in range(0, k, plan.chunk):
        size = min(plan.chunk, k - start)
        part = torch.matmul(af.narrow(-1, start, size), bf.narrow(axis, start, size)).to(torch.int64)
        out = part if out is None else out.add_(part)
    return out


def exact_limit(dtype: torch.dtype) -> int:
    """2^24 for float32, 2^53 for float64: every integer of smaller magnitude is exact in ``dtype``."""
    return FLOAT32_EXACT if dtype == torch.float32 else FLOAT64_EXACT


def _contracted_axis(b: torch.Tensor) -> int:
    """The axis of the right operand that matmul contracts (rows, or the only axis of a vector)."""
    return -2 if b.dim() > 1 else 0


def _check_integer(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dtype not in INT_DTYPES:
        kind = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        allowed = ", ".join(str(d).removeprefix("torch.") for d in INT_DTYPES)
        raise DtypeError(f"{name}: exact integer matmul takes integer tensors ({allowed}), got {kind}")


def _bound(x: torch.Tensor, declared: int | None, name: str) -> int:
    """max |x| as a Python int: ``declared`` once ``x`` is checked against it, else measured."""
    lo, hi = (int(v) for v in torch.aminmax(x)) if x.numel() else (0, 0)
    if declared is None:
        return max(hi, -lo)
    if declared < 0:
        raise ConfigError(f"{name}: a bound on |{name}| must be >= 0, got {declared}")
    if lo < -declared or hi > declared:
        raise RangeError(f"{name} holds values in [{lo}, {hi}], outside the declared bound |{name}| <= {declared}")
    return declared


def require_ieee_float32(device: torch.device) -> None:
    """Raise if torch may run float32 GEMMs on ``device`` in TF32 or bfloat16 (10 or 7 significand
    bits: the exactness bound above assumes IEEE float32)."""
    matmul = torch.backends.cuda.matmul if device.type == "cuda" else torch.backends.mkldnn.matmul
    precision = getattr(matmul, "fp32_precision", None)
    if precision == "none":  # inherits the global setting
        precision = getattr(torch.backends, "fp32_precision", "none")
    if precision is None:  # torch before the fp32_precision settings
        precision = "ieee" if torch.get_float32_matmul_precision() == "highest" else "reduced"
    if precision not in ("ieee", "none"):
        raise ConfigError(
            f"the float GEMM backend needs IEEE float32 matmuls, but torch runs them as {precision!r} on "
            f"{device.type}; use backend='int' or restore torch.set_float32_matmul_precision('highest')"
        )


INT8_SPAN = 256  # an int8 holds 256 consecutive integers
INT32_LIMIT = 2**31


@functools.cache
def int8_gemm_available() -> bool:
    """Whether ``torch._int_mm`` (int8 x int8 -> int32) runs on the CPU here, exactly (checked once)."""
    mm = getattr(torch, "_int_mm", None)
    if mm is None:
        return False
    a = torch.tensor([[-128, 127, 3], [5, -7, 127]], dtype=torch.int8)
    b = torch.tensor([[-128, 1], [-128, 2], [127, -128]], dtype=torch.int8)
    try:
        out = mm(a, b)
    except (RuntimeError, NotImplementedError):
        return False
    return out.dtype == torch.int32 and torch.equal(out.to(torch.int64), a.to(torch.int64) @ b.to(torch.int64))


class Int8Linear:
    """``x @ Wᵀ + b`` exactly, by one int8 GEMM with int32 accumulation, for integer activations in
    ``lo..hi`` (``hi - lo < 256``) and weights ``W`` [N, K] whose rows each span fewer than 256 values:

        x' = x + c,  c = -128 - lo;      W'_n = W_n + d_n,  d_n = -128 - min(W_n)     (all in [-128, 127])
        x·W_nᵀ + b_n = x'·W'_nᵀ - d_n·Σ_k x'_k + (b_n - c·Σ_k W'_nk + K·c·d_n)

    The GEMM's sums are at most K·2^14 in magnitude (K < 2^17 keeps them in int32); the corrections run
    in int32 when ``K·2^14 + K·2^7·max|d| + max|constant|`` stays below 2^31, else in int64.
    :meth:`fits` says whether the ranges allow it.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, lo: int, hi: int) -> None:
        if not self.fits(weight, lo, hi):
            raise RangeError(f"int8 GEMM: activations {lo}..{hi} or weight rows span more than 256 integers")
        w = weight.to(torch.int64)
        k = w.shape[1]
        self.c = -128 - lo
        d = -128 - w.min(dim=1).values
        w8 = w + d.unsqueeze(1)
        const = -self.c * w8.sum(dim=1) + k * self.c * d + (0 if bias is None else bias.to(torch.int64))
        wide = k * 2**14 + k * 2**7 * int(d.abs().max()) + int(const.abs().max()) >= INT32_LIMIT
        self.acc = torch.int64 if wide else torch.int32
        self.weight_t = w8.to(torch.int8).transpose(0, 1)  # [K, N], the GEMM's right operand
        self.d, self.const = d.to(self.acc), const.to(self.acc)

    @staticmethod
    def fits(weight: torch.Tensor, lo: int, hi: int) -> bool:
        """Activations ``lo..hi`` and each row of ``weight`` span at most 256 integers (K < 2^17)."""
        if weight.dim() != 2 or weight.numel() == 0 or weight.shape[1] >= 2**17 or hi - lo >= INT8_SPAN:
            return False
        return int((weight.max(dim=1).values - weight.min(dim=1).values).max()) < INT8_SPAN

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The exact product for integers ``x`` [..., K] within the range given (not checked), as the
        accumulation dtype (int32, or int64 where the corrections need it)."""
        shape = x.shape
        x8 = (x + self.c).to(torch.int8).reshape(-1, shape[-1])
        acc = torch._int_mm(x8, self.weight_t).to(self.acc)
        rows = x8.sum(dim=1, keepdim=True, dtype=self.acc)
        out = acc.sub_(rows * self.d).add_(self.const)
        return out.reshape(*shape[:-1], out.shape[-1])
