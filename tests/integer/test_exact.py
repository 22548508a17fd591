"""The exact simulation: the fake-quantized model's modules, switched to the program's arithmetic, give the
integer program's logits bit for bit; switched off, the fake-quantized model is back unchanged."""

from __future__ import annotations

import copy

import pytest
import torch

from integer_cases import calibrated
from vitquant.errors import RangeError
from vitquant.integer.convert import convert_vit, plan_vit
from vitquant.integer.exact import (
    EMBEDDING, READ_BACK_BITS, build_step, disable_exact, enable_exact, exact_integer_logits, exact_simulation,
    is_exact, read_back,
)
from vitquant.integer.execute import IntegerModel
from vitquant.integer.program import Op

CASES = ["w8a8-uniform", "w4a4-bitlog2", "w8a8-mixed", "w8a8-sqrt2", "w8a8-adalog", "w8a8-twin", "w8a8-distilled",
         "w3a3-ends8"]
#: ops the model's own code does (timm's reshapes, token selection, DeiT-distilled's average of two heads)
LAYOUT_OPS = {"heads", "merge_heads", "take_token"}


@pytest.mark.parametrize("case", CASES)
def test_exact_simulation_gives_the_programs_logits_bit_for_bit(case):
    _, qmodel, _, _, images = calibrated(case)
    with exact_simulation(qmodel) as plan:
        ints = exact_integer_logits(qmodel, images, plan)
        with torch.no_grad():
            logits = qmodel(images)
    program_ints = IntegerModel(plan.program).run(images)
    assert logits.dtype == torch.float64 and ints.shape == program_ints.shape
    assert torch.equal(ints, program_ints.double())  # every image, every class
    if case != "w8a8-distilled":  # the float64 logits too: both are fl(ints · output scale)
        assert torch.equal(logits, program_ints.double() * plan.program.output_scale)
    else:  # (fl(i·S) + fl(j·S)) / 2 against (i + j) · S/2: within a float64 rounding, never an integer apart
        assert torch.allclose(logits, program_ints.double() * plan.program.output_scale, rtol=1e-14, atol=0)


@pytest.mark.parametrize("case", ["w8a8-uniform", "w8a8-distilled"])
def test_switching_the_exact_simulation_off_restores_the_fake_quantized_model(case):
    _, qmodel, _, _, images = calibrated(case)
    with torch.no_grad():
        before = qmodel(images)
    enable_exact(qmodel)
    assert is_exact(qmodel)
    with torch.no_grad():
        exact = qmodel(images)
    disable_exact(qmodel)
    assert not is_exact(qmodel)
    assert not any("exact" in m.__dict__ for m in qmodel.modules()) and EMBEDDING not in qmodel.__dict__
    with torch.no_grad():
        after = qmodel(images)
    assert before.dtype == after.dtype == torch.float32 and torch.equal(before, after)
    assert not torch.equal(exact.float(), before)  # the two arithmetics do differ


def test_one_derivation_every_op_of_the_program_in_one_module():
    """The steps run the program's own ops (the same objects, the same constants): each op that is not
    a layout step belongs to exactly one module, and the program is the one :func:`convert_vit` gives."""
    _, qmodel, program, _, _ = calibrated("w8a8-distilled")
    plan = plan_vit(qmodel)
    owned = [op for step in plan.steps.values() for op in step.ops]
    assert len({id(op) for op in owned}) == len(owned)
    program_ops = {id(op) for op in plan.program.ops}
    assert all(id(op) in program_ops for op in owned)
    rest = [op for op in plan.program.ops if id(op) not in {id(o) for o in owned}]
    # besides layout: the distillation token's LayerNorm (the model normalizes every token with "norm")
    # and the sum of the two heads' logits (timm's (head + head_dist) / 2)
    assert {op.kind for op in rest} == LAYOUT_OPS | {"requant", "layernorm", "add"}
    assert [op.output.split(":")[-1] for op in rest if op.kind not in LAYOUT_OPS] == \
        ["norm.token1.in", "norm.token1", "logits"]
    for step in plan.steps.values():
        for op in step.ops:
            for role, name in op.constants.items():  # the program's tensors (float64 copies of the integers)
                assert torch.equal(step.consts[name], plan.program.tensors[name].to(step.consts[name].dtype))
    assert [op.to_dict() for op in convert_vit(qmodel).ops] == [op.to_dict() for op in program.ops]
    assert set(plan.steps) >= {EMBEDDING, "patch_embed.proj", "norm", "head", "head_dist", "blocks.1.attn.qk",
                               "blocks.1.attn.softmax", "blocks.1.attn.av", "blocks.1.mlp.act", "blocks.1.add_mlp"}


def test_steps_read_their_inputs_back_exactly_and_refuse_off_grid_values():
    scale = torch.tensor([0.37, 1e-6, 3.3e5], dtype=torch.float64)
    ints = torch.tensor([[2.0**48 - 1, -(2.0**48) + 3, 12345.0], [-7.0, 2.0**47 + 1, -(2.0**48 - 5)]])
    assert torch.equal(read_back(ints * scale * 0.125 / 0.125, scale, "x"), ints)
    with pytest.raises(RuntimeError, match="not on its producer's grid"):
        read_back(torch.tensor([0.5]) * scale[0], scale[0], "x")


def test_values_too_wide_to_cross_a_module_boundary_are_refused():
    op = Op("add", ("a", "b"), "c")
    scales = dict.fromkeys("abc", torch.tensor(1.0, dtype=torch.float64))
    build_step("m", [op], {}, scales, {"a": 2**40, "b": 2**40, "c": 2**41}, (1.0, 0, 8))
    with pytest.raises(RangeError, match=f"2\\^{READ_BACK_BITS}"):
        build_step("m", [op], {}, scales, {"a": 2**READ_BACK_BITS, "b": 1, "c": 2**READ_BACK_BITS}, (1.0, 0, 8))


def test_a_copy_of_a_model_in_the_exact_simulation_stays_in_it():
    _, qmodel, _, _, images = calibrated("w4a4-bitlog2")
    with exact_simulation(qmodel) as plan:
        twin = copy.deepcopy(qmodel)
    assert is_exact(twin) and not is_exact(qmodel)
    ints = exact_integer_logits(twin, images[:2], plan)
    assert torch.equal(ints, IntegerModel(plan.program).run(images[:2]).double())
