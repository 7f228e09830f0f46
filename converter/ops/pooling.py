"""Pooling with Caffe's rounding and divisor.

Caffe rounds the output size up and drops a last window that would start in the
padding; AVE divides by the window clipped to the padded input. torch's
`ceil_mode=True` pooling with `count_include_pad=True` has these rules, but only
accepts pad <= kernel / 2 and also drops a last window of an unpadded input;
and ONNX's shape inference keeps a window that starts in the padding (declaring
one row too many). In those cases `CaffePool2d` does it by hand, with explicit
padding and no rounding to infer.
"""

from __future__ import annotations

from torch import nn

from prototxt import Layer, NetDefinitionError
from prototxt.shapes import SHAPE_RULES, plain_pooling_matches, pool_geometry, spp_levels

from .. import modules
from ..modules import pair
from ..registry import register


@register("Pooling")
def pooling(layer: Layer) -> nn.Module:
    p = layer.param.pooling_param
    if p.pool == p.STOCHASTIC:
        raise NetDefinitionError("STOCHASTIC pooling has no deterministic inference form", layer=layer.name)
    mode = "MAX" if p.pool == p.MAX else "AVE"
    bottom, top = layer.bottom_shapes[0], layer.top_shapes[0]
    if p.global_pooling:
        return nn.AdaptiveMaxPool2d(1) if mode == "MAX" else nn.AdaptiveAvgPool2d(1)
    g = pool_geometry(layer.param, bottom)
    kernel, stride, pad = pair(g["kernel"]), pair(g["stride"]), pair(g["pad"])
    ceil = p.round_mode == p.CEIL
    if plain_pooling_matches(g, bottom, top, ceil):
        if mode == "MAX":
            return nn.MaxPool2d(kernel, stride, pad, ceil_mode=ceil)
        return nn.AvgPool2d(kernel, stride, pad, ceil_mode=ceil, count_include_pad=True)
    return modules.CaffePool2d(mode, g, bottom, top)


@register("SPP")
def spp(layer: Layer) -> nn.Module:
    """Caffe's SPP is a Pooling layer per pyramid level (flattened and concatenated when
    there are several), built here from the same parameters spp_layer.cpp gives them."""
    bottom = layer.bottom_shapes[0]
    levels = [
        pooling(
            Layer(
                name=level.name,
                type="Pooling",
                bottoms=layer.bottoms,
                tops=[level.name],
                param=level,
                bottom_shapes=[bottom],
                top_shapes=SHAPE_RULES["Pooling"](level, [bottom]),
            )
        )
        for level in spp_levels(layer.param, bottom)
    ]
    return levels[0] if len(levels) == 1 else modules.SPP(levels)
