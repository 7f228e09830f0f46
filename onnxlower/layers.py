"""One ONNX lowering per Caffe layer type, computing what `converter`'s modules compute.

Each mirrors the Caffe layer's .cpp (and the PyTorch converter of the same type,
op for op where ONNX Runtime's kernels then give the same numbers). Blobs become
initializers that are views of the caffemodel, reshaped only in their metadata.
"""

from __future__ import annotations

import math

import numpy as np

from prototxt import Layer, NetDefinitionError
from prototxt.shapes import (
    ave_pool_divisor,
    canonical_axis,
    concat_axis,
    conv_geometry,
    plain_pooling_matches,
    pool_geometry,
    pool_padding,
    reshape_axes,
    slice_points,
)

from .builder import Builder
from .registry import register


def blob(layer: Layer, index: int) -> np.ndarray:
    """Blob `index` of `layer` (a read-only view), or a one-line error naming the layer."""
    if index >= len(layer.blobs):
        raise NetDefinitionError(
            f"needs blob {index} but has {len(layer.blobs)} blob(s) (was a caffemodel given?)",
            layer=layer.name,
        )
    return layer.blobs[index]


def _learned(layer: Layer, b: Builder, index: int, what: str, shape: tuple[int, ...]) -> str:
    """Blob `index` as an initializer of `shape`; without weights, Caffe's fillers' defaults
    as `converter` uses them (weights 1 for Scale, 0 for biases)."""
    if layer.blobs:
        return b.weight(f"{layer.name}/{what}", blob(layer, index), shape)
    fill = 1.0 if what == "scale" else 0.0
    return b.weight(f"{layer.name}/{what}", np.full(shape, fill, dtype=b.dtype))


def _trailing_ones(shape: tuple[int, ...], ndim: int, axis: int) -> tuple[int, ...]:
    """`shape` placed at `axis` of an `ndim`-D tensor under ONNX's right-aligned broadcasting."""
    return (*shape, *(1,) * (ndim - axis - len(shape)))


# --- activations -------------------------------------------------------------------------------


@register("ReLU")
def relu(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    slope = layer.param.relu_param.negative_slope
    if slope:
        return b.op("LeakyRelu", x, layer.name, tops, alpha=slope)
    return b.op("Relu", x, layer.name, tops)


@register("PReLU")
def prelu(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    ndim = len(layer.bottom_shapes[0])
    channels = 1 if layer.param.prelu_param.channel_shared else layer.bottom_shapes[0][1]
    shape = (channels,) if channels == 1 else _trailing_ones((channels,), ndim, 1)
    slope = (
        b.weight(f"{layer.name}/slope", blob(layer, 0), shape)
        if layer.blobs
        else b.weight(f"{layer.name}/slope", np.full(shape, 0.25, dtype=b.dtype))
    )
    return b.op("PRelu", [x[0], slope], layer.name, tops)


@register("Sigmoid")
def sigmoid(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    return b.op("Sigmoid", x, layer.name, tops)


@register("TanH")
def tanh(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    return b.op("Tanh", x, layer.name, tops)


@register("Softmax")
def softmax(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    axis = canonical_axis(layer.param.softmax_param.axis, len(layer.bottom_shapes[0]), layer.param)
    return b.op("Softmax", x, layer.name, tops, axis=axis)


@register("Dropout", "Split")
def pass_through(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    """Dropout is the identity at inference; every top of a Split is its bottom."""
    return x * len(tops)


@register("Input")
def input_(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    """Inputs are the graph's inputs, named after their blobs (never called)."""
    raise AssertionError("Input layers become graph inputs")


# --- arithmetic ----------------------------------------------------------------------------------


@register("Eltwise")
def eltwise(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    p = layer.param.eltwise_param
    if p.coeff and p.operation != p.SUM:
        raise NetDefinitionError("Eltwise coefficients only apply to SUM", layer=layer.name)
    if p.operation == p.MAX:
        return b.op("Max", x, layer.name, tops)
    op = "Mul" if p.operation == p.PROD else "Add"
    terms = list(x)
    if p.coeff and any(c != 1.0 for c in p.coeff):
        terms = [
            b.op("Mul", [term, b.scalar(f"{layer.name}/coeff{i}", c)], f"{layer.name}/coeff{i}")[0]
            for i, (term, c) in enumerate(zip(terms, p.coeff))
        ]
    out = terms[0]
    for i, term in enumerate(terms[1:], 1):
        out = b.op(op, [out, term], layer.name, tops if i == len(terms) - 1 else None)[0]
    return [out]


@register("Axpy")
def axpy(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    """top = bottom[0] * bottom[1] + bottom[2] (hujie-frank/SENet's axpy_layer.cpp)."""
    scaled = b.op("Mul", x[:2], f"{layer.name}/mul")[0]
    return b.op("Add", [scaled, x[2]], layer.name, tops)


# --- convolution, inner product ---------------------------------------------------------------


@register("Convolution", "Deconvolution")
def convolution(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    p = layer.param.convolution_param
    g = conv_geometry(layer.param)
    inputs = [x[0], b.weight(f"{layer.name}/weight", blob(layer, 0))]
    if p.bias_term:
        inputs.append(b.weight(f"{layer.name}/bias", blob(layer, 1)))
    return b.op(
        "Conv" if layer.type == "Convolution" else "ConvTranspose",
        inputs,
        layer.name,
        tops,
        kernel_shape=g["kernel"],
        strides=g["stride"],
        pads=g["pad"] * 2,
        dilations=g["dilation"],
        group=p.group,
    )


def _flatten_from(layer: Layer, b: Builder, x: str, axis: int, name: str) -> str:
    """x with axes [axis, end) merged into one; earlier axes (the batch) kept as they are."""
    shape = b.ints(f"{name}/shape", [0] * axis + [-1])
    return b.op("Reshape", [x, shape], name)[0]


@register("InnerProduct")
def inner_product(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    """Gemm on the flattened input (as torch's Linear exports); MatMul past a 2-D result."""
    p = layer.param.inner_product_param
    bottom = layer.bottom_shapes[0]
    axis = canonical_axis(p.axis, len(bottom), layer.param)
    flat = _flatten_from(layer, b, x[0], axis, f"{layer.name}/flatten") if len(bottom) != axis + 1 else x[0]
    weight = b.weight(f"{layer.name}/weight", blob(layer, 0))
    bias = [b.weight(f"{layer.name}/bias", blob(layer, 1))] if p.bias_term else []
    if axis == 1:
        return b.op("Gemm", [flat, weight, *bias], layer.name, tops, transB=0 if p.transpose else 1)
    if not p.transpose:
        weight = b.op("Transpose", [weight], f"{layer.name}/weight_t", perm=[1, 0])[0]
    if not bias:
        return b.op("MatMul", [flat, weight], layer.name, tops)
    product = b.op("MatMul", [flat, weight], f"{layer.name}/matmul")[0]
    return b.op("Add", [product, bias[0]], layer.name, tops)


# --- normalisation -----------------------------------------------------------------------------


@register("BatchNorm")
def batch_norm(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    """Caffe divides the stored statistics by blob 2 (0 when that is 0; batch_norm_layer.cpp)."""
    shape = layer.bottom_shapes[0]
    if not 2 <= len(shape) <= 4:
        raise NetDefinitionError(
            f"BatchNorm of a {len(shape)}-D input is not supported (2-D to 4-D only)", layer=layer.name
        )
    channels = shape[1]
    if layer.blobs:
        factor = float(np.asarray(blob(layer, 2)).reshape(-1)[0])
        inverse = np.float32(0.0 if factor == 0 else 1.0 / factor)
        mean = np.asarray(blob(layer, 0), dtype=np.float32).reshape(-1) * inverse
        var = np.asarray(blob(layer, 1), dtype=np.float32).reshape(-1) * inverse
    else:
        mean, var = np.zeros(channels, np.float32), np.ones(channels, np.float32)
    inputs = [
        x[0],
        b.weight(f"{layer.name}/scale", np.ones(channels, np.float32)),
        b.weight(f"{layer.name}/bias", np.zeros(channels, np.float32)),
        b.weight(f"{layer.name}/mean", mean),
        b.weight(f"{layer.name}/var", var),
    ]
    return b.op("BatchNormalization", inputs, layer.name, tops, epsilon=layer.param.batch_norm_param.eps)


def _operand(layer: Layer, b: Builder, y: str, axis: int) -> str:
    """The second bottom of a Scale/Bias reshaped to broadcast from `axis` of the first."""
    trailing = len(layer.bottom_shapes[0]) - axis - len(layer.bottom_shapes[1])
    if not trailing:
        return y
    shape = b.ints(f"{layer.name}/operand_shape", [0] * len(layer.bottom_shapes[1]) + [1] * trailing)
    return b.op("Reshape", [y, shape], f"{layer.name}/operand")[0]


def _affine(
    layer: Layer, b: Builder, x: str, tops: list[str], axis: int, scale: bool, bias: bool
) -> list[str]:
    """x * weight + bias over the learned axes of a one-bottom Scale/Bias."""
    ndim = len(layer.bottom_shapes[0])
    view = _trailing_ones(layer.blob_shapes[0], ndim, axis)
    out = x
    if scale:
        weight = _learned(layer, b, 0, "scale", view)
        out = b.op(
            "Mul", [out, weight], layer.name if not bias else f"{layer.name}/mul", None if bias else tops
        )[0]
    if bias:
        term = _learned(layer, b, 1 if scale else 0, "bias", view)
        out = b.op("Add", [out, term], layer.name, tops)[0]
    return [out]


@register("Scale")
def scale(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    p = layer.param.scale_param
    axis = canonical_axis(p.axis, len(layer.bottom_shapes[0]), layer.param)
    if len(x) == 1:
        return _affine(layer, b, x[0], tops, axis, scale=True, bias=p.bias_term)
    operand = _operand(layer, b, x[1], axis)
    if not p.bias_term:
        return b.op("Mul", [x[0], operand], layer.name, tops)
    product = b.op("Mul", [x[0], operand], f"{layer.name}/mul")[0]
    view = _trailing_ones(layer.bottom_shapes[1], len(layer.bottom_shapes[0]), axis)
    return b.op("Add", [product, _learned(layer, b, 0, "bias", view)], layer.name, tops)


@register("Bias")
def bias(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    p = layer.param.bias_param
    axis = canonical_axis(p.axis, len(layer.bottom_shapes[0]), layer.param)
    if len(x) == 1:
        return _affine(layer, b, x[0], tops, axis, scale=False, bias=True)
    return b.op("Add", [x[0], _operand(layer, b, x[1], axis)], layer.name, tops)


@register("LRN")
def lrn(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    p = layer.param.lrn_param
    if p.local_size % 2 == 0:
        raise NetDefinitionError("LRN local_size must be odd (Caffe requires it)", layer=layer.name)
    if p.norm_region == p.ACROSS_CHANNELS:
        return b.op("LRN", x, layer.name, tops, size=p.local_size, alpha=p.alpha, beta=p.beta, bias=p.k)
    # WITHIN_CHANNEL: x * (1 + alpha * mean of x^2 over a size x size window, zero padded)^-beta
    pad = (p.local_size - 1) // 2
    square = b.op("Mul", [x[0], x[0]], f"{layer.name}/square")[0]
    mean = b.op(
        "AveragePool",
        [square],
        f"{layer.name}/mean",
        kernel_shape=[p.local_size] * 2,
        pads=[pad] * 4,
        count_include_pad=1,
    )[0]
    scaled = b.op("Mul", [mean, b.scalar(f"{layer.name}/alpha", p.alpha)], f"{layer.name}/alpha")[0]
    base = b.op("Add", [scaled, b.scalar(f"{layer.name}/one", 1.0)], f"{layer.name}/base")[0]
    factor = b.op("Pow", [base, b.scalar(f"{layer.name}/beta", -p.beta)], f"{layer.name}/pow")[0]
    return b.op("Mul", [x[0], factor], layer.name, tops)


# --- pooling -----------------------------------------------------------------------------------


@register("Pooling")
def pooling(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    """Caffe's windows: ceil rounding, a last window starting in the padding dropped, AVE divided
    by the window clipped to the padded input. ONNX's own pooling where it has these rules
    (as `converter` uses torch's), explicit padding and divisor elsewhere."""
    p = layer.param.pooling_param
    if p.pool == p.STOCHASTIC:
        raise NetDefinitionError("STOCHASTIC pooling has no deterministic inference form", layer=layer.name)
    is_max = p.pool == p.MAX
    bottom, top = layer.bottom_shapes[0], layer.top_shapes[0]
    if p.global_pooling:
        return b.op("GlobalMaxPool" if is_max else "GlobalAveragePool", x, layer.name, tops)
    g = pool_geometry(layer.param, bottom)
    kernel, stride = g["kernel"], g["stride"]
    ceil = p.round_mode == p.CEIL
    if plain_pooling_matches(g, bottom, top, ceil):
        floor_size = [(n + 2 * pd - k) // s + 1 for n, k, s, pd in zip(bottom[2:], kernel, stride, g["pad"])]
        attrs = {"kernel_shape": kernel, "strides": stride, "pads": g["pad"] * 2}
        attrs["ceil_mode"] = int(floor_size != list(top[2:]))
        if is_max:
            return b.op("MaxPool", x, layer.name, tops, **attrs)
        if not attrs["ceil_mode"]:  # with a clipped last window, ONNX Runtime's divisor is not Caffe's
            return b.op("AveragePool", x, layer.name, tops, count_include_pad=1, **attrs)
    (top_pad, bottom_pad), (left_pad, right_pad) = pool_padding(g, bottom, top)
    fill = float(np.finfo(b.dtype).min) if is_max else 0.0  # Caffe's MAX starts from -FLT_MAX
    pads = b.ints(
        f"{layer.name}/pads", [0, 0, top_pad, left_pad, 0, 0, max(bottom_pad, 0), max(right_pad, 0)]
    )
    padded = b.op("Pad", [x[0], pads, b.scalar(f"{layer.name}/fill", fill)], f"{layer.name}/pad")[0]
    if bottom_pad < 0 or right_pad < 0:
        ends = [top_pad + bottom[2] + bottom_pad, left_pad + bottom[3] + right_pad]
        padded = b.op(
            "Slice",
            [
                padded,
                b.ints(f"{layer.name}/starts", [0, 0]),
                b.ints(f"{layer.name}/ends", ends),
                b.ints(f"{layer.name}/axes", [2, 3]),
            ],
            f"{layer.name}/crop",
        )[0]
    if is_max:
        return b.op("MaxPool", [padded], layer.name, tops, kernel_shape=kernel, strides=stride)
    mean = b.op("AveragePool", [padded], f"{layer.name}/mean", kernel_shape=kernel, strides=stride)[0]
    with np.errstate(divide="ignore"):  # an empty window (past an unpadded input) is 0/0, as in Caffe
        correction = math.prod(kernel) / ave_pool_divisor(g, bottom, top)  # window size / Caffe's divisor
    return b.op("Mul", [mean, b.weight(f"{layer.name}/divisor", correction)], layer.name, tops)


# --- data movement -----------------------------------------------------------------------------


@register("Concat")
def concat(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    return b.op("Concat", x, layer.name, tops, axis=concat_axis(layer.param, len(layer.bottom_shapes[0])))


@register("Reshape")
def reshape(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    """Caffe's 0 (copy the input's axis) and -1 (inferred) are ONNX Reshape's at the same positions;
    the axes after the replaced run are static, except a batch axis there, which becomes -1."""
    bottom = layer.bottom_shapes[0]
    start, end = reshape_axes(layer.param, len(bottom))
    dims = list(layer.param.reshape_param.shape.dim)
    trailing = list(bottom[end:])
    if end == 0 and trailing:
        if -1 in dims:
            raise NetDefinitionError(
                "Reshape with num_axes 0 at axis 0 and a -1 cannot keep the batch axis dynamic",
                layer=layer.name,
            )
        trailing[0] = -1
    shape = b.ints(f"{layer.name}/shape", [0] * start + dims + trailing)
    return b.op("Reshape", [x[0], shape], layer.name, tops)


@register("Flatten")
def flatten(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    bottom = layer.bottom_shapes[0]
    p = layer.param.flatten_param
    start = canonical_axis(p.axis, len(bottom), layer.param)
    end = canonical_axis(p.end_axis, len(bottom), layer.param)
    shape = b.ints(f"{layer.name}/shape", [0] * start + [-1] + list(bottom[end + 1 :]))
    return b.op("Reshape", [x[0], shape], layer.name, tops)


@register("Slice")
def slice_(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    axis, bounds = slice_points(layer.param, layer.bottom_shapes[0])
    sizes = b.ints(f"{layer.name}/split", [end - start for start, end in zip(bounds, bounds[1:])])
    return b.op("Split", [x[0], sizes], layer.name, tops, axis=axis)
