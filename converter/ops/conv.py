"""Convolution, Deconvolution, InnerProduct and Embed."""

from __future__ import annotations

import math

from torch import nn

from prototxt import Layer
from prototxt.shapes import canonical_axis, conv_geometry

from .. import modules
from ..modules import pair
from ..registry import register
from ._blobs import blob, has_weights


@register("Convolution", "Deconvolution")
def convolution(layer: Layer) -> nn.Module:
    p = layer.param.convolution_param
    g = conv_geometry(layer.param)
    in_channels = layer.bottom_shapes[0][1]
    cls = nn.Conv2d if layer.type == "Convolution" else nn.ConvTranspose2d
    module = cls(
        in_channels,
        p.num_output,
        pair(g["kernel"]),
        stride=pair(g["stride"]),
        padding=pair(g["pad"]),
        dilation=pair(g["dilation"]),
        groups=p.group,
        bias=p.bias_term,
    )
    if has_weights(layer):
        module.weight.data = blob(layer, 0)
        if module.bias is not None:
            module.bias.data = blob(layer, 1)
    return module


@register("InnerProduct")
def inner_product(layer: Layer) -> nn.Module:
    p = layer.param.inner_product_param
    bottom = layer.bottom_shapes[0]
    axis = canonical_axis(p.axis, len(bottom), layer.param)
    fan_in = math.prod(bottom[axis:])
    module = modules.InnerProduct(fan_in, p.num_output, bias=p.bias_term, axis=axis)
    if has_weights(layer):
        weight = blob(layer, 0)
        module.linear.weight.data = weight.t().contiguous() if p.transpose else weight
        if p.bias_term:
            module.linear.bias.data = blob(layer, 1)
    return module


@register("Embed")
def embed(layer: Layer) -> nn.Module:
    p = layer.param.embed_param
    module = modules.Embed(p.input_dim, p.num_output, p.bias_term)
    if has_weights(layer):
        module.weight.data = blob(layer, 0)
        if module.bias is not None:
            module.bias.data = blob(layer, 1)
    return module
