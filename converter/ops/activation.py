"""Element-wise layers (activations and Caffe's neuron layers), Softmax and Dropout."""

from __future__ import annotations

import math

from torch import nn

from prototxt import Layer
from prototxt.shapes import canonical_axis

from .. import modules
from ..registry import register
from ._blobs import blob, has_weights


@register("ReLU")
def relu(layer: Layer) -> nn.Module:
    slope = layer.param.relu_param.negative_slope
    return nn.LeakyReLU(slope) if slope else nn.ReLU()


@register("PReLU")
def prelu(layer: Layer) -> nn.Module:
    shared = layer.param.prelu_param.channel_shared
    module = nn.PReLU(1 if shared else layer.bottom_shapes[0][1], init=0.25)
    if has_weights(layer):
        module.weight.data = blob(layer, 0).reshape(-1)
    return module


@register("Sigmoid")
def sigmoid(layer: Layer) -> nn.Module:
    return nn.Sigmoid()


@register("TanH")
def tanh(layer: Layer) -> nn.Module:
    return nn.Tanh()


@register("Softmax")
def softmax(layer: Layer) -> nn.Module:
    axis = canonical_axis(layer.param.softmax_param.axis, len(layer.bottom_shapes[0]), layer.param)
    return nn.Softmax(dim=axis)


@register("Dropout")
def dropout(layer: Layer) -> nn.Module:
    """Caffe scales by 1/(1-p) while training, like torch: identity at inference."""
    return nn.Dropout(layer.param.dropout_param.dropout_ratio)


@register("AbsVal")
def absval(layer: Layer) -> nn.Module:
    return modules.AbsVal()


@register("BNLL")
def bnll(layer: Layer) -> nn.Module:
    return modules.BNLL()


@register("Clip")
def clip(layer: Layer) -> nn.Module:
    return modules.Clip(layer.param.clip_param.min, layer.param.clip_param.max)


@register("ELU")
def elu(layer: Layer) -> nn.Module:
    return modules.ELU(layer.param.elu_param.alpha)


@register("Exp")
def exp(layer: Layer) -> nn.Module:
    """exp_layer.cpp: inner = ln(base) * scale, outer = base^shift (1 when shift is 0)."""
    p = layer.param.exp_param
    natural = p.base == -1
    inner = (1.0 if natural else math.log(p.base)) * p.scale
    if p.shift == 0:
        outer = 1.0
    else:
        outer = math.exp(p.shift) if natural else math.pow(p.base, p.shift)
    return modules.Exp(inner, outer)


@register("Log")
def log(layer: Layer) -> nn.Module:
    p = layer.param.log_param
    return modules.Log(p.scale, p.shift, 1.0 if p.base == -1 else 1.0 / math.log(p.base))


@register("Power")
def power(layer: Layer) -> nn.Module:
    p = layer.param.power_param
    return modules.Power(p.power, p.scale, p.shift)


@register("Threshold")
def threshold(layer: Layer) -> nn.Module:
    return modules.Threshold(layer.param.threshold_param.threshold)


@register("Swish")
def swish(layer: Layer) -> nn.Module:
    return modules.Swish(layer.param.swish_param.beta)
