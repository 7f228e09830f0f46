"""Random-weight nets that behave like trained ones: image-like inputs, calibrated BatchNorm.

Random convolution weights with arbitrary BatchNorm statistics drive deep nets
into saturation or overflow, which makes numerical comparisons meaningless.
Running one batch with every BatchNorm in training mode (momentum None: the
running statistics become the batch statistics) normalises each layer's output
in turn, as a trained net would.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from prototxt import Net, attach_weights, random_weights

from .graph import convert
from .modules import running_statistics


@torch.no_grad()
def calibrate_batchnorm(
    net: Net, blobs: Mapping[str, Sequence[np.ndarray]], inputs: Sequence[torch.Tensor]
) -> dict[str, list[np.ndarray]]:
    """Return `blobs` with each BatchNorm's mean/variance measured on `inputs`.

    The scale-factor blob of each BatchNorm is kept, and the statistics stored
    multiplied by it, as Caffe stores them.
    """
    attach_weights(net, blobs)
    module = convert(net, require_weights=True)
    norms = {name: m for name, m in module.named_modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))}
    for norm in norms.values():
        norm.train()
        norm.momentum = None
        norm.reset_running_stats()
    module(*inputs)
    calibrated = {name: list(arrays) for name, arrays in blobs.items()}
    for layer in net.layers:
        if layer.type != "BatchNorm" or layer.name not in module.caffe_layer_modules:
            continue
        mean, var = running_statistics(norms[module.caffe_layer_modules[layer.name]])
        factor = np.float32(calibrated[layer.name][2].reshape(-1)[0])
        calibrated[layer.name] = [
            (mean.numpy() * factor).astype(np.float32),
            (var.numpy() * factor).astype(np.float32),
            calibrated[layer.name][2],
        ]
    return calibrated


def image_like(shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    """`prototxt.random_weights.image_like` as a tensor: a seeded Caffe-preprocessed image range."""
    return torch.from_numpy(random_weights.image_like(tuple(shape), seed))


def random_calibrated_blobs(net: Net, seed: int = 0, batch: int = 4) -> dict[str, list[np.ndarray]]:
    """`random_blobs(net, seed)` with BatchNorm statistics measured on `batch` image-like inputs."""
    shape = next(iter(net.inputs.values()))
    images = image_like((batch, *shape[1:]), seed)
    return calibrate_batchnorm(net, random_weights.random_blobs(net, seed), [images])
