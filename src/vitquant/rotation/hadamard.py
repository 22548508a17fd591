"""Hadamard matrices and the residual-stream rotations built from them.

A Hadamard matrix H of order n has entries ±1 and ``H Hᵀ = n I``. :func:`hadamard` builds one as a
Kronecker product of Sylvester's ``[[1, 1], [1, -1]]`` powers and a Paley (type I) matrix of order
``q + 1`` for a prime ``q ≡ 3 (mod 4)`` (orders 4, 8, 12, 20, 24, 32, 44, 48, ...: DeiT's 192 = 16·12,
384 = 32·12, 768 = 64·12; ViT-L's 1024 = 2^10).

:func:`rotation` gives an orthogonal Q with ``Q·1 = 1``: a rotation that keeps the all-ones direction,
so a residual stream whose tokens have zero mean over the channels keeps zero mean once rotated and
LayerNorm's centring stays a no-op (QuaRot and SpinQuant use RMSNorm; ViTs keep LayerNorm).
``Q = U S Uᵀ`` with ``U = H/√n`` (its first column made all ones) and ``S = diag(1, ±1, ...)`` seeded
random signs: a dense matrix with entries of about ``1/√n``, spreading an outlier channel over all.
Without a Hadamard matrix of the order (``kind="orthogonal"``, or no construction known), U is a seeded
random orthogonal matrix whose first column is ``1/√n``.
"""

from __future__ import annotations

import math

import torch

from vitquant.errors import ConfigError

ROTATIONS = ("hadamard", "orthogonal")  # the constructions :func:`rotation` knows


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % p for p in range(2, int(math.isqrt(q)) + 1))


def _paley(q: int) -> torch.Tensor:
    """Paley type I Hadamard matrix of order q + 1 (q prime, q ≡ 3 mod 4)."""
    squares = {(i * i) % q for i in range(1, q)}
    chi = torch.tensor([0] + [1 if r in squares else -1 for r in range(1, q)], dtype=torch.float64)
    idx = torch.arange(q)
    jacobsthal = chi[(idx.unsqueeze(0) - idx.unsqueeze(1)) % q]  # Q[i, j] = χ(j - i), skew-symmetric
    s = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    s[0, 1:] = 1
    s[1:, 0] = -1
    s[1:, 1:] = jacobsthal
    return torch.eye(q + 1, dtype=torch.float64) + s


def hadamard(n: int) -> torch.Tensor | None:
    """A Hadamard matrix of order ``n`` (float64 ±1), or None when none of the constructions gives one."""
    if n < 1:
        raise ConfigError(f"a Hadamard matrix needs an order of at least 1, got {n}")
    for m in [1] + [q + 1 for q in range(3, n, 4) if _is_prime(q)]:
        if n % m == 0 and (n // m) & (n // m - 1) == 0:
            h = torch.ones(1, 1, dtype=torch.float64) if m == 1 else _paley(m - 1)
            two = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
            for _ in range((n // m).bit_length() - 1):
                h = torch.kron(two, h)
            return h
    return None


def rotation(n: int, kind: str = "hadamard", seed: int = 0) -> tuple[torch.Tensor, str]:
    """An orthogonal ``Q`` (float64, n x n) with ``Q·1 = 1`` and the construction used
    (``"hadamard"``, or ``"orthogonal"`` where asked for or where no Hadamard matrix of order n is known)."""
    if kind not in ROTATIONS:
        raise ConfigError(f"unknown rotation {kind!r}; choose one of {', '.join(ROTATIONS)}")
    gen = torch.Generator().manual_seed(seed)
    h = hadamard(n) if kind == "hadamard" else None
    if h is not None:
        u = (h * h[:, :1]) / math.sqrt(n)  # rows signed so that the first column is all ones
        used = "hadamard"
    else:  # a random orthogonal basis whose first vector is 1/√n
        a = torch.randn(n, n, generator=gen, dtype=torch.float64)
        a[:, 0] = 1.0
        u, r = torch.linalg.qr(a)
        u = u * torch.sign(torch.diagonal(r)).unsqueeze(0)
        used = "orthogonal"
    signs = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).to(torch.float64)
    signs[0] = 1.0
    return (u * signs) @ u.T, used
