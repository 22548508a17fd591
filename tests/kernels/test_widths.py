"""Kernel output widths and input contracts (issue: integer-only at 4 bits).

- Softmax output width: the I-ViT and I-BERT softmax kernels floor each probability onto ``out_bits``
  bits, so a row of L logits loses less than L steps of its mass: at most ``L · 2^-(k-1)`` (I-ViT) or
  ``L · 2^-k`` (I-BERT). At 16 bits that is under 1 % of the mass for DeiT's 197 tokens; at 8 bits the
  bound is the whole row, and on peaky attention rows most of it is lost in fact.
- Input contract: the point in front of a GELU/LayerNorm kernel emits integers the kernel accepts
  (``|x| < input_limit``) at the default width, 16 bits.
"""

import pytest
import torch

from vitquant.kernels import FLOAT, INT, make_kernel
from vitquant.kernels.base import kernel_choices
from vitquant.nonlinear import SOFTMAX_OUT_BITS, NonlinearConfig

TOKENS = 197


def _attention_logits(seed: int = 0) -> tuple[torch.Tensor, float]:
    """Integer q@kᵀ-like logits [1, 3, 197, 197] with peaky rows (a few tokens far above the rest)."""
    gen = torch.Generator().manual_seed(seed)
    scale = 2e-3
    logits = torch.randn(1, 3, TOKENS, TOKENS, generator=gen) * 2.0
    logits[..., :3] += 8.0  # most of each row's mass on three tokens, as in real attention heads
    return torch.round(logits / scale).to(torch.int64), scale


@pytest.mark.parametrize("family", ["ivit", "ibert"])
@pytest.mark.parametrize("bits", [8, 12, 16])
def test_softmax_mass_kept_within_the_floor_bound(family, bits):
    x, scale = _attention_logits()
    kernel = make_kernel(family, "softmax", out_bits=bits)
    y, y_scale = kernel(x, torch.tensor(scale, dtype=torch.float64), INT)
    step = float(y_scale)
    mass = y.double().sum(-1) * step
    exact_mass = 1.0
    assert float(mass.max()) <= exact_mass + 1e-9
    # I-ViT: ⌊E·2^(k-1)/ΣE⌋, the exact fractions sum to 1; I-BERT: the factor ⌊2^40/Σe⌋ floors too
    bound = TOKENS * step + (TOKENS * 2.0**-24 if family == "ibert" else 0.0)
    assert float((exact_mass - mass).max()) <= bound
    # the integers match the float64 simulation bit for bit at every width
    y_sim, _ = kernel(x.double(), torch.tensor(scale, dtype=torch.float64), FLOAT)
    assert torch.equal(y_sim.to(torch.int64), y)


@pytest.mark.parametrize("family", ["ivit", "ibert"])
def test_sixteen_bit_softmax_keeps_the_row_mass_where_eight_bits_loses_it(family):
    x, scale = _attention_logits(1)
    s = torch.tensor(scale, dtype=torch.float64)
    kept = {}
    for bits in (8, 16):
        y, y_scale = make_kernel(family, "softmax", out_bits=bits)(x, s, INT)
        kept[bits] = float((y.double().sum(-1) * float(y_scale)).mean())
    assert kept[16] >= 0.99
    assert kept[8] < kept[16] - 0.04  # measured on these rows: 0.928 vs 0.998 (I-ViT), 0.948 vs 0.999 (I-BERT)


def test_default_softmax_widths_are_the_published_or_measured_ones():
    cfg = NonlinearConfig.everywhere("mixed")
    for family in kernel_choices("softmax"):
        kernel = make_kernel(family, "softmax", **cfg.kernel_options(family, "softmax"))
        assert kernel.out_bits == SOFTMAX_OUT_BITS[family]
    assert make_kernel("ivit", "softmax", **cfg.kernel_options("ivit", "softmax")).out_bits == 16


@pytest.mark.parametrize("op", ["gelu", "layernorm"])
def test_default_kernel_input_points_fit_every_kernels_input_limit(op):
    """The point in front of each kernel, at the default width, emits integers the kernel accepts,
    including clamped held-out outliers far beyond the calibration range."""
    cfg = NonlinearConfig.everywhere("mixed")
    gen = torch.Generator().manual_seed(0)
    calib = torch.randn(4, 197, 192, generator=gen) * 5
    for family in kernel_choices(op):
        kernel = make_kernel(family, op)
        spec = cfg.input_spec(kernel.input_format)
        assert spec.bits == 16
        q = spec.fit(calib, axis=-1 if spec.granularity == "channel" else None)
        held_out = calib * 100  # clamps
        ints, scale = q.integer_view(q(held_out))
        c = calib.shape[-1]
        args = (torch.ones(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)) if op == "layernorm" else ()
        if op == "layernorm":
            prepared = kernel.prepare(scale.reshape(-1) if scale.numel() > 1 else scale, FLOAT, *args, c)
        else:
            prepared = kernel.prepare(scale, FLOAT)
        prepared.check(ints)  # raises ConfigError beyond the kernel's input limit
        assert int(ints.abs().max()) < prepared.input_limit
