"""Turning Caffe blobs (read-only numpy views) into torch tensors of the net's dtype.

`convert(..., dtype=...)` sets `DTYPE` while the converters run, so a converter's
blobs and whatever it derives from them (BatchNorm's statistics divided by the
scale factor) are computed in that dtype, as Caffe's `Net<Dtype>` computes them.
"""

from __future__ import annotations

from contextvars import ContextVar

import numpy as np
import torch

from prototxt import Layer, NetDefinitionError

DTYPE: ContextVar[torch.dtype] = ContextVar("converter_dtype", default=torch.float32)


def blob(layer: Layer, index: int) -> torch.Tensor:
    """Blob `index` of `layer` as a tensor of the net's dtype (`DTYPE`) that owns its memory."""
    if index >= len(layer.blobs):
        raise NetDefinitionError(
            f"needs blob {index} but has {len(layer.blobs)} blob(s) (was a caffemodel given?)",
            layer=layer.name,
        )
    return torch.from_numpy(np.array(layer.blobs[index], copy=True)).to(DTYPE.get())


def has_weights(layer: Layer) -> bool:
    return bool(layer.blobs)
