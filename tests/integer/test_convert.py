"""Conversion: what becomes an integer program, what is refused, and the saved file."""

from __future__ import annotations

import copy
import json

import pytest
import timm
import torch

import conftest
from integer_cases import calibrated
from vitquant.calibration import quantize_model
from vitquant.errors import ConfigError, ModelFileError, RangeError
from vitquant.integer.convert import EXACT_BITS, Value, _Builder, convert_vit
from vitquant.integer.execute import IntegerModel, load
from vitquant.integer.program import PROGRAM_VERSION, IntegerProgram
from vitquant.nn.residual import QuantResidualAdd
from vitquant.nonlinear import NonlinearConfig
from vitquant.qconfig import repq_vit_qconfig
from vitquant.recipes import build_qconfig


def test_program_structure_and_constant_dtypes():
    _, qmodel, program, _, _ = calibrated("w4a4-bitlog2")
    kinds = [op.kind for op in program.ops]
    blocks = len(qmodel.blocks)
    assert kinds.count("layernorm") == 2 * blocks + 1
    assert kinds.count("softmax") == kinds.count("gelu") == kinds.count("bitlog2_av") == blocks
    assert kinds.count("add") == 2 * blocks
    assert kinds.count("linear") == 4 * blocks + 2  # qkv, proj, fc1, fc2 per block; patch embedding; head
    assert program.ops[-1].output == "logits"
    codes = {name: t for name, t in program.tensors.items() if name.endswith(".weight_codes")}
    assert len(codes) == kinds.count("linear")
    linears = [op for op in program.ops if op.kind == "linear"]
    for op in linears:  # 4-bit weight codes, two per byte
        t = program.tensors[op.constants["weight_codes"]]
        assert op.attrs == {"packed": 4, "in_features": qmodel_in_features(qmodel, op)}
        assert t.dtype == torch.uint8 and t.shape[1] == (op.attrs["in_features"] + 1) // 2
    json.dumps(program.header())  # plain JSON


def qmodel_in_features(qmodel, op) -> int:
    name = op.output.split(":", 1)[1]
    layer = qmodel.get_submodule(name)
    return int(layer.weight[0].numel())


def test_residual_stream_is_the_models_residual_points():
    _, qmodel, program, _, _ = calibrated("w8a8-uniform")
    adds = [m for m in qmodel.modules() if isinstance(m, QuantResidualAdd)]
    assert len(adds) == 2 * len(qmodel.blocks) and program.info["residual_bits"] == 24
    requants = {op.output.split(":", 1)[-1]: op for op in program.ops if op.kind == "requant"}
    top = 2**23 - 1
    for i, block in enumerate(qmodel.blocks):
        for branch, add in (("attn", block.add_attn), ("mlp", block.add_mlp)):
            q = add.residual_quant.quantizer
            for side in ("skip", "out"):  # both operands onto the add's own fixed-point codes
                op = requants[f"blocks.{i}.{branch}.{side}"]
                assert int(program.tensors[op.constants["low"]]) == -top == -q.top
                assert int(program.tensors[op.constants["high"]]) == top
            # the skip comes from the previous add (or the embedding): its ratio is S_prev / S_r
            skip = requants[f"blocks.{i}.{branch}.skip"]
            m = program.tensors[skip.constants["multiplier"]].double()
            shift = program.tensors[skip.constants["shift"]].double()
            prev = qmodel.blocks[i].add_attn if branch == "mlp" else (qmodel.blocks[i - 1].add_mlp if i else None)
            if prev is not None:
                ratio = float(prev.residual_quant.quantizer.scale.double() * q.inv_scale.double())
                assert float(m / 2**shift) == pytest.approx(ratio, rel=1e-8)


def test_nibble_packing_round_trip():
    from vitquant.integer.ops import pack_nibbles, unpack_nibbles

    gen = torch.Generator().manual_seed(0)
    for cols in (1, 2, 7, 192):
        codes = torch.randint(0, 16, (5, cols), generator=gen)
        packed = pack_nibbles(codes)
        assert packed.dtype == torch.uint8 and packed.shape == (5, (cols + 1) // 2)
        assert torch.equal(unpack_nibbles(packed, cols), codes)


def test_save_and_load_round_trip(tmp_path):
    _, _, program, _, images = calibrated("w8a8-uniform")
    path = tmp_path / "model.vqm"
    program.save(path)
    loaded = load(path)
    assert torch.equal(loaded.run(images), IntegerModel(program).run(images))
    assert [op.to_dict() for op in loaded.program.ops] == [op.to_dict() for op in program.ops]


def test_load_refuses_other_versions_and_bad_programs(tmp_path):
    _, _, program, _, _ = calibrated("w8a8-uniform")
    from vitquant.integer.fileformat import write_vqm

    path = tmp_path / "m.vqm"
    header = program.header()
    write_vqm(path, program.tensors, {**header, "program_version": PROGRAM_VERSION + 1})
    with pytest.raises(ModelFileError, match="version"):
        IntegerProgram.load(path)
    bad_kind = copy.deepcopy(header)
    bad_kind["ops"][3]["kind"] = "exec"
    write_vqm(path, program.tensors, bad_kind)
    with pytest.raises(ModelFileError, match="unknown kind 'exec'"):
        IntegerProgram.load(path)
    tensors = dict(program.tensors)
    tensors.pop(next(iter(tensors)))
    write_vqm(path, tensors, header)
    with pytest.raises(ModelFileError, match="missing tensors"):
        IntegerProgram.load(path)
    no_role = copy.deepcopy(header)
    linear = next(op for op in no_role["ops"] if op["kind"] == "linear")
    linear["constants"]["weight"] = linear["constants"].pop("weight_codes")  # an older op layout
    write_vqm(path, program.tensors, no_role)
    with pytest.raises(ModelFileError, match="lacks its constants \\['weight_codes'\\]"):
        IntegerProgram.load(path)
    no_logits = copy.deepcopy(header)
    no_logits["ops"] = no_logits["ops"][:-1]
    write_vqm(path, program.tensors, no_logits)
    with pytest.raises(ModelFileError, match="logits"):
        IntegerProgram.load(path)
    broken = copy.deepcopy(header)
    del broken["input"]
    write_vqm(path, program.tensors, broken)
    with pytest.raises(ModelFileError, match="malformed"):
        IntegerProgram.load(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ModelFileError):
        load(path)


def _calibrate(qconfig, kind="vit"):
    model = conftest.make_vit() if kind == "vit" else conftest.make_swin()
    x = conftest.images(4, conftest.TinyModels.img_size(kind), seed=1)
    return quantize_model(model, x, qconfig).model, x


@pytest.mark.parametrize(
    ("qconfig", "message"),
    [
        (repq_vit_qconfig(8, 8, "sqrt2-17"), "float"),  # float kernels: not integer-only
        (build_qconfig("ptq4vit", 8, 8, attn_bits=4).with_nonlinear(NonlinearConfig.everywhere("ibert")), "uniform"),
        (repq_vit_qconfig(8, 8, attn_bits=4).with_nonlinear(NonlinearConfig(ops=dict.fromkeys(("softmax", "gelu", "layernorm"), "ibert"))),
         "residual add runs in float"),
    ],
    ids=["float-kernels", "ptq4vit-twin-gelu", "float-residual"],
)
def test_conversion_refuses_what_has_no_integer_path(qconfig, message):
    qmodel, x = _calibrate(qconfig)
    with pytest.raises((ConfigError, RangeError), match=message):
        convert_vit(qmodel)


def test_level_tables_beyond_62_bits_are_refused():
    from vitquant.integer.convert import level_table
    from vitquant.quantizers import LogSqrt2Quantizer

    # probabilities down to 2^-60 reach 8-bit log√2 levels whose mantissas would need > 62 bits aligned
    with pytest.raises(RangeError, match="62 bits"):
        level_table(LogSqrt2Quantizer(8, 17, torch.tensor(1.0)), 1, 2.0**-60, 2**8, "deep")


def test_conversion_refuses_other_models():
    with pytest.raises(ConfigError, match="ViT/DeiT"):
        convert_vit(torch.nn.Linear(2, 2))  # Swin converts: tests/integer/test_convert_swin.py
    _, vit, *_ = calibrated("w8a8-uniform")
    deit3 = copy.deepcopy(vit)
    deit3.no_embed_class = True  # position embedding added before the class token is prepended
    with pytest.raises(ConfigError, match="position embedding covers the class token"):
        convert_vit(deit3)


def test_bounds_are_checked_at_conversion():
    b = _Builder()
    with pytest.raises(RangeError, match="2\\^51"):
        b.emit("add", ["input", "input"], "huge", torch.tensor(1.0), 2**EXACT_BITS)
    wide = Value("input", torch.tensor(1.0, dtype=torch.float64), 2**45)
    with pytest.raises(RangeError, match="8-bit requantization multiplier"):
        b.requant(wide, torch.tensor(3.0, dtype=torch.float64), torch.tensor(-5), torch.tensor(5), "wide")
    ok = b.requant(Value("input", torch.tensor(1.0, dtype=torch.float64), 2**30), torch.tensor(3.0, dtype=torch.float64),
                   torch.tensor(-5), torch.tensor(5), "fits")
    assert ok.bound == 5
    m = b.tensors[b.ops[-1].constants["multiplier"]]
    assert int(m) * 2**30 < 2**EXACT_BITS  # the multiplier was narrowed to keep x · m exact


def test_an_activation_without_integer_kernel_is_refused_in_one_line():
    """CLIP's QuickGELU (x·σ(1.702x)) is not GELU: calibration keeps it in float, and conversion names it
    (it used to fail with an AttributeError traceback)."""
    from timm.layers import QuickGELU

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, act_layer=QuickGELU, **conftest.VIT_KWARGS).eval()
    x = conftest.images(4, conftest.VIT_IMG, seed=1)
    qmodel = quantize_model(model, x, repq_vit_qconfig(8, 8, attn_bits=4).with_nonlinear(NonlinearConfig.everywhere("ibert"))).model
    with pytest.raises(ConfigError, match="QuickGELU has no integer kernel"):
        convert_vit(qmodel)
