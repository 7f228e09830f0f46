"""Caffe model files in and out, with Caffe's shape rules. Knows nothing of torch.

net = load_net("deploy.prototxt", "weights.caffemodel")
for layer in net.layers: layer.name, layer.type, layer.top_shapes, layer.blobs
"""

from .caffemodel import (
    CaffeModel,
    parse_blobproto_buffer,
    parse_caffemodel_buffer,
    read_blobproto,
    read_caffemodel,
    write_caffemodel,
)
from .errors import (
    CaffeError,
    CaffemodelFormatError,
    ConversionError,
    InputError,
    NetDefinitionError,
    OutputError,
    PrototxtSyntaxError,
    WeightsMismatchError,
)
from .foldlevel import FoldLevel
from .net import Layer, Net, attach_weights, build_net, load_net
from .portable import portable_net
from .text import format_prototxt, parse_prototxt, parse_prototxt_text, write_prototxt

__all__ = [
    "CaffeError",
    "CaffeModel",
    "CaffemodelFormatError",
    "FoldLevel",
    "ConversionError",
    "InputError",
    "Layer",
    "Net",
    "NetDefinitionError",
    "OutputError",
    "PrototxtSyntaxError",
    "WeightsMismatchError",
    "attach_weights",
    "build_net",
    "format_prototxt",
    "load_net",
    "parse_blobproto_buffer",
    "parse_caffemodel_buffer",
    "parse_prototxt",
    "parse_prototxt_text",
    "portable_net",
    "read_blobproto",
    "read_caffemodel",
    "write_caffemodel",
    "write_prototxt",
]
