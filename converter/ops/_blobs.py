"""Turning Caffe blobs (read-only numpy views) into torch tensors."""

from __future__ import annotations

import numpy as np
import torch

from prototxt import Layer, NetDefinitionError


def blob(layer: Layer, index: int) -> torch.Tensor:
    """Blob `index` of `layer` as a float32 tensor that owns its memory."""
    if index >= len(layer.blobs):
        raise NetDefinitionError(
            f"needs blob {index} but has {len(layer.blobs)} blob(s) (was a caffemodel given?)",
            layer=layer.name,
        )
    return torch.from_numpy(np.array(layer.blobs[index], dtype=np.float32, copy=True))


def has_weights(layer: Layer) -> bool:
    return bool(layer.blobs)
