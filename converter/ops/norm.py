"""BatchNorm, Scale, Bias, LRN and MVN."""

from __future__ import annotations

import torch
from torch import nn

from prototxt import Layer, NetDefinitionError
from prototxt.shapes import canonical_axis

from .. import modules
from ..registry import register
from ._blobs import DTYPE, blob, has_weights


@register("BatchNorm")
def batch_norm(layer: Layer) -> nn.Module:
    """Caffe's BatchNorm has no affine part; its stats are stored times a scale factor.

    Caffe divides mean and variance by blob 2 (the moving-average factor), and
    uses 0 for both when that factor is 0 (batch_norm_layer.cpp); it multiplies by
    the reciprocal in the net's dtype, and so do we.
    """
    shape = layer.bottom_shapes[0]
    if not 2 <= len(shape) <= 4:
        raise NetDefinitionError(
            f"BatchNorm of a {len(shape)}-D input is not supported (2-D to 4-D only)", layer=layer.name
        )
    channels = shape[1]
    cls = nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d
    module = cls(channels, eps=layer.param.batch_norm_param.eps, affine=False, dtype=DTYPE.get())
    module.eval()
    if has_weights(layer):
        factor = float(blob(layer, 2).reshape(-1)[0])
        inverse = 0.0 if factor == 0 else 1.0 / factor
        mean, var = modules.running_statistics(module)
        mean.copy_(blob(layer, 0).reshape(-1) * inverse)
        var.copy_(blob(layer, 1).reshape(-1) * inverse)
    return module


@register("Scale")
def scale(layer: Layer) -> nn.Module:
    p = layer.param.scale_param
    ndim = len(layer.bottom_shapes[0])
    if len(layer.bottoms) == 2:
        axis = canonical_axis(p.axis, ndim, layer.param)
        bias = blob(layer, 0) if p.bias_term and has_weights(layer) else None
        if p.bias_term and bias is None:
            bias = torch.zeros(layer.bottom_shapes[1])
        return modules.ScaleBy(ndim, axis, len(layer.bottom_shapes[1]), bias)
    shape = layer.blob_shapes[0]  # the learned axes, as prototxt's shape rules found them
    start = canonical_axis(p.axis, ndim, layer.param)
    module = modules.Affine(shape, ndim, start, scale=True, bias=p.bias_term)
    if has_weights(layer):
        assert module.weight is not None  # built with scale=True
        module.weight.data = blob(layer, 0).reshape(shape)
        if module.bias is not None:
            module.bias.data = blob(layer, 1).reshape(shape)
    return module


@register("Bias")
def bias(layer: Layer) -> nn.Module:
    p = layer.param.bias_param
    ndim = len(layer.bottom_shapes[0])
    if len(layer.bottoms) == 2:
        return modules.BiasBy(ndim, canonical_axis(p.axis, ndim, layer.param), len(layer.bottom_shapes[1]))
    shape = layer.blob_shapes[0]
    start = canonical_axis(p.axis, ndim, layer.param)
    module = modules.Affine(shape, ndim, start, scale=False, bias=True)
    if has_weights(layer) and module.bias is not None:  # built with bias=True
        module.bias.data = blob(layer, 0).reshape(shape)
    return module


@register("LRN")
def lrn(layer: Layer) -> nn.Module:
    p = layer.param.lrn_param
    if p.local_size % 2 == 0:
        raise NetDefinitionError("LRN local_size must be odd (Caffe requires it)", layer=layer.name)
    if p.norm_region == p.WITHIN_CHANNEL:
        return modules.LRNWithinChannel(p.local_size, p.alpha, p.beta)
    return nn.LocalResponseNorm(p.local_size, alpha=p.alpha, beta=p.beta, k=p.k)


@register("MVN")
def mvn(layer: Layer) -> nn.Module:
    p = layer.param.mvn_param
    return modules.MVN(p.across_channels, p.normalize_variance, p.eps)
