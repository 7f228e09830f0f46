"""Eltwise and the SENet repository's Axpy."""

from __future__ import annotations

from torch import nn

from prototxt import Layer, NetDefinitionError

from .. import modules
from ..registry import register


@register("Eltwise")
def eltwise(layer: Layer) -> nn.Module:
    p = layer.param.eltwise_param
    if p.operation == p.SUM:
        coefficients = list(p.coeff) or None
        if coefficients is not None and all(c == 1.0 for c in coefficients):
            coefficients = None
        return modules.EltwiseSum(coefficients)
    if p.coeff:
        raise NetDefinitionError("Eltwise coefficients only apply to SUM", layer=layer.name)
    return modules.EltwiseProd() if p.operation == p.PROD else modules.EltwiseMax()


@register("Axpy")
def axpy(layer: Layer) -> nn.Module:
    """top = bottom[0] * bottom[1] + bottom[2], as hujie-frank/SENet's axpy_layer.cpp."""
    return modules.Axpy()
