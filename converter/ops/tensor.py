"""Layers that move, pick or reduce data: Concat, Reshape, Flatten, Split, Slice, Crop, Tile,
BatchReindex, Im2col, ArgMax, Reduction, Parameter."""

from __future__ import annotations

import math

from torch import nn

from prototxt import Layer
from prototxt.shapes import (
    canonical_axis,
    concat_axis,
    conv_geometry,
    crop_offsets,
    reshape_axes,
    slice_points,
)

from .. import modules
from ..registry import register
from ._blobs import blob, has_weights


@register("Concat")
def concat(layer: Layer) -> nn.Module:
    return modules.Concat(concat_axis(layer.param, len(layer.bottom_shapes[0])))


@register("Reshape")
def reshape(layer: Layer) -> nn.Module:
    p = layer.param.reshape_param
    start, end = reshape_axes(layer.param, len(layer.bottom_shapes[0]))
    # num_axes -1 means "to the last axis": left open so the module follows its input.
    return modules.Reshape(list(p.shape.dim), start, None if p.num_axes == -1 else end)


@register("Flatten")
def flatten(layer: Layer) -> nn.Module:
    ndim = len(layer.bottom_shapes[0])
    p = layer.param.flatten_param
    return modules.Flatten(
        canonical_axis(p.axis, ndim, layer.param), canonical_axis(p.end_axis, ndim, layer.param)
    )


@register("Split")
def split(layer: Layer) -> None:
    """Every top of a Split is its bottom: plain data flow, no module."""
    return None


@register("Slice")
def slice_(layer: Layer) -> nn.Module:
    axis, bounds = slice_points(layer.param, layer.bottom_shapes[0])
    return modules.Slice(axis, [end - start for start, end in zip(bounds, bounds[1:])])


@register("Input")
def input_(layer: Layer) -> None:
    """Inputs become the graph's placeholders, named after their blobs."""
    return None


@register("Crop")
def crop(layer: Layer) -> nn.Module:
    start = canonical_axis(layer.param.crop_param.axis, len(layer.bottom_shapes[0]), layer.param)
    offsets = crop_offsets(layer.param, layer.bottom_shapes)[start:]
    return modules.Crop(start, offsets, list(layer.top_shapes[0][start:]))


@register("Tile")
def tile(layer: Layer) -> nn.Module:
    ndim = len(layer.bottom_shapes[0])
    p = layer.param.tile_param
    return modules.Tile(ndim, canonical_axis(p.axis, ndim, layer.param), p.tiles)


@register("ShuffleChannel")
def shuffle_channel(layer: Layer) -> nn.Module:
    return modules.ShuffleChannel(layer.param.shuffle_channel_param.group)


@register("BatchReindex")
def batch_reindex(layer: Layer) -> nn.Module:
    return modules.BatchReindex()


@register("Im2col")
def im2col(layer: Layer) -> nn.Module:
    g = conv_geometry(layer.param)
    return modules.Im2col(g["kernel"], g["stride"], g["pad"], g["dilation"])


@register("ArgMax")
def argmax(layer: Layer) -> nn.Module:
    p, ndim = layer.param.argmax_param, len(layer.bottom_shapes[0])
    axis = canonical_axis(p.axis, ndim, layer.param) if p.HasField("axis") else None
    return modules.ArgMax(p.top_k, axis, p.out_max_val, len(layer.top_shapes[0]))


@register("Reduction")
def reduction(layer: Layer) -> nn.Module:
    p, bottom = layer.param.reduction_param, layer.bottom_shapes[0]
    axis = canonical_axis(p.axis, len(bottom), layer.param)
    coeff = p.coeff / math.prod(bottom[axis:]) if p.operation == p.MEAN else p.coeff
    return modules.Reduction(p.ReductionOp.Name(p.operation), axis, coeff)


@register("Parameter")
def parameter(layer: Layer) -> nn.Module:
    module = modules.LearnedBlob(layer.top_shapes[0])
    if has_weights(layer):
        module.weight.data = blob(layer, 0).reshape(layer.top_shapes[0])
    return module
