"""Swin as an integer program: layout ops against timm, the bias and mask on the q·kᵀ grid, the three
executors bit for bit, agreement with the fake-quantized model, the saved file, and what is refused."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

import conftest
from integer_cases import qconfig_for
from vitquant.calibration import quantize_model
from vitquant.errors import ConfigError
from vitquant.integer import convert_model
from vitquant.integer.convert_swin import convert_swin, logit_bias
from vitquant.integer.execute import IntegerModel, load
from vitquant.integer.ops import OPS, Context
from vitquant.kernels.arith import FLOAT, INT
from vitquant.nn.int_tensor import IntTensor
from vitquant.nonlinear import NonlinearConfig
from vitquant.qconfig import repq_vit_qconfig

CASES = ("w8a8-uniform", "w8a8-mixed", "w4a4-bitlog2")


@functools.lru_cache(maxsize=None)
def calibrated_swin(case: str):
    """(calibrated tiny Swin, its integer program, held-out images); see ``integer_cases.qconfig_for``."""
    torch.manual_seed(0)
    calib = conftest.images(8, conftest.SWIN_IMG, seed=1)
    qmodel = quantize_model(conftest.make_swin(), calib, qconfig_for(case)).model
    return qmodel, convert_model(qmodel), conftest.images(16, conftest.SWIN_IMG, seed=2)


@pytest.mark.parametrize("arith", [INT, FLOAT], ids=["int", "float"])
def test_layout_ops_are_timms(arith):
    from timm.models.swin_transformer import PatchMerging, window_partition, window_reverse

    ctx = Context(arith)
    x = torch.randint(-1000, 1000, (2, 14 * 14, 5), generator=torch.Generator().manual_seed(0))
    grid = x.reshape(2, 14, 14, 5)
    attrs = {"height": 14, "width": 14}
    run = lambda kind, t, **more: OPS[kind]([arith.tensor(t)], {}, {**attrs, **more}, ctx).to(torch.int64)  # noqa: E731
    rolled = run("roll", x, shifts=[-3, -2])
    assert torch.equal(rolled, torch.roll(grid, shifts=(-3, -2), dims=(1, 2)).reshape(x.shape))
    assert torch.equal(run("roll", rolled, shifts=[3, 2]), x)
    windows = run("window_partition", x, window=[7, 7])
    assert torch.equal(windows, window_partition(grid, (7, 7)).reshape(-1, 49, 5))
    assert torch.equal(run("window_reverse", windows, window=[7, 7]), x)
    assert torch.equal(window_reverse(windows.reshape(-1, 7, 7, 5), (7, 7), 14, 14).reshape(x.shape), x)
    merge = PatchMerging(5)
    merge.norm, merge.reduction = nn.Identity(), nn.Identity()
    assert torch.equal(run("patch_merge", x), merge(grid).reshape(2, 49, 20))
    bias = torch.arange(4 * 2 * 3 * 3).reshape(4, 2, 3, 3)  # 4 windows per image, 2 heads
    logits = torch.zeros(8, 2, 3, 3, dtype=torch.int64)  # 2 images
    out = OPS["window_bias"]([arith.tensor(logits)], {"value": bias}, {}, ctx).to(torch.int64)
    assert torch.equal(out, bias.repeat(2, 1, 1, 1))
    assert torch.equal(OPS["sum_tokens"]([arith.tensor(x)], {}, {}, ctx).to(torch.int64), x.sum(dim=1))


def _zeroed(products):
    """``products`` with its integers zeroed (the scale kept): the softmax then receives the bias alone."""
    def run(a: torch.Tensor, b: torch.Tensor) -> tuple[IntTensor, torch.Tensor | None]:
        p, surrogate = products(a, b)
        return IntTensor(torch.zeros_like(p.ints), p.scale), surrogate
    return run


def test_bias_and_mask_are_the_fake_quantized_models():
    """The window_bias constants are what the fake-quantized attention adds onto its q·kᵀ integers
    (captured with the product itself zeroed): relative position bias, shift mask far negative."""
    qmodel, program, images = calibrated_swin("w8a8-uniform")
    blocks = [blk for stage in qmodel.layers for blk in stage.blocks]
    shifted = [blk for blk in blocks if any(blk.shift_size)]
    assert len(shifted) == 1 and shifted[0].attn_mask.shape[0] == 4  # stage 0, block 1: 2x2 windows
    biases = [program.tensors[op.constants["value"]] for op in program.ops if op.kind == "window_bias"]
    assert len(biases) == len(blocks)
    captured, handles = {}, []
    for index, block in enumerate(blocks):
        block.attn.qk.products = _zeroed(block.attn.qk.products)
        handles.append(block.attn.softmax.register_forward_pre_hook(lambda m, args, i=index: captured.__setitem__(i, args[0])))
    try:
        with torch.no_grad():
            qmodel(images[:2])
    finally:
        for block, handle in zip(blocks, handles):
            del block.attn.qk.products  # the instance attribute: the method again
            handle.remove()
    for index, block in enumerate(blocks):
        value = biases[index]
        assert torch.equal(value, logit_bias(block.attn, block.attn_mask))
        ints = captured[index].ints.to(torch.int64)
        assert torch.equal(ints.reshape(-1, *value.shape), value.expand(ints.numel() // value.numel(), *value.shape))
    masked = biases[blocks.index(shifted[0])]
    assert masked.shape[0] == 4 and int(masked.min()) < -10 * int(biases[0].abs().max())


@pytest.mark.parametrize("case", CASES)
def test_swin_executors_agree_bit_for_bit_and_follow_the_model(case):
    """Strict int64 (strict mode on), its float64 twin and the fast executor give the same integers. The
    logits follow the fake-quantized model's, not bit for bit (dyadic requantization, the biases and the
    pooled sum rounded on integer grids). Measured on 16 images, as a fraction of the logit range: mean
    |Δ| 0.08 % (W8A8 uniform), 0.09 % (mixed), 1.2 % (W4A4 BitLog2); max |Δ| 0.4 %, 0.4 %, 5.2 %; top-1
    16/16 in every case."""
    qmodel, program, images = calibrated_swin(case)
    strict = IntegerModel(program, strict=True)
    ints = strict.run(images)
    assert ints.dtype == torch.int64
    assert torch.equal(IntegerModel(program, backend="float").run(images), ints.double())
    assert torch.equal(IntegerModel(program, gemm="float").run(images), ints)
    with torch.no_grad():
        reference = qmodel(images).double()
    logits = strict(images).double()
    spread = float(reference.max() - reference.min())
    assert float((logits - reference).abs().mean()) < 0.02 * spread
    assert float((logits - reference).abs().max()) < 0.08 * spread
    assert int((logits.argmax(1) == reference.argmax(1)).sum()) >= 14


def test_swin_program_structure():
    qmodel, program, _ = calibrated_swin("w4a4-bitlog2")
    kinds = [op.kind for op in program.ops]
    blocks = [blk for stage in qmodel.layers for blk in stage.blocks]
    shifted = sum(1 for blk in blocks if any(blk.shift_size))
    assert kinds.count("window_partition") == kinds.count("window_reverse") == kinds.count("window_bias") == len(blocks)
    assert kinds.count("roll") == 2 * shifted == 2
    assert kinds.count("softmax") == kinds.count("gelu") == kinds.count("bitlog2_av") == len(blocks)
    assert kinds.count("patch_merge") == 1 and kinds.count("sum_tokens") == 1
    # norms: patch embedding, two per block, patch merging, final
    assert kinds.count("layernorm") == 1 + 2 * len(blocks) + 1 + 1
    assert kinds.count("linear") == 1 + 4 * len(blocks) + 1 + 1  # patch embedding, blocks, reduction, head
    assert program.ops[-1].output == "logits" and program.info["model"] == "SwinTransformer"


def test_swin_save_and_load_round_trip(tmp_path):
    """What ``vitquant quantize --save`` runs (:func:`vitquant.workflow.save_integer_program`), on Swin."""
    from vitquant.workflow import save_integer_program

    qmodel, program, images = calibrated_swin("w8a8-uniform")
    path = tmp_path / "swin.vqm"
    saved = save_integer_program(qmodel, path, {"recipe": "test"})
    assert saved["ops"] == len(program.ops) and saved["bytes"] == path.stat().st_size
    loaded = load(path)
    assert loaded.program.info["model"] == "SwinTransformer" and loaded.program.info["recipe"] == "test"
    assert [op.to_dict() for op in loaded.program.ops] == [op.to_dict() for op in program.ops]
    assert torch.equal(loaded.run(images), IntegerModel(program).run(images))
    assert torch.equal(load(path, gemm="float").run(images), IntegerModel(program).run(images))


def test_swin_refusals():
    with pytest.raises(ConfigError, match="ViT/DeiT .* and Swin"):
        convert_model(nn.Linear(2, 2))
    qmodel, _, _ = calibrated_swin("w8a8-uniform")
    padded = copy.deepcopy(qmodel)
    padded.layers[0].blocks[0].window_size = (5, 5)  # 14x14 tokens: windows would be zero-padded
    with pytest.raises(ConfigError, match="zero-padded"):
        convert_swin(padded)
    max_pooled = copy.deepcopy(qmodel)
    max_pooled.head.global_pool.pool_type = "max"
    with pytest.raises(ConfigError, match="average-pooled"):
        convert_model(max_pooled)
    floats = quantize_model(conftest.make_swin(), conftest.images(2, conftest.SWIN_IMG, seed=1),
                            repq_vit_qconfig(8, 8, attn_bits=4)).model  # float non-linear ops
    with pytest.raises(ConfigError, match="float"):
        convert_model(floats)
    float_adds = quantize_model(
        conftest.make_swin(), conftest.images(2, conftest.SWIN_IMG, seed=1),
        repq_vit_qconfig(8, 8, attn_bits=4).with_nonlinear(NonlinearConfig(ops=dict.fromkeys(("softmax", "gelu", "layernorm"), "ibert"))),
    ).model
    with pytest.raises(ConfigError, match="residual add runs in float"):
        convert_model(float_adds)


def _tiny_swin_job_model(name: str, weights: object = None) -> tuple[nn.Module, str]:
    """Stand-in for ``vitquant.workflow.create_model``: the tiny Swin, with a 56-pixel data config."""
    model = conftest.make_swin()
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, conftest.SWIN_IMG, conftest.SWIN_IMG)}
    return model, "tiny random Swin"


def test_quantize_save_then_run_a_tiny_swin(tmp_path, capsys, monkeypatch):
    """``vitquant quantize --model swin_tiny --save`` (the tiny random Swin in place of the weights), then
    ``vitquant run`` with the float64 twin checked bit for bit."""
    import json

    from vitquant import cli, workflow

    monkeypatch.setattr(workflow, "create_model", _tiny_swin_job_model)
    folder = conftest.noise_folder(tmp_path / "data", 6)
    saved = tmp_path / "swin.vqm"
    rc = cli.main(["quantize", "--model", "swin_tiny", "--recipe", "bitlog2-half-17", "--calib-data", str(folder),
                   "--calib-size", "2", "--batch-size", "2", "--nonlinear", "ibert", "--save", str(saved),
                   "--json", str(tmp_path / "q.json"), "-q"])
    assert rc == 0 and saved.is_file() and f"written to {saved}" in capsys.readouterr().out
    rc = cli.main(["run", str(saved), "--eval-data", str(folder), "--batch-size", "2", "--check-simulation",
                   "--json", str(tmp_path / "r.json"), "-q"])
    assert rc == 0
    report = json.loads((tmp_path / "r.json").read_text())
    quantized = json.loads((tmp_path / "q.json").read_text())["quantized"]
    assert report["images"] == quantized["images"] and report["simulation"]["bit_identical_images"] == report["images"]


def test_fast_executor_falls_back_to_the_strict_op(monkeypatch):
    """An op without a fast version runs its strict op (int64) in the fast executor: the same integers,
    and the ops after it prepared without a static range still run."""
    from vitquant.integer import fast

    _, program, images = calibrated_swin("w8a8-uniform")
    expected = IntegerModel(program).run(images[:4])
    for kind in ("window_bias", "patch_merge", "sum_tokens"):
        monkeypatch.delitem(fast.FAST_OPS, kind)
    assert torch.equal(IntegerModel(program, gemm="float").run(images[:4]), expected)


def test_swin_bias_counts_in_the_bounds():
    """The logit bound after the bias is the product's plus max|bias| (the mask's large negatives
    included), checked against 2^51 like every value."""
    from vitquant.errors import RangeError
    from vitquant.integer.convert import EXACT_BITS, Value, _Builder
    from vitquant.integer.convert_swin import _logit_bias

    qmodel, _, _ = calibrated_swin("w8a8-uniform")
    block = qmodel.layers[0].blocks[1]  # the shifted one
    add = _logit_bias(block.attn, block.attn_mask, "shifted")
    biggest = int(logit_bias(block.attn, block.attn_mask).abs().max())
    scale = torch.ones(1, block.attn.num_heads, 1, 1, dtype=torch.float64)
    assert add(_Builder(), Value("input", scale, 1000)).bound == 1000 + biggest
    with pytest.raises(RangeError, match="2\\^51"):
        add(_Builder(), Value("input", scale, 2**EXACT_BITS - biggest))
