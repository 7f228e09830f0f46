"""One ONNX lowering per Caffe layer type, computing what `converter`'s modules compute.

Each mirrors the Caffe layer's .cpp (and the PyTorch converter of the same type,
op for op where ONNX Runtime's kernels then give the same numbers). Blobs become
initializers that are views of the caffemodel, reshaped only in their metadata.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper

from prototxt import ConversionError, Layer, NetDefinitionError
from prototxt.priors import prior_boxes
from prototxt.shapes import (
    SHAPE_RULES,
    ave_pool_divisor,
    canonical_axis,
    concat_axis,
    conv_geometry,
    crop_offsets,
    permute_order,
    plain_pooling_matches,
    pool_geometry,
    pool_padding,
    prior_box_spec,
    reshape_axes,
    slice_points,
    spp_levels,
)

from .builder import ELEMENT_TYPES, Builder
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
        ceil_mode = int(floor_size != list(top[2:]))
        attrs = {"kernel_shape": kernel, "strides": stride, "pads": g["pad"] * 2, "ceil_mode": ceil_mode}
        if is_max:
            return b.op("MaxPool", x, layer.name, tops, **attrs)
        if not ceil_mode:  # with a clipped last window, ONNX Runtime's divisor is not Caffe's
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


# --- Caffe's neuron layers, each in the form of its .cpp (as `converter.modules` writes them) ----


def _times(b: Builder, x: str, factor: float, name: str) -> str:
    return x if factor == 1 else b.op("Mul", [x, b.scalar(name, factor)], name)[0]


def _plus(b: Builder, x: str, term: float, name: str) -> str:
    return x if term == 0 else b.op("Add", [x, b.scalar(name, term)], name)[0]


@register("AbsVal")
def absval(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    return b.op("Abs", x, layer.name, tops)


@register("BNLL")
def bnll(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    """log(1 + e^x) in bnll_layer.cpp's two branches: x + log(1 + e^-x) for x > 0."""
    n = layer.name
    one = b.scalar(f"{n}/one", 1.0)
    negative = b.op("Neg", x, f"{n}/neg")[0]
    upper = b.op(
        "Log",
        [b.op("Add", [one, b.op("Exp", [negative], f"{n}/exp_neg")[0]], f"{n}/add_neg")[0]],
        f"{n}/log_neg",
    )[0]
    upper = b.op("Add", [x[0], upper], f"{n}/positive")[0]
    lower = b.op("Log", [b.op("Add", [one, b.op("Exp", x, f"{n}/exp")[0]], f"{n}/add")[0]], f"{n}/log")[0]
    positive = b.op("Greater", [x[0], b.scalar(f"{n}/zero", 0.0)], f"{n}/is_positive")[0]
    return b.op("Where", [positive, upper, lower], n, tops)


@register("Clip")
def clip(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    """max(low, min(x, high)): low wins when low > high, as clip_layer.cpp."""
    p = layer.param.clip_param
    upper = b.op("Min", [x[0], b.scalar(f"{layer.name}/max", p.max)], f"{layer.name}/min")[0]
    return b.op("Max", [upper, b.scalar(f"{layer.name}/min", p.min)], layer.name, tops)


@register("ELU")
def elu(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    """max(x, 0) + alpha * (exp(min(x, 0)) - 1), elu_layer.cpp's form."""
    n = layer.name
    zero = b.scalar(f"{n}/zero", 0.0)
    positive = b.op("Max", [x[0], zero], f"{n}/positive")[0]
    negative = b.op("Exp", [b.op("Min", [x[0], zero], f"{n}/negative")[0]], f"{n}/exp")[0]
    negative = b.op("Sub", [negative, b.scalar(f"{n}/one", 1.0)], f"{n}/minus_one")[0]
    negative = _times(b, negative, layer.param.elu_param.alpha, f"{n}/alpha")
    return b.op("Add", [positive, negative], n, tops)


@register("Exp")
def exp(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    """base^(shift + scale * x) = outer * exp(inner * x), exp_layer.cpp's factors."""
    p = layer.param.exp_param
    natural = p.base == -1
    inner = (1.0 if natural else math.log(p.base)) * p.scale
    outer = 1.0 if p.shift == 0 else (math.exp(p.shift) if natural else math.pow(p.base, p.shift))
    if outer == 1:
        return b.op("Exp", [_times(b, x[0], inner, f"{layer.name}/inner")], layer.name, tops)
    y = b.op("Exp", [_times(b, x[0], inner, f"{layer.name}/inner")], f"{layer.name}/exp")[0]
    return b.op("Mul", [y, b.scalar(f"{layer.name}/outer", outer)], layer.name, tops)


@register("Log")
def log(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    """log_base(shift + scale * x) = log(scale * x + shift) * (1 / ln base)."""
    p = layer.param.log_param
    argument = _plus(b, _times(b, x[0], p.scale, f"{layer.name}/scale"), p.shift, f"{layer.name}/shift")
    base_scale = 1.0 if p.base == -1 else 1.0 / math.log(p.base)
    if base_scale == 1:
        return b.op("Log", [argument], layer.name, tops)
    y = b.op("Log", [argument], f"{layer.name}/log")[0]
    return b.op("Mul", [y, b.scalar(f"{layer.name}/base", base_scale)], layer.name, tops)


@register("Power")
def power(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    """(shift + scale * x)^power; a constant (power_layer.cpp) when power * scale is 0."""
    p = layer.param.power_param
    if p.power * p.scale == 0:
        value = (
            np.ones(1, b.dtype)
            if p.power == 0
            else np.power(np.full(1, p.shift, b.dtype), b.dtype.type(p.power))
        )
        shape = b.op("Shape", x, f"{layer.name}/shape")[0]
        return b.op("ConstantOfShape", [shape], layer.name, tops, value=numpy_helper.from_array(value))
    base = _plus(b, _times(b, x[0], p.scale, f"{layer.name}/scale"), p.shift, f"{layer.name}/shift")
    if p.power == 1:
        return b.op("Identity", [base], layer.name, tops)
    return b.op("Pow", [base, b.scalar(f"{layer.name}/power", p.power)], layer.name, tops)


@register("Threshold")
def threshold(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    above = b.op(
        "Greater",
        [x[0], b.scalar(f"{layer.name}/threshold", layer.param.threshold_param.threshold)],
        f"{layer.name}/above",
    )[0]
    return b.op("Cast", [above], layer.name, tops, to=ELEMENT_TYPES[b.dtype])


@register("Swish")
def swish(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    """x * sigmoid(beta * x), with Caffe's sigmoid 0.5 * tanh(0.5 * v) + 0.5."""
    n = layer.name
    half = b.scalar(f"{n}/half", 0.5)
    v = b.op("Mul", [x[0], b.scalar(f"{n}/beta", layer.param.swish_param.beta)], f"{n}/beta")[0]
    t = b.op("Tanh", [b.op("Mul", [v, half], f"{n}/half_in")[0]], f"{n}/tanh")[0]
    gate = b.op("Add", [b.op("Mul", [t, half], f"{n}/half_out")[0], half], f"{n}/gate")[0]
    return b.op("Mul", [x[0], gate], n, tops)


# --- layers that move, pick or reduce values -----------------------------------------------------


@register("Crop")
def crop(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    """bottom[0]'s window at Caffe's offsets, of bottom[1]'s size from `axis` on."""
    start = canonical_axis(layer.param.crop_param.axis, len(layer.bottom_shapes[0]), layer.param)
    offsets = crop_offsets(layer.param, layer.bottom_shapes)[start:]
    sizes = layer.top_shapes[0][start:]
    n = layer.name
    inputs = [
        x[0],
        b.ints(f"{n}/starts", offsets),
        b.ints(f"{n}/ends", [o + s for o, s in zip(offsets, sizes)]),
        b.ints(f"{n}/axes", list(range(start, start + len(offsets)))),
    ]
    return b.op("Slice", inputs, n, tops)


@register("Tile")
def tile(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    ndim = len(layer.bottom_shapes[0])
    p = layer.param.tile_param
    axis = canonical_axis(p.axis, ndim, layer.param)
    repeats = b.ints(f"{layer.name}/repeats", [p.tiles if i == axis else 1 for i in range(ndim)])
    return b.op("Tile", [x[0], repeats], layer.name, tops)


@register("ShuffleChannel")
def shuffle_channel(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    """ShuffleNet's shuffle: channels as group x (C / group), transposed, flattened back."""
    bottom, group, n = layer.bottom_shapes[0], layer.param.shuffle_channel_param.group, layer.name
    grouped = b.ints(f"{n}/grouped_shape", [0, group, bottom[1] // group, *bottom[2:]])
    value = b.op("Reshape", [x[0], grouped], f"{n}/grouped")[0]
    value = b.op("Transpose", [value], f"{n}/transposed", perm=[0, 2, 1, *range(3, len(bottom) + 1)])[0]
    return b.op("Reshape", [value, b.ints(f"{n}/shape", [0, *bottom[1:]])], n, tops)


def _indices(b: Builder, x: str, name: str) -> str:
    """Caffe's float indices as int64, truncated toward 0 as static_cast<int>."""
    return b.op("Cast", [x], name, to=onnx.TensorProto.INT64)[0]


@register("BatchReindex")
def batch_reindex(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    return b.op("Gather", [x[0], _indices(b, x[1], f"{layer.name}/index")], layer.name, tops, axis=0)


@register("Embed")
def embed(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    """Row int(x) of the input_dim x num_output weight (+ bias) per input value."""
    p = layer.param.embed_param
    inputs = [
        _learned(layer, b, 0, "weight", (p.input_dim, p.num_output)),
        _indices(b, x[0], f"{layer.name}/index"),
    ]
    if not p.bias_term:
        return b.op("Gather", inputs, layer.name, tops, axis=0)
    rows = b.op("Gather", inputs, f"{layer.name}/rows", axis=0)[0]
    return b.op("Add", [rows, _learned(layer, b, 1, "bias", (p.num_output,))], layer.name, tops)


@register("Im2col")
def im2col(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    """Each k_h x k_w patch as a column (rows ordered channel, kernel row, kernel column): a grouped
    convolution with one-hot kernels, which copies every value exactly."""
    g = conv_geometry(layer.param)
    channels, (kh, kw) = layer.bottom_shapes[0][1], g["kernel"]
    one_hot = np.eye(kh * kw, dtype=b.dtype).reshape(kh * kw, 1, kh, kw)
    weight = b.weight(f"{layer.name}/one_hot", np.tile(one_hot, (channels, 1, 1, 1)))
    return b.op(
        "Conv",
        [x[0], weight],
        layer.name,
        tops,
        kernel_shape=g["kernel"],
        strides=g["stride"],
        pads=g["pad"] * 2,
        dilations=g["dilation"],
        group=channels,
    )


@register("ArgMax")
def argmax(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    """The top_k indices (or values), equal values larger index first as argmax_layer.cpp: TopK
    (ties lower index first) of the reversed axis. Without `axis`, per item over everything,
    N x 1 x k (indices) or N x 2 x k (indices, values), padded to Caffe's axes."""
    p, bottom, n = layer.param.argmax_param, layer.bottom_shapes[0], layer.name
    axis = canonical_axis(p.axis, len(bottom), layer.param) if p.HasField("axis") else None
    values = x[0] if axis is not None else _flatten_from(layer, b, x[0], 1, f"{n}/flatten")
    along = 1 if axis is None else axis
    size = bottom[along] if axis is not None else math.prod(bottom[1:])
    reverse = [
        b.ints(f"{n}/{what}", [v])
        for what, v in (("start", -1), ("end", -size - 1), ("axis", along), ("step", -1))
    ]
    reversed_ = b.op("Slice", [values, *reverse], f"{n}/reverse")[0]
    ordered, position = b.op(
        "TopK",
        [reversed_, b.ints(f"{n}/k", [p.top_k])],
        f"{n}/topk",
        [b.name(f"{n}/values"), b.name(f"{n}/positions")],
        axis=along,
    )
    last = b.ints(f"{n}/last", [size - 1])
    index = b.op(
        "Cast",
        [b.op("Sub", [last, position], f"{n}/index")[0]],
        f"{n}/index_float",
        to=ELEMENT_TYPES[b.dtype],
    )[0]
    if axis is not None:
        return b.op("Identity", [ordered if p.out_max_val else index], n, tops)
    one = b.ints(f"{n}/axis1", [1])
    parts = [b.op("Unsqueeze", [index, one], f"{n}/indices")[0]]
    if p.out_max_val:
        parts.append(b.op("Unsqueeze", [ordered, one], f"{n}/maxima")[0])
    stacked = b.op("Concat", parts, f"{n}/stack", axis=1)[0]
    shape = b.ints(f"{n}/shape", [0, *layer.top_shapes[0][1:]])
    return b.op("Reshape", [stacked, shape], n, tops)


@register("Reduction")
def reduction(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    """SUM, ASUM, SUMSQ or MEAN of all axes from `axis` on, times `coeff`."""
    p, bottom, n = layer.param.reduction_param, layer.bottom_shapes[0], layer.name
    axis = canonical_axis(p.axis, len(bottom), layer.param)
    coeff = p.coeff / math.prod(bottom[axis:]) if p.operation == p.MEAN else p.coeff
    flat = _flatten_from(layer, b, x[0], axis, f"{n}/flatten")
    if p.operation == p.ASUM:
        flat = b.op("Abs", [flat], f"{n}/abs")[0]
    elif p.operation == p.SUMSQ:
        flat = b.op("Mul", [flat, flat], f"{n}/square")[0]
    last = b.ints(f"{n}/axes", [-1])
    if coeff == 1:
        return b.op("ReduceSum", [flat, last], n, tops, keepdims=0)
    total = b.op("ReduceSum", [flat, last], f"{n}/sum", keepdims=0)[0]
    return b.op("Mul", [total, b.scalar(f"{n}/coeff", coeff)], n, tops)


def _mean(b: Builder, x: str, axes: str, count: int, name: str) -> str:
    """Mean over `axes` (kept) as sum / count: ReduceSum takes its axes as an input in every
    opset from 13 on, ReduceMean only from 18."""
    total = b.op("ReduceSum", [x, axes], f"{name}/sum", keepdims=1)[0]
    return b.op("Div", [total, b.scalar(f"{name}/count", count)], name)[0]


@register("MVN")
def mvn(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    """Subtract the mean, then divide by (standard deviation + eps), per item and channel (or per
    item across channels); the top has Caffe's 4 axes."""
    p, n, shape = layer.param.mvn_param, layer.name, layer.top_shapes[0]
    value = x[0]
    ndim = len(layer.bottom_shapes[0])
    if ndim < 4:
        value = b.op("Reshape", [value, b.ints(f"{n}/shape", [0] * ndim + [1] * (4 - ndim))], f"{n}/to_4d")[0]
    dims = [1, 2, 3] if p.across_channels else [2, 3]
    axes, count = b.ints(f"{n}/axes", dims), math.prod(shape[d] for d in dims)
    mean = _mean(b, value, axes, count, f"{n}/mean")
    if not p.normalize_variance:
        return b.op("Sub", [value, mean], n, tops)
    centred = b.op("Sub", [value, mean], f"{n}/centred")[0]
    square = b.op("Mul", [centred, centred], f"{n}/square")[0]
    std = b.op("Sqrt", [_mean(b, square, axes, count, f"{n}/variance")], f"{n}/std")[0]
    divisor = b.op("Add", [std, b.scalar(f"{n}/eps", p.eps)], f"{n}/std_eps")[0]
    return b.op("Div", [centred, divisor], n, tops)


@register("SPP")
def spp(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    """A Pooling per pyramid level (spp_layer.cpp's parameters), flattened and concatenated
    when there are several."""
    bottom = layer.bottom_shapes[0]
    levels = spp_levels(layer.param, bottom)
    pooled = []
    for level in levels:
        pool = Layer(
            name=level.name,
            type="Pooling",
            bottoms=layer.bottoms,
            tops=[level.name],
            param=level,
            bottom_shapes=[bottom],
            top_shapes=SHAPE_RULES["Pooling"](level, [bottom]),
        )
        if len(levels) == 1:
            return pooling(pool, b, x, tops)
        pooled.append(
            _flatten_from(pool, b, pooling(pool, b, x, [b.name(level.name)])[0], 1, f"{level.name}/flatten")
        )
    return b.op("Concat", pooled, layer.name, tops, axis=1)


@register("Parameter")
def parameter(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    """A layer without bottoms whose top is its learned blob."""
    shape = layer.top_shapes[0]
    return b.op("Identity", [_learned(layer, b, 0, "weight", shape)], layer.name, tops)


# --- the SSD fork's layers (weiliu89/caffe, branch ssd) -------------------------------------------


@register("Permute")
def permute(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    order = permute_order(layer.param, len(layer.bottom_shapes[0]))
    return b.op("Transpose", x, layer.name, tops, perm=order)


@register("Normalize")
def normalize(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    """L2 norm over C x H x W (across_spatial, times its reciprocal) or over C per position
    (divided by it), eps inside the square root (normalize_layer.cpp), then the scale."""
    p, n, ndim = layer.param.norm_param, layer.name, len(layer.bottom_shapes[0])
    shape = layer.blob_shapes[0]
    view = (*shape, *(1,) * (ndim - 2))
    if layer.blobs:
        scale = b.weight(f"{n}/scale", blob(layer, 0), view)
    else:  # the fork's initial scale: its constant filler, 1 by default
        filler = p.scale_filler
        value = filler.value if p.HasField("scale_filler") and filler.type == "constant" else 1.0
        scale = b.weight(f"{n}/scale", np.full(view, value, dtype=b.dtype))
    squares = b.op("Mul", [x[0], x[0]], f"{n}/square")[0]
    axes = b.ints(f"{n}/axes", list(range(1, ndim)) if p.across_spatial else [1])
    total = b.op("ReduceSum", [squares, axes], f"{n}/sum", keepdims=1)[0]
    eps = b.scalar(f"{n}/eps", float(np.float32(p.eps)))
    norm = b.op("Sqrt", [b.op("Add", [total, eps], f"{n}/plus_eps")[0]], f"{n}/norm")[0]
    if p.across_spatial:
        inverse = b.op("Div", [b.scalar(f"{n}/one", 1.0), norm], f"{n}/inverse")[0]
        normalised = b.op("Mul", [x[0], inverse], f"{n}/normalised")[0]
    else:
        normalised = b.op("Div", [x[0], norm], f"{n}/normalised")[0]
    return b.op("Mul", [normalised, scale], n, tops)


@register("PriorBox")
def prior_box(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    """A constant: the boxes depend on the feature map's and the image's sizes only."""
    feature_hw, image_hw = ((*shape, 1, 1)[2:4] for shape in layer.bottom_shapes[:2])
    priors = prior_boxes(prior_box_spec(layer.param), feature_hw, image_hw, np.dtype(np.float32))
    return b.op("Identity", [b.weight(f"{layer.name}/priors", priors)], layer.name, tops)


@register("DetectionOutput")
def detection_output(layer: Layer, b: Builder, x: list[str], tops: list[str]) -> list[str]:
    """Refused: its number of boxes depends on the data (NMS), which one ONNX graph of these
    ops cannot express as the fork computes it."""
    raise ConversionError(
        f"layer '{layer.name}' (DetectionOutput) cannot go into ONNX: it keeps a data-dependent "
        "number of boxes (NMS, with top_k applied before suppression); export its inputs instead "
        f"(--outputs {','.join(layer.bottoms)}) and run it in PyTorch, or convert to .safetensors"
    )
