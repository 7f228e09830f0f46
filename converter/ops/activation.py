"""Element-wise activations, Softmax and Dropout."""

from __future__ import annotations

from torch import nn

from prototxt import Layer
from prototxt.shapes import canonical_axis

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
