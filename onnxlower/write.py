"""Write a lowered model, streaming the weights from their memory into the file.

protobuf would copy every weight into a `TensorProto` (and the whole model into
one bytes object) before writing; instead the graph is serialised without its
initializers and each weight's wire-format field is written straight from the
numpy array, as `prototxt.caffemodel` writes caffemodels. Past protobuf's 2 GB
limit the weights go to an external-data file beside the model (ONNX's format
for large models), 4 KiB-aligned so runtimes can map them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from prototxt.atomic import atomic_path, scratch_path
from prototxt.caffemodel import encode_varint, field_key

from .builder import ELEMENT_TYPES
from .graph import LoweredModel

EXTERNAL_DATA_BYTES = 2**31  # protobuf cannot parse a message this large
_ALIGNMENT = 4096
_INLINE_BYTES = 1024  # smaller tensors stay in the model file even with external data
_LENGTH = 2  # protobuf's length-delimited wire type
_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_RAW_DATA = 7, 5, 9


def _field(number: int, payload_size: int) -> bytes:
    return field_key(number, _LENGTH) + encode_varint(payload_size)


def _little_endian(array: np.ndarray) -> memoryview:
    """The array's bytes as ONNX stores raw data: C order, little-endian (a view when it already is)."""
    array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return array.data.cast("B")


def _tensor_header(name: str, array: np.ndarray) -> onnx.TensorProto:
    return onnx.TensorProto(name=name, dims=array.shape, data_type=ELEMENT_TYPES[array.dtype])


def _inline(name: str, array: np.ndarray) -> list[bytes | memoryview]:
    header = _tensor_header(name, array).SerializeToString()
    data = _little_endian(array)
    raw = _field(_TENSOR_RAW_DATA, data.nbytes)
    return [_field(_GRAPH_INITIALIZER, len(header) + len(raw) + data.nbytes) + header + raw, data]


def _external(
    model: LoweredModel, location: str
) -> tuple[list[bytes | memoryview], list[bytes | memoryview]]:
    """Initializer fields (small ones inline, as onnx does, shape inference reads those), and the
    data file's pieces."""
    fields: list[bytes | memoryview] = []
    pieces: list[bytes | memoryview] = []
    offset = 0
    for name, array in model.weights.items():
        if array.nbytes < _INLINE_BYTES:
            fields += _inline(name, array)
            continue
        header = _tensor_header(name, array)
        header.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", offset), ("length", array.nbytes)):
            header.external_data.add(key=key, value=str(value))
        serialized = header.SerializeToString()
        fields.append(_field(_GRAPH_INITIALIZER, len(serialized)) + serialized)
        padding = -array.nbytes % _ALIGNMENT
        pieces += [_little_endian(array), bytes(padding)]
        offset += array.nbytes + padding
    return fields, pieces


def _write(path: str, pieces: list[bytes | memoryview]) -> None:
    with open(path, "wb") as handle:
        for piece in pieces:
            handle.write(piece)


def external_data_path(path: str | os.PathLike[str]) -> Path:
    """Where `write_onnx` puts the weights of a model too large for one file."""
    return Path(path).with_name(Path(path).name + ".data")


def needs_external_data(model: LoweredModel) -> bool:
    """Whether the model with its weights would exceed protobuf's limit."""
    return model.nbytes + model.graph.ByteSize() >= EXTERNAL_DATA_BYTES


def write_onnx(
    model: LoweredModel,
    path: str | os.PathLike[str],
    *,
    external_data: bool | None = None,
    check: Callable[[str], object] | None = None,
) -> list[Path]:
    """Write `model` to `path` atomically; returns the files written.

    The weights go to `<path>.data` when they would not fit in one protobuf
    message (or when `external_data` is True). `check` runs on the complete
    temporary file before anything is renamed into place: when it raises, the
    previous files (or none) stay.
    """
    target = Path(path)
    opsets = [helper.make_opsetid("", model.opset)]
    header = helper.make_model(
        onnx.GraphProto(),
        opset_imports=opsets,
        producer_name="senet-repro onnxlower",
        ir_version=helper.find_min_ir_version_for(opsets),
    )
    header.ClearField("graph")
    graph = model.graph.SerializeToString()
    if external_data is None:
        external_data = needs_external_data(model)
    data_target = external_data_path(target)

    def pieces(initializers: list[bytes | memoryview]) -> list[bytes | memoryview]:
        size = len(graph) + sum(p.nbytes if isinstance(p, memoryview) else len(p) for p in initializers)
        return [header.SerializeToString(), _field(_MODEL_GRAPH, size), graph, *initializers]

    with ExitStack() as stack:
        if external_data:
            data_tmp = stack.enter_context(atomic_path(data_target))
            initializers, data_pieces = _external(model, data_target.name)
            _write(data_tmp, data_pieces)
        else:
            initializers = [piece for name, array in model.weights.items() for piece in _inline(name, array)]
        model_tmp = stack.enter_context(atomic_path(target))
        _write(model_tmp, pieces(initializers))
        if check is not None and external_data:  # the file names its data by the final name
            with scratch_path(target) as copy:
                _write(copy, pieces(_external(model, Path(data_tmp).name)[0]))
                check(copy)
        elif check is not None:
            check(model_tmp)
    return [target, data_target] if external_data else [target]
