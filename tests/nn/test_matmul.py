"""QuantMatMul: ``products`` is a use of the operands, so the module's forward pre-hooks see it."""

from __future__ import annotations

import torch

from vitquant.nn.matmul import QuantMatMul


def test_products_runs_the_forward_pre_hooks_plain_and_with_kwargs():
    m = QuantMatMul("matmul_input", "matmul_input")
    seen: list[tuple[str, tuple[int, ...]]] = []
    m.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(("kwargs", args[0].shape)), with_kwargs=True)
    m.register_forward_pre_hook(lambda mod, args: seen.append(("plain", args[1].shape)))
    a, b = torch.randn(1, 2, 4, 3), torch.randn(1, 2, 3, 4)
    assert m.products(a, b) is None  # points still float: no integer product
    assert seen == [("kwargs", a.shape), ("plain", b.shape)]
