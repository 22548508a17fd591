"""row_quantiles must reproduce torch.quantile bit for bit (linear interpolation)."""

from __future__ import annotations

import pytest
import torch

from vitquant.search.percentile_mse import PERCENTILES
from vitquant.search.quantiles import row_quantiles

pytestmark = pytest.mark.usefixtures("single_thread")


REPQ = list(PERCENTILES)
MIRRORS = [1.0 - p for p in PERCENTILES]
ALL_QS = [
    REPQ,
    MIRRORS,
    REPQ + MIRRORS,
    [0.0, 0.25, 0.5, 0.75, 1.0],
    [0.001, 0.1, 0.49999, 0.5, 0.50001, 0.9, 0.999],
]
SHAPES = [(1, 1), (1, 7), (3, 1000), (1, 70_000), (1, 300_000)]


def _torch_reference(x: torch.Tensor, qs: list[float]) -> torch.Tensor:
    return torch.quantile(x, torch.tensor(qs, dtype=x.dtype), dim=-1)


def _make(kind: str, shape: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    r, m = shape
    if kind == "normal":
        return torch.randn(r, m, generator=gen)
    if kind == "rounded":  # heavy ties: few distinct values
        return (torch.randn(r, m, generator=gen) * 2).round()
    if kind == "zeros":  # mostly exact zeros, a few positive values
        x = torch.rand(r, m, generator=gen)
        return torch.where(x < 0.95, torch.zeros_like(x), x)
    if kind == "softmax":  # attention-like rows, concatenated
        width = min(m, 197)
        logits = torch.randn(r, (m + width - 1) // width, width, generator=gen) * 3
        return torch.softmax(logits, dim=-1).reshape(r, -1)[:, :m].contiguous()
    if kind == "constant":
        return torch.full((r, m), 2.5)
    if kind == "two_values":  # ties exactly at the tail threshold
        x = torch.zeros(r, m)
        x[:, : max(1, m // 1000)] = 1.0
        return x
    if kind == "heavy_tail":
        return torch.randn(r, m, generator=gen) ** 5
    raise AssertionError(kind)


KINDS = ["normal", "rounded", "zeros", "softmax", "constant", "two_values", "heavy_tail"]


@pytest.mark.parametrize("prefilter", [False, True], ids=["topk", "prefilter"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", KINDS)
def test_equals_torch_quantile(shape, kind, prefilter, monkeypatch):
    from vitquant.search import quantiles

    if prefilter:  # long rows take the prefiltered path (by default only rows of millions do)
        monkeypatch.setattr(quantiles, "_PREFILTER_MIN", 1 << 16)
    gen = torch.Generator().manual_seed(1000 * KINDS.index(kind) + SHAPES.index(shape))
    x = _make(kind, shape, gen)
    # shuffle the rows so the sorted order is not the storage order
    x = x[:, torch.randperm(shape[1], generator=gen)]
    union = sorted({q for qs in ALL_QS for q in qs})
    reference = _torch_reference(x, union)  # one sort for all quantile lists
    for qs in ALL_QS:
        got = row_quantiles(x, qs)
        expected = reference[[union.index(q) for q in qs]]
        assert got.shape == (len(qs), shape[0])
        assert got.dtype == x.dtype
        assert torch.equal(got, expected), (kind, shape, qs, (got - expected).abs().max())


@pytest.mark.parametrize("prefilter_min", [1 << 16, None])
@pytest.mark.parametrize("shape", [(2, 500), (1, 100_000)])
def test_equals_torch_quantile_float64(shape, prefilter_min, monkeypatch):
    from vitquant.search import quantiles

    if prefilter_min is not None:  # also the prefiltered path on the long row
        monkeypatch.setattr(quantiles, "_PREFILTER_MIN", prefilter_min)
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    for qs in ALL_QS:
        assert torch.equal(row_quantiles(x, qs), _torch_reference(x, qs))


def test_long_row_where_prefilter_finds_too_few(monkeypatch):
    """Sorted-ascending data: the strided subsample is unrepresentative of the tail."""
    from vitquant.search import quantiles

    monkeypatch.setattr(quantiles, "_PREFILTER_MIN", 1 << 16)  # prefilter this 300k-element row
    x = torch.cat([torch.zeros(299_990), torch.arange(1, 11, dtype=torch.float32)]).reshape(1, -1)
    for qs in ALL_QS:
        assert torch.equal(row_quantiles(x, qs), _torch_reference(x, qs))
    x = -x.flip(-1)
    for qs in ALL_QS:
        assert torch.equal(row_quantiles(x, qs), _torch_reference(x, qs))


@pytest.mark.parametrize("shape", [(5,), (3, 0), (0, 0), (2, 3, 4), ()])
def test_rejects_non_2d_or_empty(shape):
    with pytest.raises(ValueError):
        row_quantiles(torch.zeros(shape), [0.5])


def test_zero_rows_give_empty_result():
    # Rows of length 3 but no rows: nothing to compute, one (empty) column per row.
    out = row_quantiles(torch.zeros(0, 3), [0.5, 0.999])
    assert out.shape == (2, 0)


@pytest.mark.parametrize("q", [-0.1, 1.5, float("nan")])
def test_rejects_bad_quantile(q):
    with pytest.raises(ValueError):
        row_quantiles(torch.rand(2, 10), [q])


def test_extreme_range_integer_rank():
    x = torch.tensor([[-3e38, 3e38, 3e38]])
    assert torch.equal(row_quantiles(x, [0.0]), _torch_reference(x, [0.0]))
