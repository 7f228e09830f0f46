"""Seeded random blobs for a net: caffemodels to test and demo with.

The original SENet caffemodels are not reachable from CI, so tests write
random-weight caffemodels of the real prototxts. Convolutions get He-scaled
weights, BatchNorm a non-trivial scale factor (so the division by it is
exercised), and the last Scale of every Axpy residual branch is damped so a
deep random net stays well-conditioned instead of exploding.
"""

from __future__ import annotations

import math

import numpy as np

from .net import Net

RESIDUAL_DAMPING = 0.2

# Seeded stand-ins for images go through Caffe's preprocessing range: 0..255 minus a
# mean near the SENet release's (104, 117, 123).
CAFFE_PIXEL_OFFSET = 117.0


def image_like(shape: tuple[int, ...] | list[int], seed: int = 0) -> np.ndarray:
    """Seeded float32 uniform(0, 255) - 117: the value range of a Caffe-preprocessed image."""
    rng = np.random.default_rng(seed)
    return rng.random(tuple(shape), dtype=np.float32) * np.float32(255.0) - np.float32(CAFFE_PIXEL_OFFSET)


def _residual_scales(net: Net) -> set[str]:
    """Names of the Scale layers that last wrote an Axpy's residual operand."""
    last_writer: dict[str, str] = {}
    damped: set[str] = set()
    for layer in net.layers:
        if layer.type == "Axpy":
            writer = last_writer.get(layer.bottoms[1])
            if writer and net.layer(writer).type == "Scale":
                damped.add(writer)
        for top in layer.tops:
            last_writer[top] = layer.name
    return damped


def random_blobs(net: Net, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Random blobs of the shapes `net` implies, reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    damped = _residual_scales(net)
    blobs: dict[str, list[np.ndarray]] = {}
    for layer in net.layers:
        shapes = layer.blob_shapes
        if not shapes:
            continue
        if layer.type in ("Convolution", "Deconvolution", "InnerProduct"):
            weight = shapes[0]
            fan_in = math.prod(weight[1:]) if layer.type != "InnerProduct" else weight[-1]
            gain = 2.0 if layer.type != "InnerProduct" else 1.0
            arrays = [rng.normal(0.0, math.sqrt(gain / fan_in), weight)]
            arrays += [rng.normal(0.0, 0.01, s) for s in shapes[1:]]
        elif layer.type == "BatchNorm":
            factor = rng.uniform(0.5, 2.0)
            mean = rng.normal(0.0, 0.1, shapes[0]) * factor
            var = rng.uniform(0.5, 1.5, shapes[1]) * factor
            arrays = [mean, var, np.array([factor])]
        elif layer.type == "Scale" and len(layer.bottoms) == 1:
            gamma = rng.uniform(0.5, 1.5, shapes[0])
            if layer.name in damped:
                gamma *= RESIDUAL_DAMPING
            arrays = [gamma] + [rng.normal(0.0, 0.1, s) for s in shapes[1:]]
        elif layer.type == "PReLU":
            arrays = [rng.uniform(0.0, 0.3, shapes[0])]
        else:
            arrays = [rng.normal(0.0, 0.1, s) for s in shapes]
        blobs[layer.name] = [np.asarray(a, dtype=np.float32) for a in arrays]
    return blobs
