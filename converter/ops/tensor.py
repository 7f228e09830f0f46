"""Layers that move data around: Concat, Reshape, Flatten, Split, Slice."""

from __future__ import annotations

from torch import nn

from prototxt import Layer
from prototxt.shapes import canonical_axis, concat_axis, reshape_axes, slice_points

from .. import modules
from ..registry import register


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
