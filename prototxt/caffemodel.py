"""Binary .caffemodel reading and writing without pushing floats through Python.

A SENet caffemodel is a NetParameter of up to 440 MB, almost all of it packed
float arrays inside BlobProto messages. Parsing it with protobuf would build
Python float objects (or copy into repeated fields) for every weight. Instead we
walk the protobuf wire format ourselves down to the blobs: packed `data` /
`double_data` become `numpy.frombuffer` views of a read-only memory map (no copy),
and only the small remainder of each layer (name, type, parameters) is handed to
protobuf. Writing mirrors that: layer metadata from protobuf, blob payloads
streamed straight from the arrays' memory.
"""

from __future__ import annotations

import copy
import math
import mmap
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from . import caffe_pb2
from .atomic import atomic_writer
from .errors import CaffeError, CaffemodelFormatError, WeightsMismatchError

# Wire types of the protobuf encoding.
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5

# Field numbers (Caffe's caffe.proto).
_NET_LAYER, _NET_V1_LAYERS = 100, 2
_LAYER_BLOBS, _V1_LAYER_BLOBS = 7, 6
_LAYER_NAME, _V1_LAYER_NAME = 1, 4
_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH = 1, 2, 3, 4
_BLOB_DATA, _BLOB_DOUBLE_DATA, _BLOB_SHAPE = 5, 8, 7

_MAX_FILE_BYTES = 2**31  # protobuf messages cannot exceed 2 GiB
_MAX_BLOB_AXES = 32  # Caffe's kMaxBlobAxes


@dataclass
class CaffeModel:
    """A parsed .caffemodel: the embedded net definition and the weights.

    `net` holds every layer of the file with its blobs removed; `blobs` maps a
    layer name to its blobs as read-only numpy arrays (float32 for `data`,
    float64 for `double_data`), in the order Caffe stores them.
    """

    net: caffe_pb2.NetParameter
    blobs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    path: str = "<memory>"

    @property
    def nbytes(self) -> int:
        return sum(array.nbytes for arrays in self.blobs.values() for array in arrays)


# One protobuf field: (number, wire type, value start, value end, field start).
Field = tuple[int, int, int, int, int]


class _Reader:
    """Walks protobuf wire format over a buffer, reporting offsets on failure."""

    def __init__(self, buffer: memoryview, path: str) -> None:
        self.buffer, self.path = buffer, path

    def fail(self, message: str, offset: int, layer: str | None = None) -> CaffemodelFormatError:
        return CaffemodelFormatError(message, path=self.path, offset=offset, layer=layer)

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        result, shift, start = 0, 0, pos
        buffer = self.buffer
        while True:
            if pos >= end:
                raise self.fail("truncated file (a number runs past the end)", start)
            byte = buffer[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result, pos
            shift += 7
            if shift >= 70:
                raise self.fail("corrupt varint; not a caffemodel?", start)

    def fields(self, start: int, end: int, layer: str | None = None) -> Iterator[Field]:
        """Yield (field_number, wire_type, value_start, value_end, field_start)."""
        pos = start
        while pos < end:
            field_start = pos
            key, pos = self.varint(pos, end)
            number, wire = key >> 3, key & 7
            if number == 0:
                raise self.fail("invalid field number 0; not a caffemodel?", field_start, layer)
            if wire == _VARINT:
                _, value_end = self.varint(pos, end)
            elif wire == _LENGTH:
                length, pos = self.varint(pos, end)
                value_end = pos + length
            elif wire == _FIXED32:
                value_end = pos + 4
            elif wire == _FIXED64:
                value_end = pos + 8
            else:
                raise self.fail(f"unsupported wire type {wire}; not a caffemodel?", field_start, layer)
            if value_end > end:
                raise self.fail(
                    "truncated file (a field runs past the end of its message)", field_start, layer
                )
            yield number, wire, pos, value_end, field_start
            pos = value_end


def _blob(reader: _Reader, start: int, end: int, layer: str) -> np.ndarray:
    """Decode one BlobProto into a numpy array viewing the file's memory.

    Like Caffe's Blob::FromProto, a legacy num/channels/height/width shape wins
    over `shape` when both are present.
    """
    shape: list[int] | None = None
    legacy = [0, 0, 0, 0]
    legacy_seen = False
    chunks: list[np.ndarray] = []
    unpacked = bytearray()  # unpacked values since the last packed chunk, in order
    dtype = None
    for number, wire, vstart, vend, fstart in reader.fields(start, end, layer):
        if number == _BLOB_SHAPE and wire == _LENGTH:
            message = caffe_pb2.BlobShape()
            try:
                message.ParseFromString(bytes(reader.buffer[vstart:vend]))
            except DecodeError:
                raise reader.fail("corrupt blob shape", fstart, layer) from None
            shape = list(message.dim)
        elif number in (_BLOB_DATA, _BLOB_DOUBLE_DATA):
            this = np.dtype("<f4") if number == _BLOB_DATA else np.dtype("<f8")
            if dtype is not None and dtype != this:
                raise reader.fail("blob holds both float and double data", fstart, layer)
            dtype = this
            if wire == _LENGTH:
                if (vend - vstart) % this.itemsize:
                    raise reader.fail("blob data length is not a whole number of values", fstart, layer)
                if unpacked:
                    chunks.append(np.frombuffer(bytes(unpacked), dtype=this))
                    unpacked.clear()
                chunks.append(
                    np.frombuffer(
                        reader.buffer, dtype=this, count=(vend - vstart) // this.itemsize, offset=vstart
                    )
                )
            elif wire in (_FIXED32, _FIXED64) and this.itemsize == vend - vstart:
                unpacked += reader.buffer[vstart:vend]
            else:
                raise reader.fail("blob data has the wrong encoding", fstart, layer)
        elif number in (_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH) and wire == _VARINT:
            value, _ = reader.varint(vstart, vend)
            value &= 0xFFFFFFFF  # int32 fields: protobuf keeps the low 32 bits
            legacy[number - 1] = value - 2**32 if value >= 2**31 else value
            legacy_seen = True
    if unpacked:
        chunks.append(np.frombuffer(bytes(unpacked), dtype=dtype))
    if dtype is None:
        data = np.zeros(0, dtype="<f4")
    elif len(chunks) == 1:
        data = chunks[0]
    else:
        data = np.concatenate(chunks)
    if legacy_seen:
        shape = legacy
    elif shape is None:
        shape = [data.size]
    if len(shape) > _MAX_BLOB_AXES:
        raise reader.fail(f"blob has {len(shape)} axes, Caffe allows {_MAX_BLOB_AXES}", start, layer)
    if any(dim < 0 for dim in shape) or math.prod(shape) != data.size:
        raise reader.fail(f"blob shape {tuple(shape)} does not match its {data.size} values", start, layer)
    try:
        return data.reshape(shape)
    except ValueError:  # an empty blob with dimensions numpy cannot represent
        raise reader.fail(f"blob shape {tuple(shape)} is too large", start, layer) from None


def _layer(reader: _Reader, start: int, end: int, v1: bool) -> tuple[bytes, str, list[np.ndarray]]:
    """Split one layer message into its metadata bytes (for protobuf) and its blobs."""
    blob_field = _V1_LAYER_BLOBS if v1 else _LAYER_BLOBS
    name_field = _V1_LAYER_NAME if v1 else _LAYER_NAME
    meta: list[bytes] = []
    blob_ranges: list[tuple[int, int]] = []
    name = ""
    for number, wire, vstart, vend, fstart in reader.fields(start, end):
        if number == blob_field and wire == _LENGTH:
            blob_ranges.append((vstart, vend))
            continue
        if number == name_field and wire == _LENGTH:
            name = bytes(reader.buffer[vstart:vend]).decode("utf-8", "replace")
        meta.append(bytes(reader.buffer[fstart:vend]))
    blobs = [_blob(reader, bstart, bend, name) for bstart, bend in blob_ranges]
    return b"".join(meta), name, blobs


def encode_varint(value: int) -> bytes:
    """Protobuf's base-128 varint (also used by onnxlower's streaming writer)."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field_key(number: int, wire: int) -> bytes:
    """The tag that starts field `number` of wire type `wire`."""
    return encode_varint((number << 3) | wire)


def _check_text_fields(message: Message, path: str, layer: str | None = None) -> None:
    """Reject string fields that are not UTF-8 (protobuf hands those out as bytes)."""
    for descriptor, value in message.ListFields():
        if descriptor.type == FieldDescriptor.TYPE_STRING:
            values = [value] if isinstance(value, (str, bytes)) else list(value)
            if any(isinstance(item, bytes) for item in values):
                raise CaffemodelFormatError(
                    f"field '{descriptor.name}' is not UTF-8 text; corrupt file?", path=path, layer=layer
                )
        elif descriptor.type == FieldDescriptor.TYPE_MESSAGE:
            for item in [value] if isinstance(value, Message) else value:
                name = getattr(item, "name", None) if layer is None else layer
                _check_text_fields(item, path, name if isinstance(name, str) else None)


def _looks_like_text(head: bytes) -> bool:
    """Printable UTF-8 only; a binary caffemodel has length bytes and tags below 0x20 in its first bytes."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a character cut at the end of `head`
            return False
        text = head[: exc.start].decode("utf-8")
    return bool(text) and all(ch.isprintable() or ch in "\t\n\r\f" for ch in text)


def parse_caffemodel_buffer(buffer: memoryview | bytes, *, path: str = "<memory>") -> CaffeModel:
    """Parse caffemodel bytes; arrays view `buffer`, which must outlive them."""
    view = memoryview(buffer)
    if _looks_like_text(bytes(view[:4096])):
        raise CaffemodelFormatError(
            "this looks like a prototxt (text), not a binary .caffemodel; give it as the prototxt", path=path
        )
    reader = _Reader(view, path)
    net_meta: list[bytes] = []
    blobs: dict[str, list[np.ndarray]] = {}
    for number, wire, vstart, vend, fstart in reader.fields(0, len(view)):
        if number in (_NET_LAYER, _NET_V1_LAYERS) and wire == _LENGTH:
            v1 = number == _NET_V1_LAYERS
            meta, name, layer_blobs = _layer(reader, vstart, vend, v1)
            net_meta.append(field_key(number, _LENGTH) + encode_varint(len(meta)) + meta)
            if layer_blobs:
                if name in blobs:
                    raise reader.fail(f"two layers named '{name}' both carry blobs", fstart, name)
                blobs[name] = layer_blobs
        else:
            net_meta.append(bytes(view[fstart:vend]))
    net = caffe_pb2.NetParameter()
    try:
        net.ParseFromString(b"".join(net_meta))
    except DecodeError as exc:
        raise CaffemodelFormatError(f"not a caffemodel ({exc})", path=path) from None
    _check_text_fields(net, path)
    if not net.layer and not net.layers:
        raise CaffemodelFormatError("no layers found; is this a .caffemodel?", path=path)
    return CaffeModel(net=net, blobs=blobs, path=path)


def read_caffemodel(path: str | os.PathLike[str]) -> CaffeModel:
    """Read a .caffemodel file; blob arrays are zero-copy views of a memory map."""
    source = str(path)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size == 0:
                raise CaffemodelFormatError("file is empty", path=source)
            if size > _MAX_FILE_BYTES:
                raise CaffemodelFormatError(
                    f"file is {size} bytes; protobuf messages are limited to 2 GiB", path=source
                )
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as exc:
        raise CaffemodelFormatError(f"cannot read file: {exc.strerror}", path=source) from None
    return parse_caffemodel_buffer(memoryview(mapped), path=source)


def _encode_blob(array: np.ndarray) -> list[bytes | memoryview]:
    """BlobProto pieces: shape then packed data, the array's memory not copied."""
    array = np.asarray(array)
    if array.dtype == np.float64:
        payload, number = np.ascontiguousarray(array, dtype="<f8"), _BLOB_DOUBLE_DATA
    else:
        payload, number = np.ascontiguousarray(array, dtype="<f4"), _BLOB_DATA
    shape = caffe_pb2.BlobShape(dim=list(array.shape)).SerializeToString()
    head = field_key(_BLOB_SHAPE, _LENGTH) + encode_varint(len(shape)) + shape
    data = payload.data.cast("B")
    return [head, field_key(number, _LENGTH) + encode_varint(data.nbytes), data]


def _pieces_size(pieces: Sequence[bytes | memoryview]) -> int:
    return sum(len(piece) if isinstance(piece, bytes) else piece.nbytes for piece in pieces)


def write_caffemodel(
    path: str | os.PathLike[str], net: caffe_pb2.NetParameter, blobs: Mapping[str, Sequence[np.ndarray]]
) -> None:
    """Write `net` with `blobs` (layer name -> arrays) as a .caffemodel, atomically.

    Blobs already inside `net`'s layers are replaced by those in `blobs` for the
    same layer name. float64 arrays are stored as `double_data`, all else float32.
    """
    header = caffe_pb2.NetParameter()
    header.CopyFrom(net)
    del header.layer[:]
    del header.layers[:]
    pieces: list[bytes | memoryview] = [header.SerializeToString()]
    unknown = set(blobs) - {layer.name for layer in net.layer} - {layer.name for layer in net.layers}
    if unknown:
        raise WeightsMismatchError(f"blobs given for layers not in the net: {sorted(unknown)}")
    for number, layers in ((_NET_V1_LAYERS, net.layers), (_NET_LAYER, net.layer)):
        blob_field = _V1_LAYER_BLOBS if number == _NET_V1_LAYERS else _LAYER_BLOBS
        for layer in layers:
            meta_message = copy.deepcopy(layer)
            arrays = blobs.get(layer.name)
            if arrays is None:
                layer_pieces: list[bytes | memoryview] = [meta_message.SerializeToString()]
            else:
                del meta_message.blobs[:]
                layer_pieces = [meta_message.SerializeToString()]
                for array in arrays:
                    blob = _encode_blob(array)
                    layer_pieces += [field_key(blob_field, _LENGTH) + encode_varint(_pieces_size(blob))]
                    layer_pieces += blob
            pieces.append(field_key(number, _LENGTH) + encode_varint(_pieces_size(layer_pieces)))
            pieces += layer_pieces
    if _pieces_size(pieces) > _MAX_FILE_BYTES:
        raise CaffeError("the net is larger than the 2 GiB a caffemodel can hold")
    with atomic_writer(path) as handle:
        for piece in pieces:
            handle.write(piece)


def parse_blobproto_buffer(buffer: memoryview | bytes, *, path: str = "<memory>") -> np.ndarray:
    """One serialized BlobProto (a `.binaryproto`, e.g. Caffe's mean file) as an array.

    Read with the caffemodel blob decoder, so shapes follow Blob::FromProto (the legacy
    num/channels/height/width win over `shape`); the array views `buffer`.
    """
    view = memoryview(buffer)
    if len(view) == 0:
        raise CaffemodelFormatError("file is empty", path=path)
    array = _blob(_Reader(view, path), 0, len(view), "")
    if array.size == 0:
        raise CaffemodelFormatError("holds no blob values; is this a .binaryproto?", path=path)
    return array


def read_blobproto(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a `.binaryproto` file (one BlobProto) into an array shaped as Caffe shapes it."""
    source = str(path)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > _MAX_FILE_BYTES:
                raise CaffemodelFormatError(
                    f"file is {size} bytes; protobuf messages are limited to 2 GiB", path=source
                )
            data = handle.read()
    except OSError as exc:
        raise CaffemodelFormatError(f"cannot read file: {exc.strerror}", path=source) from None
    return parse_blobproto_buffer(data, path=source)
