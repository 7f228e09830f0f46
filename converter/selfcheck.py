"""Check a converted net against the Caffe runtime a deployer has (OpenCV).

OpenCV's Caffe importer (opencv-python-headless < 5) is the only independent
Caffe runtime installable from a package registry, so conversion checks against
it; the tests' arbiter is BVLC Caffe itself (tests/caffe_reference.py). Its own
Axpy mapping swaps the operands, so the check hands it the portable prototxt
(Axpy rewritten into Reshape + Scale + Eltwise), never the original.
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

from prototxt import Net, portable_net, write_prototxt

from .calibrate import image_like
from .graph import CaffeGraphModule


@dataclass
class GraphCheck:
    blob: str
    scale: float  # max |value| of the blob in float64
    float32_vs_float64: float  # relative max abs difference of our own float32 run
    opencv_vs_ours: float | None  # None when OpenCV is not installed

    def summary(self) -> str:
        text = (
            f"self-check on '{self.blob}' (relative to max |value| {self.scale:.4g}): "
            f"float32 vs float64 {self.float32_vs_float64:.2e}"
        )
        if self.opencv_vs_ours is None:
            return text + "; OpenCV not installed, no independent reference"
        return text + f"; OpenCV (portable prototxt) vs ours {self.opencv_vs_ours:.2e}"


def opencv_forward(
    net: Net, caffemodel: str | os.PathLike[str], inputs: np.ndarray, blobs: Sequence[str]
) -> list[np.ndarray] | None:
    """Run OpenCV's Caffe importer on the portable form of `net`; None without cv2."""
    try:
        import cv2
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as scratch:
        portable = Path(scratch) / "portable.prototxt"
        write_prototxt(portable_net(net.to_proto()), portable)
        opencv_net = cv2.dnn.readNetFromCaffe(str(portable), str(caffemodel))
        opencv_net.setInput(np.ascontiguousarray(inputs, dtype=np.float32))
        return [np.asarray(out) for out in opencv_net.forward(list(blobs))]


def _comparable(module: CaffeGraphModule, net: Net, blob: str) -> Callable[[np.ndarray], np.ndarray]:
    """How to compare values of `blob` across runtimes: flattened, unless the layer that writes
    it says otherwise (`comparable`: SSD detections are sets of rows, ordered and padded
    differently by OpenCV)."""
    writer = [layer.name for layer in net.layers if blob in layer.tops][-1:]
    target = module.caffe_layer_modules.get(writer[0]) if writer else None
    layer = module.get_submodule(target) if target else None
    return getattr(layer, "comparable", np.ravel)


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    """Max abs difference; infinite when the two disagree on how many values there are."""
    return float(np.abs(a - b).max(initial=0.0)) if a.shape == b.shape else math.inf


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
    scale = float(np.abs(out64).max(initial=0.0)) or 1.0
    ours = _distance(out32, out64) / scale
    reference = None
    if caffemodel is not None:
        result = opencv_forward(net, caffemodel, x.numpy(), [blob])
        if result is not None:
            reference = _distance(form(result[0]), out32) / scale
    return GraphCheck(blob=blob, scale=scale, float32_vs_float64=ours, opencv_vs_ours=reference)
