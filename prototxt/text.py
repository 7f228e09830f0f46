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
from .atomic import atomic_writer
from .errors import PrototxtSyntaxError

# Fields that forks of Caffe define and BVLC does not, and caffe.proto does not
# declare: (message, field) -> the fork, named in the error (the fork fields we
# read are declared in caffe.proto, each with its fork).
FORK_FIELDS: dict[tuple[str, str], str] = {
    ("LayerParameter", "upsample_param"): "SegNet (alexgkendall/caffe-segnet)",
    ("LayerParameter", "bn_param"): (
        "SegNet (alexgkendall/caffe-segnet), PSPNet (hszhao/PSPNet) and yjxiong/caffe (BN layer)"
    ),
    ("LayerParameter", "dense_image_data_param"): "SegNet (alexgkendall/caffe-segnet)",
    ("LayerParameter", "interp_param"): "DeepLab v2 (deeplab-public-ver2) and PSPNet (hszhao/PSPNet)",
    ("LayerParameter", "psroi_pooling_param"): "R-FCN (daijifeng001/caffe-rfcn)",
    ("LayerParameter", "smooth_l1_loss_param"): "Fast/Faster R-CNN (rbgirshick/caffe-fast-rcnn)",
    # At TEST the fork scales Dropout's output by 1 - dropout_ratio when scale_train is false.
    ("DropoutParameter", "scale_train"): "Fast/Faster R-CNN (rbgirshick/caffe-fast-rcnn)",
    ("LayerParameter", "video_data_param"): "SSD (weiliu89/caffe, branch ssd)",
    ("LayerParameter", "engine"): "Intel Caffe (intel/caffe)",
    ("LayerParameter", "quantization_param"): "Ristretto (pmgysel/caffe)",
    ("ConvolutionParameter", "cudnn_convolution_algo_seeker"): "NVIDIA Caffe (NVIDIA/caffe)",
    ("BatchNormParameter", "scale_filler"): "NVIDIA Caffe (NVIDIA/caffe)",
    ("BatchNormParameter", "bias_filler"): "NVIDIA Caffe (NVIDIA/caffe)",
    ("BatchNormParameter", "engine"): "NVIDIA Caffe (NVIDIA/caffe)",
}
_UNKNOWN_FIELD = re.compile(r'^Message type "caffe\.(\w+)" has no field named "(\w+)"\.?$')

# Tokens of protobuf text format, enough to follow braces: strings, comments,
# braces, identifiers, and any other single character.
_TOKEN = re.compile(
    r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|#[^\n]*|[{}]'
    r"|[A-Za-z_][A-Za-z0-9_]*|\S"
)


def _enclosing_layer(text: str, line: int | None, column: int | None) -> str | None:
    """Best-effort name of the top-level layer block around 1-based `line`:`column`.

    Follows brace depth token by token, so one-line layers, nested messages that
    have a `name` of their own (ParamSpec) and braces in strings or comments are
    handled; the layer's name may come after the error position.
    """
    if line is None:
        return None
    # protobuf counts lines by "\n" only, columns from 1.
    offset = sum(len(content) + 1 for content in text.split("\n")[: line - 1])
    offset += max((column or 1) - 1, 0)
    depth, inside, name = 0, False, None
    before = ["", ""]  # the two previous significant tokens
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token.startswith("#"):
            continue
        if not inside and match.start() > offset:
            return None
        if token == "{":
            opener = before[1] if before[1] != ":" else before[0]
            if depth == 0 and opener in ("layer", "layers"):
                inside, name = True, None
            depth += 1
        elif token == "}":
            depth -= 1
            if inside and depth == 0:
                if match.end() > offset:
                    return name
                inside = False
        elif inside and depth == 1 and name is None and token[0] in "\"'" and before == ["name", ":"]:
            name = token[1:-1]
        before = [before[1], token]
    return name if inside else None


def _explain(message: str) -> str:
    """protobuf's "no field named" message, with the fork that defines the field."""
    unknown = _UNKNOWN_FIELD.match(message)
    if not unknown:
        return message
    owner, name = unknown.groups()
    fork = FORK_FIELDS.get((owner, name))
    if fork:
        return f"unknown field '{name}' in {owner}: defined by the fork {fork}, not by BVLC Caffe"
    return f"unknown field '{name}' in {owner}: in neither BVLC Caffe nor a known fork"


def parse_prototxt_text(text: str, *, source: str = "<string>") -> caffe_pb2.NetParameter:
    """Parse prototxt text into a NetParameter; `source` names it in errors."""
    net = caffe_pb2.NetParameter()
    try:
        text_format.Parse(text, net)
    except text_format.ParseError as exc:
        line, column = exc.GetLine(), exc.GetColumn()
        message = str(exc)
        # protobuf prefixes "line:column : "; we print our own location.
        message = _explain(re.sub(r"^\d+:\d+\s*:\s*", "", message))
        raise PrototxtSyntaxError(
            message, path=source, line=line, column=column, layer=_enclosing_layer(text, line, column)
        ) from None
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
            "not a text prototxt (invalid UTF-8; is this a binary .caffemodel?)", path=source, line=line
        ) from None
    if "\x00" in text:
        raise PrototxtSyntaxError("not a text prototxt (contains NUL bytes)", path=source)
    return parse_prototxt_text(text, source=source)


def format_prototxt(net: caffe_pb2.NetParameter) -> str:
    """Render a NetParameter as prototxt text (blobs are never written as text)."""
    stripped = caffe_pb2.NetParameter()
    stripped.CopyFrom(net)
    for layer in stripped.layer:
        del layer.blobs[:]
    for v1_layer in stripped.layers:
        del v1_layer.blobs[:]
    return text_format.MessageToString(stripped)


def write_prototxt(
    net: caffe_pb2.NetParameter, path: str | os.PathLike[str], *, header: str | None = None
) -> None:
    """Write `net` as prototxt atomically; `header` lines become leading comments."""
    text = format_prototxt(net)
    if header:
        text = "".join(f"# {line}\n" for line in header.splitlines()) + text
    with atomic_writer(path) as handle:
        handle.write(text.encode("utf-8"))
