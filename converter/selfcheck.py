"""Check a converted net against the Caffe runtime a deployer has (OpenCV).

OpenCV's Caffe importer (opencv-python-headless < 5) is the only independent
Caffe runtime installable from a package registry, so conversion checks against
it; the tests' arbiter is BVLC Caffe itself (tests/caffe_reference.py). Its own
Axpy mapping swaps the operands, so the check hands it the portable prototxt
(Axpy rewritten into Reshape + Scale + Eltwise), never the original. OpenCV's
caffe.proto also numbers pooling field 13 `ceil_mode` (a bool) where BVLC has
`round_mode`, so BVLC's `round_mode: FLOOR` is handed to it as `ceil_mode: false`.
A net OpenCV cannot run is reported as such in the check, never as a crash of
the conversion.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from prototxt import ConversionError, Net, caffe_pb2, portable_net, write_prototxt

from .calibrate import image_like
from .graph import CaffeGraphModule

# An independent float32 implementation (OpenCV, ONNX Runtime) differs from ours by its own
# round-off plus ours. On the real nsfw model and the seven SENets with random weights OpenCV
# stays within FLOAT32_FACTOR times our own float32-vs-float64 error (tests/test_converter_nets.py);
# TOLERANCE, relative to the output's scale, is the floor for nets whose float32 error is tiny.
TOLERANCE = 1e-4
FLOAT32_FACTOR = 3.0
# Unit round-off of float16 over float32 (2**-11 / 2**-24): a float16 run's error is that much larger.
FLOAT16_RATIO = 2.0**13


def agreement_bound(float32_error: float, float16: bool = False) -> float:
    """How far another implementation's output may be from ours, relative to the output's scale."""
    return max(TOLERANCE, FLOAT32_FACTOR * float32_error * (FLOAT16_RATIO if float16 else 1.0))


def relative_difference(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, scale: float) -> float:
    """`_distance` of the two, flattened, over `scale`."""
    return _distance(np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)) / scale


@dataclass
class GraphCheck:
    blob: str
    scale: float  # max |value| of the blob in float64
    float32_vs_float64: float  # relative max abs difference of our own float32 run (inf: not finite)
    opencv_vs_ours: float | None  # None when OpenCV is not installed or could not run the net
    opencv_failure: str | None = None  # OpenCV's error when it could not run the net

    @property
    def bound(self) -> float:
        return agreement_bound(self.float32_vs_float64)

    @property
    def passed(self) -> bool:
        """Finite outputs, and OpenCV (when installed) within `bound` of ours."""
        finite = self.float32_vs_float64 != float("inf")
        return finite and (self.opencv_vs_ours is None or self.opencv_vs_ours <= self.bound)

    def summary(self) -> str:
        text = (
            f"self-check on '{self.blob}' (relative to max |value| {self.scale:.4g}): "
            f"float32 vs float64 {self.float32_vs_float64:.2e}"
        )
        if self.opencv_failure is not None:
            return text + f"; OpenCV could not run the net ({self.opencv_failure}), no independent reference"
        if self.opencv_vs_ours is None:
            text += "; OpenCV not installed, no independent reference"
        else:
            text += f"; OpenCV (portable prototxt) vs ours {self.opencv_vs_ours:.2e} (bound {self.bound:.1e})"
        return f"{text}: {'ok' if self.passed else 'FAILED'}"


class OpenCVFailure(ConversionError):
    """OpenCV's importer or forward pass refused the net (its first error line)."""


def opencv_dialect(net: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    """`net` as OpenCV's importer reads it: `round_mode: FLOOR` written as its `ceil_mode: false`."""
    for layer in net.layer:
        pooling = layer.pooling_param
        if layer.type == "Pooling" and pooling.round_mode == caffe_pb2.PoolingParameter.FLOOR:
            pooling.ClearField("round_mode")
            pooling.ceil_mode = False
    return net


def opencv_output_names(net: caffe_pb2.NetParameter, blobs: Sequence[str]) -> list[str]:
    """OpenCV's forward() takes layer names: each blob as the layer that last writes it (OpenPose's
    `concat_stage7` writes `net_output`; an in-place ReLU writes the value its blob ends with)."""
    writer = {top: layer.name for layer in net.layer for top in layer.top}
    return [writer.get(blob, blob) for blob in blobs]


def opencv_forward(
    net: Net, caffemodel: str | os.PathLike[str], inputs: np.ndarray, blobs: Sequence[str]
) -> list[np.ndarray] | None:
    """Run OpenCV's Caffe importer on the portable form of `net`; None without cv2.

    Raises OpenCVFailure when OpenCV cannot read or run the net.
    """
    try:
        import cv2
    except ImportError:
        return None
    proto = opencv_dialect(portable_net(net.to_proto()))
    with tempfile.TemporaryDirectory() as scratch:
        portable = Path(scratch) / "portable.prototxt"
        write_prototxt(proto, portable)
        try:
            opencv_net = cv2.dnn.readNetFromCaffe(str(portable), str(caffemodel))
            opencv_net.setInput(np.ascontiguousarray(inputs, dtype=np.float32))
            return [np.asarray(out) for out in opencv_net.forward(opencv_output_names(proto, blobs))]
        except cv2.error as exc:
            raise OpenCVFailure(str(exc).strip().splitlines()[0]) from None


def _comparable(module: CaffeGraphModule, net: Net, blob: str) -> Callable[[np.ndarray], np.ndarray]:
    """How to compare values of `blob` across runtimes: flattened, unless the layer that writes
    it says otherwise (`comparable`: SSD detections are sets of rows, ordered and padded
    differently by OpenCV)."""
    writer = [layer.name for layer in net.layers if blob in layer.tops][-1:]
    target = module.caffe_layer_modules.get(writer[0]) if writer else None
    layer = module.get_submodule(target) if target else None
    return getattr(layer, "comparable", np.ravel)


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    """Max abs difference; infinite when the two disagree on how many values there are, or
    when either is not finite (a non-finite output never passes a check)."""
    if a.shape != b.shape or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return math.inf
    return float(np.abs(a.astype(np.float64) - b).max(initial=0.0))


@torch.no_grad()
def check_graph(
    module: CaffeGraphModule, net: Net, caffemodel: str | os.PathLike[str] | None, seed: int = 0
) -> GraphCheck:
    """Run `module` on a seeded image-like input in float32 and float64, and OpenCV."""
    x = image_like(next(iter(net.inputs.values())), seed)
    blob = module.caffe_outputs[0]
    form = _comparable(module, net, blob)
    out32 = module(x)
    out32 = form((out32[0] if isinstance(out32, tuple) else out32).numpy())
    out64 = module.double()(x.double())
    module.float()
    out64 = form((out64[0] if isinstance(out64, tuple) else out64).numpy())
    scale = (float(np.abs(out64).max(initial=0.0)) if np.isfinite(out64).all() else 1.0) or 1.0
    ours = _distance(out32, out64) / scale
    reference, failure = None, None
    if caffemodel is not None:
        try:
            result = opencv_forward(net, caffemodel, x.numpy(), [blob])
        except OpenCVFailure as exc:
            result, failure = None, str(exc)
        if result is not None:
            reference = _distance(form(result[0]), out32) / scale
    return GraphCheck(blob, scale, ours, reference, failure)


@torch.no_grad()
def float32_error(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """`module`'s float32 outputs on `x`, their float64 scale and its float32 vs float64 error.

    Several outputs are concatenated (flattened). The module is returned to float32.
    """

    def flat(out: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
        return torch.cat([o.reshape(-1) for o in (out if isinstance(out, tuple) else (out,))])

    out32 = flat(module(x))
    try:
        out64 = flat(module.double()(x.double()))
    finally:
        module.float()
    scale = float(out64.abs().max()) if torch.isfinite(out64).all() else 1.0
    return out32, scale or 1.0, relative_difference(out32, out64, scale or 1.0)
