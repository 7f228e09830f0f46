"""Any Caffe classification net -> an exact PyTorch module (torch.fx) -> ONNX.

Knows nothing of SENets: it converts whatever layers `prototxt` describes, one
registered converter per layer type.

    gm = convert_caffe("deploy.prototxt", "weights.caffemodel", outputs=["classifier"])
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from prototxt import load_net

from .graph import CaffeGraphModule, convert
from .registry import CONVERTERS, UnsupportedLayerError, register


def convert_caffe(
    prototxt: str | os.PathLike[str] | None,
    caffemodel: str | os.PathLike[str] | None = None,
    outputs: Sequence[str] | None = None,
) -> CaffeGraphModule:
    """Load a prototxt/caffemodel pair (or a lone caffemodel) and convert it."""
    net = load_net(prototxt, caffemodel)
    return convert(net, outputs, require_weights=caffemodel is not None)


__all__ = ["CONVERTERS", "CaffeGraphModule", "UnsupportedLayerError", "convert", "convert_caffe", "register"]
