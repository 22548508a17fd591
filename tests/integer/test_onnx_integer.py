"""The integer ONNX graph: onnxruntime's integer logits equal the strict executor's bit for bit (tiny ViT at
W8A8 with every kernel family, W4A4 BitLog2 Half_17 every op integer, table attention maps, AdaLog's
post-GELU table, DeiT-distilled, Swin, 16-bit softmax outputs, a QwT-compensated model); nothing between the image's quantization
and the output scaling is floating point; any batch size; the same program gives the same bytes; what
is refused is refused in one line."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from onnx import TensorProto  # noqa: E402

from integer_cases import calibrated, qconfig_for  # noqa: E402
from test_convert_swin import calibrated_swin  # noqa: E402
from vitquant.calibration import quantize_model  # noqa: E402
from vitquant.compensation import compensate  # noqa: E402
from vitquant.errors import ConfigError, ModelFileError  # noqa: E402
from vitquant.integer.convert import convert_vit  # noqa: E402
from vitquant.integer.execute import IntegerModel  # noqa: E402
from vitquant.integer.onnx_export import ExportOptions, export_model, read_metadata, to_onnx  # noqa: E402
from vitquant.integer.program import IntegerProgram, Op  # noqa: E402

VIT_CASES = ["w8a8-uniform", "w4a4-bitlog2", "w8a8-mixed", "w8a8-sqrt2", "w8a8-adalog", "w8a8-twin",
             "w8a8-distilled", "w4a4-adalog-gelu", "w3a3-ends8"]
SWIN_CASES = ["w8a8-uniform", "w8a8-mixed", "w4a4-bitlog2"]
FLOATS = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}


def _case(name: str) -> tuple[IntegerProgram, torch.Tensor, int]:
    """(program, held-out images, image size) of ``vit:<case>``, ``swin:<case>`` or ``softmax16:<case>``
    (the ViT case with its softmax kernels at 16 output bits)."""
    family, case = name.split(":")
    if family == "swin":
        _, program, images = calibrated_swin(case)
        return program, images, images.shape[-1]
    if family == "qwt":  # the calibrated model compensated (QwT): one more Linear and add per block
        model, _, _, calib, images = calibrated(case)
        torch.manual_seed(0)
        result = compensate(model, quantize_model(model, calib, qconfig_for(case)), calib)
        return convert_vit(result.model), images, images.shape[-1]
    _, _, program, _, images = calibrated(case)
    if family == "softmax16":
        program = copy.copy(program)
        program.ops = [Op(op.kind, op.inputs, op.output, {**op.attrs, "out_bits": 16}, op.constants)
                       if op.kind == "softmax" else op for op in program.ops]
    return program, images, images.shape[-1]


@functools.lru_cache(maxsize=None)
def exported(name: str) -> tuple[bytes, IntegerProgram, torch.Tensor]:
    program, images, size = _case(name)
    model = export_model(program, "integer", ExportOptions(size))
    return model.SerializeToString(deterministic=True), program, images


def _session(data: bytes):
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


ALL = [f"vit:{c}" for c in VIT_CASES] + [f"swin:{c}" for c in SWIN_CASES] + ["softmax16:w8a8-uniform", "softmax16:w8a8-distilled",
                                                                          "qwt:w4a4-bitlog2"]


@pytest.mark.parametrize("name", ALL)
def test_onnxruntime_gives_the_strict_executors_integers(name):
    data, program, images = exported(name)
    logits_int, logits = _session(data).run(None, {"image": images.numpy()})
    strict = IntegerModel(program)
    expected = strict.run(images)
    assert torch.equal(torch.from_numpy(logits_int), expected)
    assert torch.equal(torch.from_numpy(logits), strict(images))  # the same float64 scaling


@pytest.mark.parametrize("name", ["vit:w8a8-mixed", "vit:w4a4-bitlog2", "swin:w8a8-uniform"])
def test_only_the_input_quantization_and_the_output_scaling_are_floating_point(name):
    """Shape inference types every value; the float ones are exactly the image's way to its integer codes
    (Mul, Round, Clip, then a Cast to an integer type) and the logits' way out (Cast, Mul, Cast)."""
    model = onnx.shape_inference.infer_shapes(onnx.load_from_string(exported(name)[0]), strict_mode=True)
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({t.name: t.data_type for t in graph.initializer})
    producers = {out: node for node in graph.node for out in node.output}
    untyped = [out for node in graph.node for out in node.output if out not in types]
    assert not untyped, untyped[:5]
    # the float values reachable from the image before an integer Cast, and those after logits_int
    allowed, frontier = {"image"}, ["image"]
    while frontier:
        name_ = frontier.pop()
        for node in graph.node:
            if name_ in node.input and types[node.output[0]] in FLOATS:
                if node.output[0] not in allowed:
                    allowed.add(node.output[0])
                    frontier.append(node.output[0])
    downstream, frontier = set(), ["logits_int"]
    while frontier:
        name_ = frontier.pop()
        for node in graph.node:
            if name_ in node.input and node.output[0] not in downstream:
                downstream.add(node.output[0])
                frontier.append(node.output[0])
    floats = {n for n, t in types.items() if t in FLOATS and n in producers}
    inner = floats - allowed - downstream
    assert not inner, sorted(inner)[:10]
    assert {producers[n].op_type for n in allowed if n in producers} == {"Mul", "Round", "Clip"}
    assert {producers[n].op_type for n in downstream} == {"Cast", "Mul"}
    assert len(downstream) == 3
    # the first integer value: the Cast of the clipped image
    casts = [node for node in graph.node if node.input and node.input[0] in allowed and types[node.output[0]] not in FLOATS]
    assert [node.op_type for node in casts] == ["Cast"]


def test_integer_ops_are_integer_onnx_ops():
    """MatMulInteger where operands fit 8 bits (W8A8: every linear and q·kᵀ), no float op type inside."""
    model = onnx.load_from_string(exported("vit:w8a8-uniform")[0])
    kinds = {node.op_type for node in model.graph.node}
    assert "MatMulInteger" in kinds
    assert not kinds & {"Softmax", "Gelu", "LayerNormalization", "Erf", "Sqrt", "Exp", "QuantizeLinear", "DequantizeLinear"}
    assert model.opset_import[0].version == 18
    meta = read_metadata(model)
    assert meta["vitquant.format"] == "integer" and meta["vitquant.output_scale"] > 0


def test_any_batch_size():
    data, program, images = exported("vit:w8a8-mixed")
    session = _session(data)
    strict = IntegerModel(program).run(images)
    for batch in (images[:1], images[:3], images):
        assert torch.equal(torch.from_numpy(session.run(["logits_int"], {"image": batch.numpy()})[0]), strict[: len(batch)])


def test_the_same_program_gives_the_same_bytes(tmp_path):
    program, _, size = _case("vit:w4a4-adalog-gelu")
    first = to_onnx(program, tmp_path / "a.onnx", image_size=size).read_bytes()
    program.save(tmp_path / "p.vqm")
    second = to_onnx(tmp_path / "p.vqm", tmp_path / "b.onnx", image_size=size).read_bytes()
    assert first == second


def test_refusals_are_one_line(tmp_path, monkeypatch):
    from vitquant.integer import onnx_integer

    program, _, size = _case("vit:w8a8-uniform")
    with pytest.raises(ConfigError, match="give the image size"):
        export_model(program, "integer")
    with pytest.raises(ConfigError, match="unknown ONNX format 'tflite'"):
        export_model(program, "tflite", ExportOptions(size))
    monkeypatch.delitem(onnx_integer.EMITTERS, "gelu")
    with pytest.raises(ConfigError, match="op kinds without an ONNX form: gelu"):
        export_model(program, "integer", ExportOptions(size))
    monkeypatch.undo()
    (tmp_path / "bad.vqm").write_bytes(b"not a program" * 10)
    with pytest.raises(ModelFileError) as info:
        to_onnx(tmp_path / "bad.vqm", tmp_path / "bad.onnx")
    assert "\n" not in str(info.value)
