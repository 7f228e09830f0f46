"""Text prototxt in and out, through protobuf's own text_format.

Only error reporting is ours: protobuf tells line and column, and we add the
file name and the name of the layer the error sits in, since a SENet prototxt
has thousands of lines of near-identical layers.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from google.protobuf import text_format

from . import caffe_pb2
from ._atomic import atomic_writer
from .errors import PrototxtSyntaxError

_LAYER_OPEN = re.compile(r"^\s*layers?\s*\{")
_NAME_FIELD = re.compile(r'^\s*name\s*:\s*"([^"]*)"')


def _enclosing_layer(text: str, line: int | None) -> str | None:
    """Best-effort name of the layer block that contains 1-based `line`."""
    if line is None:
        return None
    name, inside = None, False
    for index, content in enumerate(text.splitlines()[:line], start=1):
        if _LAYER_OPEN.match(content):
            name, inside = None, True
            continue
        if inside and name is None:
            match = _NAME_FIELD.match(content)
            if match:
                name = match.group(1)
        if index == line:
            break
    return name if inside else None


def parse_prototxt_text(text: str, *, source: str = "<string>") -> caffe_pb2.NetParameter:
    """Parse prototxt text into a NetParameter; `source` names it in errors."""
    net = caffe_pb2.NetParameter()
    try:
        text_format.Parse(text, net)
    except text_format.ParseError as exc:
        line, column = exc.GetLine(), exc.GetColumn()
        message = str(exc)
        # protobuf prefixes "line:column : "; we print our own location.
        message = re.sub(r"^\d+:\d+\s*:\s*", "", message)
        raise PrototxtSyntaxError(message, path=source, line=line, column=column,
                                  layer=_enclosing_layer(text, line)) from None
    return net


def parse_prototxt(path: str | os.PathLike[str]) -> caffe_pb2.NetParameter:
    """Read a text prototxt file into a NetParameter."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise PrototxtSyntaxError(f"cannot read file: {exc.strerror}", path=source) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PrototxtSyntaxError(
            "not a text prototxt (invalid UTF-8; is this a binary .caffemodel?)",
            path=source, line=line) from None
    if "\x00" in text:
        raise PrototxtSyntaxError("not a text prototxt (contains NUL bytes)", path=source)
    return parse_prototxt_text(text, source=source)


def format_prototxt(net: caffe_pb2.NetParameter) -> str:
    """Render a NetParameter as prototxt text (blobs are never written as text)."""
    stripped = caffe_pb2.NetParameter()
    stripped.CopyFrom(net)
    for layer in stripped.layer:
        del layer.blobs[:]
    for layer in stripped.layers:
        del layer.blobs[:]
    return text_format.MessageToString(stripped)


def write_prototxt(net: caffe_pb2.NetParameter, path: str | os.PathLike[str],
                   *, header: str | None = None) -> None:
    """Write `net` as prototxt atomically; `header` lines become leading comments."""
    text = format_prototxt(net)
    if header:
        text = "".join(f"# {line}\n" for line in header.splitlines()) + text
    with atomic_writer(path) as handle:
        handle.write(text.encode("utf-8"))
