"""The QDQ ONNX format of uniform-only programs: standard QuantizeLinear/DequantizeLinear around float ops;
exact up to the first non-linear op, and close to the simulated model after (the float ops replace the
integer kernels: the difference is the kernels' approximation); what has no QDQ form is refused."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

from integer_cases import calibrated  # noqa: E402
from test_convert_swin import calibrated_swin  # noqa: E402
from vitquant.errors import ConfigError  # noqa: E402
from vitquant.integer.convert import SCALE_PREFIX  # noqa: E402
from vitquant.integer.execute import IntegerModel  # noqa: E402
from vitquant.integer.onnx_export import ExportOptions, export_model  # noqa: E402
from vitquant.integer.ops import OPS, Context  # noqa: E402
from vitquant.kernels.arith import INT  # noqa: E402

NONLINEAR = {"layernorm", "gelu", "softmax"}


def _run(model: onnx.ModelProto, images: torch.Tensor, extra: list[str] = ()) -> list[torch.Tensor]:
    model = copy.deepcopy(model)
    for name in extra:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [torch.from_numpy(a) for a in session.run(None, {"image": images.numpy()})]


@pytest.mark.parametrize("case", ["vit:w8a8-uniform", "vit:w8a8-distilled",
                                  "swin:w8a8-uniform"])
def test_qdq_follows_the_program_exactly_up_to_the_first_kernel_and_the_simulated_model_after(case):
    family, name = case.split(":")
    if family == "swin":
        qmodel, program, images = calibrated_swin(name)
        images = images[:8]
    else:
        _, qmodel, program, _, images = calibrated(name)
    model = export_model(program, "qdq", ExportOptions(images.shape[-1]))
    kinds = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "MatMul", "LayerNormalization", "Softmax", "Erf"} <= kinds
    assert not kinds & {"MatMulInteger", "Div", "BitwiseAnd"}  # no integer arithmetic
    if family == "swin":  # 49-token windows at 16-bit softmax outputs: an attention point with zero point -5
        assert "Sub" in kinds  # its uint8 pair behind a float offset
    # each program value's last node, up to the first non-linear op: equal to the program's integers x scale
    last = {node.output[0].split("/")[0]: node.output[0] for node in model.graph.node}
    before = []
    for op in program.ops:
        if op.kind in NONLINEAR:
            break
        before.append(op)
    checked = [op for op in before if op.output in last]  # (a wide residual point stays float: no node)
    outputs = _run(model, images, [last[op.output] for op in checked])
    strict = IntegerModel(program)
    env = {"input": strict.quantize_input(images)}
    for op in before:
        consts = {role: strict._consts[t] for role, t in op.constants.items()}
        env[op.output] = OPS[op.kind]([env[n] for n in op.inputs], consts, op.attrs, Context(INT))
    for op, got in zip(checked, outputs[1:]):
        expected = env[op.output].double() * program.tensors[SCALE_PREFIX + op.output]
        assert torch.allclose(got.double(), expected, rtol=1e-5, atol=1e-5), op.output
    assert len(checked) >= (2 if family == "swin" else 3)  # Swin: its patch-embedding LayerNorm comes third
    logits = outputs[0]
    with torch.no_grad():
        simulated = qmodel(images)
    agree = (logits.argmax(-1) == simulated.argmax(-1)).float().mean().item()
    assert agree >= 0.75, agree


def test_what_has_no_qdq_form_is_refused():
    _, _, program, _, _ = calibrated("w4a4-bitlog2")
    with pytest.raises(ConfigError, match="bitlog2_av"):
        export_model(program, "qdq", ExportOptions(32))
    _, _, program, _, _ = calibrated("w8a8-uniform")
    old = copy.copy(program)
    old.tensors = {k: v for k, v in program.tensors.items() if not k.startswith(SCALE_PREFIX)}
    with pytest.raises(ConfigError, match="records no scale"):
        export_model(old, "qdq", ExportOptions(32))
    four_bit = copy.copy(program)  # an 8-bit point declared as a 4-bit one: no standard QDQ form
    four_bit.tensors = dict(program.tensors)
    first = next(op for op in program.ops if op.kind == "requant")
    four_bit.tensors[first.constants["high"]] = program.tensors[first.constants["low"]] + 15
    with pytest.raises(ConfigError, match="not an 8-bit point"):
        export_model(four_bit, "qdq", ExportOptions(32))
