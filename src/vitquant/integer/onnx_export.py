"""Export an integer program to ONNX: :func:`to_onnx` and the formats, each a module registered by name.

- ``integer`` (:mod:`~vitquant.integer.onnx_integer`): the integer program itself, integer ops only
  between the image's quantization and the logits' scaling, bit for bit the strict executor's logits;
- ``qdq`` (:mod:`~vitquant.integer.onnx_qdq`): the standard QuantizeLinear/DequantizeLinear form around
  float ops, for uniform-only programs (what TensorRT, OpenVINO and onnxruntime's quantized kernels take).

A format is a function ``(program, options) -> onnx.ModelProto`` registered with :func:`register_format`.
Every model records the eval transform of its images, the program's description and the export's own
settings in ``metadata_props`` (JSON values); the same program and options give the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitquant.errors import ConfigError, ModelFileError
from vitquant.integer.program import IntegerProgram

FORMAT_MODULES = ("vitquant.integer.onnx_integer", "vitquant.integer.onnx_qdq")
ONNX_EXTRA = "ONNX export needs the optional extra: pip install 'vitquant[onnx]' (onnx, onnxruntime)"


@dataclass(frozen=True)
class ExportOptions:
    """``image_size``: the square input side, where the program records no eval transform (tests)."""

    image_size: int | None = None


Exporter = Callable[[IntegerProgram, ExportOptions], Any]  # -> onnx.ModelProto
FORMATS: dict[str, Exporter] = {}


def register_format(name: str) -> Callable[[Exporter], Exporter]:
    def wrap(fn: Exporter) -> Exporter:
        FORMATS[name] = fn
        return fn
    return wrap


def require_onnx() -> None:
    """Raise a one-line :class:`ConfigError` naming the extra when onnx is not installed."""
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise ConfigError(ONNX_EXTRA) from exc


def format_names() -> list[str]:
    return ["integer", "qdq"]


def _load_formats() -> None:
    import importlib

    require_onnx()
    for module in FORMAT_MODULES:
        importlib.import_module(module)


def export_model(program: IntegerProgram, format: str = "integer", options: ExportOptions | None = None):
    """The ONNX model of ``program`` in ``format`` (an ``onnx.ModelProto``)."""
    if format not in format_names():
        raise ConfigError(f"unknown ONNX format {format!r}; choose {', '.join(format_names())}")
    _load_formats()
    program.validate()
    return FORMATS[format](program, options or ExportOptions())


def to_onnx(program: IntegerProgram | str | Path, path: str | Path, format: str = "integer",
            image_size: int | None = None) -> Path:
    """Write ``program`` (or the ``.vqm`` file at that path) as an ONNX model to ``path``."""
    if not isinstance(program, IntegerProgram):
        program = IntegerProgram.load(program)
    model = export_model(program, format, ExportOptions(image_size))
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(model.SerializeToString(deterministic=True))
    except OSError as exc:
        raise ModelFileError(f"cannot write {path}: {exc}") from exc
    return path


def image_shape(program: IntegerProgram, options: ExportOptions) -> tuple[int, int, int]:
    """``(3, H, W)`` from the recorded eval transform, or the option for a program that records none."""
    transform = program.info.get("transform")
    if transform and "input_size" in transform:
        c, h, w = (int(v) for v in transform["input_size"])
        if options.image_size is not None and options.image_size != h:
            raise ConfigError(f"the program's images are {h}x{w}; got image size {options.image_size}")
        return c, h, w
    if options.image_size is None:
        raise ConfigError("the program records no eval transform (input size): give the image size")
    return 3, options.image_size, options.image_size


def metadata(program: IntegerProgram, format: str, extra: dict[str, Any]) -> dict[str, str]:
    """The model's ``metadata_props``: JSON values, keys sorted when written."""
    from vitquant import __version__
    from vitquant.integer.program import PROGRAM_VERSION

    info = {k: v for k, v in program.info.items() if k != "transform"}
    entries = {
        "vitquant.version": __version__,
        "vitquant.format": format,
        "vitquant.program_version": PROGRAM_VERSION,
        "vitquant.transform": program.info.get("transform"),
        "vitquant.program_info": info,
        "vitquant.input": {"scale": program.input_scale, "zero_point": program.input_zero_point,
                           "bits": program.input_bits},
        "vitquant.output_scale": program.output_scale,
        **extra,
    }
    return {k: json.dumps(v, sort_keys=True, default=str) for k, v in entries.items()}


def read_metadata(model) -> dict[str, Any]:
    """The JSON values of a model's ``metadata_props`` (strings that are not JSON stay strings)."""
    out = {}
    for entry in model.metadata_props:
        try:
            out[entry.key] = json.loads(entry.value)
        except json.JSONDecodeError:
            out[entry.key] = entry.value
    return out
