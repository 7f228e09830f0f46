"""Caffe -> ONNX without torch: a `prototxt.Net` lowered straight to an ONNX graph.

numpy and onnx only, so a deployer who wants ONNX for a C++ runtime needs neither
torch nor a GPU stack. One lowering per Caffe layer type (`LOWERINGS`), the same
types and the same numbers as `converter`'s PyTorch route; weights stay views of
the caffemodel's memory map until they are streamed into the file.

    model = lower(load_net("deploy.prototxt", "weights.caffemodel"))
    write_onnx(model, "net.onnx")
"""

from . import layers  # noqa: F401  (registers the lowerings)
from .check import OrtCheck, check_onnxruntime
from .graph import MIN_OPSET, LoweredModel, lower
from .registry import LOWERINGS, UnsupportedLoweringError, register
from .write import EXTERNAL_DATA_BYTES, external_data_path, needs_external_data, write_onnx

__all__ = [
    "EXTERNAL_DATA_BYTES",
    "LOWERINGS",
    "MIN_OPSET",
    "LoweredModel",
    "OrtCheck",
    "UnsupportedLoweringError",
    "check_onnxruntime",
    "external_data_path",
    "lower",
    "needs_external_data",
    "register",
    "write_onnx",
]
