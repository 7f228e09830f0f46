"""Caffe's shape rules: output shapes and expected blob shapes per layer type.

Each rule mirrors the Reshape() / LayerSetUp() of the Caffe layer of that type,
so that the shapes we infer are the shapes Caffe would allocate. One function
per type, registered by type name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

import numpy as np

from . import caffe_pb2
from .errors import NetDefinitionError

Shape = tuple[int, ...]
ShapeRule = Callable[[caffe_pb2.LayerParameter, list[Shape]], list[Shape]]
BlobRule = Callable[[caffe_pb2.LayerParameter, list[Shape]], list[Shape]]

SHAPE_RULES: dict[str, ShapeRule] = {}
BLOB_RULES: dict[str, BlobRule] = {}

# Layers whose output has the shape of their (first) input.
ELEMENTWISE_TYPES = (
    "ReLU",
    "PReLU",
    "Sigmoid",
    "TanH",
    "Dropout",
    "BatchNorm",
    "LRN",
    "Softmax",
    "AbsVal",
    "BNLL",
    "ELU",
    "Power",
    "Threshold",
    "Swish",
)

# Layer types of widely used forks that have no shape rule here: type -> the fork, named in the refusal.
FORK_LAYER_TYPES = {
    "BN": "SegNet (alexgkendall/caffe-segnet), PSPNet (hszhao/PSPNet), yjxiong/caffe",
    "Upsample": "SegNet (alexgkendall/caffe-segnet)",
    "DenseImageData": "SegNet (alexgkendall/caffe-segnet)",
    "Interp": "DeepLab v2 (deeplab-public-ver2), PSPNet (hszhao/PSPNet)",
    "ROIPooling": "Fast/Faster R-CNN (rbgirshick/caffe-fast-rcnn)",
    "PSROIPooling": "R-FCN (daijifeng001/caffe-rfcn)",
    "DepthwiseConvolution": "yonghenglh6/DepthwiseConvolution",
}

# Layer types Caffe has that cannot become a static inference graph, and why.
REFUSED_TYPES = {
    "Python": "a Python layer runs code that is not in the model files",
    "RNN": "recurrent layers (RNN, LSTM) unroll over time steps and are not supported",
    "LSTM": "recurrent layers (RNN, LSTM) unroll over time steps and are not supported",
    "LSTMUnit": "recurrent layers (RNN, LSTM) unroll over time steps and are not supported",
    "Filter": "Filter's output batch size depends on the values of its selector input",
}


def _register(table: dict[str, ShapeRule], *types: str) -> Callable[[ShapeRule], ShapeRule]:
    def decorate(function: ShapeRule) -> ShapeRule:
        for name in types:
            table[name] = function
        return function

    return decorate


def canonical_axis(axis: int, ndim: int, layer: caffe_pb2.LayerParameter) -> int:
    """Caffe's CanonicalAxisIndex: negative axes count from the end."""
    if not -ndim <= axis < ndim:
        raise NetDefinitionError(f"axis {axis} out of range for a {ndim}-D input", layer=layer.name)
    return axis % ndim


def _expect_bottoms(layer: caffe_pb2.LayerParameter, bottoms: list[Shape], *counts: int) -> None:
    if len(bottoms) not in counts:
        wanted = " or ".join(str(c) for c in counts)
        raise NetDefinitionError(
            f"{layer.type} takes {wanted} bottom(s), got {len(bottoms)}", layer=layer.name
        )


def _spatial(
    values: list[int],
    h: int | None,
    w: int | None,
    default: int | None,
    what: str,
    layer: caffe_pb2.LayerParameter,
    dims: int = 2,
) -> list[int]:
    """Resolve Caffe's repeated-or-_h/_w convolution/pooling fields to per-axis values."""
    if h is not None or w is not None:
        if values:
            raise NetDefinitionError(f"give either {what} or {what}_h/{what}_w, not both", layer=layer.name)
        if h is None or w is None:
            raise NetDefinitionError(f"{what}_h and {what}_w must be given together", layer=layer.name)
        return [h, w]
    if not values:
        if default is None:
            raise NetDefinitionError(f"{what} is required", layer=layer.name)
        return [default] * dims
    if len(values) == 1:
        return [values[0]] * dims
    if len(values) != dims:
        raise NetDefinitionError(f"{what} needs 1 or {dims} values, got {len(values)}", layer=layer.name)
    return list(values)


def conv_geometry(layer: caffe_pb2.LayerParameter) -> dict[str, list[int]]:
    """Kernel, stride, pad and dilation of a Convolution/Deconvolution layer."""
    p = layer.convolution_param
    opt = lambda name: getattr(p, name) if p.HasField(name) else None  # noqa: E731
    kernel = _spatial(list(p.kernel_size), opt("kernel_h"), opt("kernel_w"), None, "kernel", layer)
    stride = _spatial(list(p.stride), opt("stride_h"), opt("stride_w"), 1, "stride", layer)
    pad_h = p.pad_h if p.HasField("pad_h") else None
    pad_w = p.pad_w if p.HasField("pad_w") else None
    if (pad_h is None) != (pad_w is None):  # Caffe's convolution takes the other as 0
        pad_h, pad_w = pad_h or 0, pad_w or 0
    pad = _spatial(list(p.pad), pad_h, pad_w, 0, "pad", layer)
    dilation = _spatial(list(p.dilation), None, None, 1, "dilation", layer)
    if any(k <= 0 for k in kernel) or any(s <= 0 for s in stride) or any(d <= 0 for d in dilation):
        raise NetDefinitionError("kernel, stride and dilation must be positive", layer=layer.name)
    return {"kernel": kernel, "stride": stride, "pad": pad, "dilation": dilation}


def pool_geometry(layer: caffe_pb2.LayerParameter, bottom: Shape) -> dict[str, list[int]]:
    """Kernel, stride and pad of a Pooling layer (global pooling resolved)."""
    p = layer.pooling_param
    opt = lambda name: getattr(p, name) if p.HasField(name) else None  # noqa: E731
    if p.global_pooling:
        if p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
            raise NetDefinitionError("global_pooling takes no kernel size", layer=layer.name)
        kernel = [bottom[2], bottom[3]]
    else:
        sizes = [p.kernel_size] if p.HasField("kernel_size") else []
        kernel = _spatial(sizes, opt("kernel_h"), opt("kernel_w"), None, "kernel", layer)
    strides = [p.stride] if p.HasField("stride") else []
    stride = _spatial(strides, opt("stride_h"), opt("stride_w"), 1, "stride", layer)
    pads = [p.pad] if p.HasField("pad") else []
    pad = _spatial(pads, opt("pad_h"), opt("pad_w"), 0, "pad", layer)
    if p.global_pooling and (stride != [1, 1] or pad != [0, 0]):
        raise NetDefinitionError("global_pooling allows only pad 0 and stride 1", layer=layer.name)
    if any(k <= 0 for k in kernel) or any(s <= 0 for s in stride):
        raise NetDefinitionError("kernel and stride must be positive", layer=layer.name)
    if any(pd >= k for pd, k in zip(pad, kernel)):
        raise NetDefinitionError(f"pad {pad} must be smaller than kernel {kernel}", layer=layer.name)
    return {"kernel": kernel, "stride": stride, "pad": pad}


def pooled_size(
    size: int, kernel: int, stride: int, pad: int, ceil: bool, *, padded: bool | None = None
) -> int:
    """Caffe's pooled output size: ceil rounding, last window starting inside the input.

    Caffe clips the last window on every axis as soon as any axis is padded;
    `padded` says whether one is (default: this axis's `pad`).
    """
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil else span // stride) + 1
    if (pad if padded is None else padded) and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def plain_pooling_matches(geometry: dict[str, list[int]], bottom: Shape, top: Shape, ceil: bool) -> bool:
    """Whether torch's and ONNX's own pooling (symmetric pad <= kernel / 2, output rounded the
    same way) gives Caffe's windows and output size."""
    windows = list(zip(bottom[2:], geometry["kernel"], geometry["stride"], geometry["pad"]))
    # torch always drops a last window starting past the input; Caffe only when padded;
    # ONNX's shape inference never.
    torch_size = [pooled_size(n, k, s, p, ceil, padded=True) for n, k, s, p in windows]
    onnx_size = [pooled_size(n, k, s, p, ceil, padded=False) for n, k, s, p in windows]
    return all(2 * p <= k for _, k, _, p in windows) and torch_size == onnx_size == list(top[2:])


def pool_padding(geometry: dict[str, list[int]], bottom: Shape, top: Shape) -> list[tuple[int, int]]:
    """(before, after) padding per spatial axis that puts every Caffe window inside the input;
    a negative `after` crops rows no window reaches."""
    return [
        (p, (o - 1) * s + k - n - p)
        for n, k, s, p, o in zip(bottom[2:], geometry["kernel"], geometry["stride"], geometry["pad"], top[2:])
    ]


def ave_pool_divisor(geometry: dict[str, list[int]], bottom: Shape, top: Shape) -> np.ndarray:
    """Caffe's AVE divisor per output position (H_out x W_out, float32): the window clipped
    to the padded extent [-pad, size + pad), padding counted (pooling_layer.cpp)."""
    counts = []
    for n, k, s, p, o in zip(bottom[2:], geometry["kernel"], geometry["stride"], geometry["pad"], top[2:]):
        start = np.arange(o) * s - p
        counts.append(np.minimum(start + k, n + p) - start)
    return (counts[0][:, None] * counts[1][None, :]).astype(np.float32)


@_register(SHAPE_RULES, *ELEMENTWISE_TYPES)
def _same_shape(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    _expect_bottoms(layer, bottoms, 1)
    return [bottoms[0]]


@_register(SHAPE_RULES, "Clip")
def _clip_shape(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    _expect_bottoms(layer, bottoms, 1)
    p = layer.clip_param
    if not (p.HasField("min") and p.HasField("max")):  # `required` in caffe.proto
        raise NetDefinitionError("clip_param needs min and max", layer=layer.name)
    return [bottoms[0]]


@_register(SHAPE_RULES, "Exp", "Log")
def _exp_log_shape(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    _expect_bottoms(layer, bottoms, 1)
    base = (layer.exp_param if layer.type == "Exp" else layer.log_param).base
    if base != -1 and not base > 0:
        raise NetDefinitionError(f"base must be -1 (e) or positive, got {base}", layer=layer.name)
    if layer.type == "Log" and base == 1:
        raise NetDefinitionError("base 1 has no logarithm", layer=layer.name)
    return [bottoms[0]]


@_register(SHAPE_RULES, "Convolution", "Deconvolution")
def _conv_shape(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    p = layer.convolution_param
    if p.axis != 1:
        raise NetDefinitionError("only channel axis 1 is supported", layer=layer.name)
    if not bottoms:
        raise NetDefinitionError(f"{layer.type} needs at least one bottom", layer=layer.name)
    if not p.num_output > 0:
        raise NetDefinitionError("num_output must be given and positive", layer=layer.name)
    if not p.group > 0:
        raise NetDefinitionError("group must be positive", layer=layer.name)
    geometry = conv_geometry(layer)
    tops = []
    for bottom in bottoms:
        if len(bottom) != 4:
            raise NetDefinitionError(f"expects a 4-D input, got {bottom}", layer=layer.name)
        if bottom[1] % p.group or p.num_output % p.group:
            raise NetDefinitionError(
                f"input channels {bottom[1]} and num_output {p.num_output} must both divide "
                f"by group {p.group}",
                layer=layer.name,
            )
        spatial = []
        for size, k, s, pd, d in zip(
            bottom[2:], geometry["kernel"], geometry["stride"], geometry["pad"], geometry["dilation"]
        ):
            extent = d * (k - 1) + 1
            if layer.type == "Convolution":
                out = (size + 2 * pd - extent) // s + 1
            else:
                out = s * (size - 1) + extent - 2 * pd
            if out <= 0:
                raise NetDefinitionError(f"input {bottom} too small for the kernel", layer=layer.name)
            spatial.append(out)
        tops.append((bottom[0], p.num_output, *spatial))
    return tops


@_register(BLOB_RULES, "Convolution", "Deconvolution")
def _conv_blobs(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    p = layer.convolution_param
    kernel = conv_geometry(layer)["kernel"]
    if layer.type == "Convolution":
        weight = (p.num_output, bottoms[0][1] // p.group, *kernel)
    else:
        weight = (bottoms[0][1], p.num_output // p.group, *kernel)
    return [weight, (p.num_output,)] if p.bias_term else [weight]


@_register(SHAPE_RULES, "Pooling")
def _pool_shape(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    _expect_bottoms(layer, bottoms, 1)
    bottom = bottoms[0]
    if len(bottom) != 4:
        raise NetDefinitionError(f"expects a 4-D input, got {bottom}", layer=layer.name)
    geometry = pool_geometry(layer, bottom)
    ceil = layer.pooling_param.round_mode == caffe_pb2.PoolingParameter.CEIL
    padded = any(geometry["pad"])
    spatial = [
        pooled_size(size, k, s, pd, ceil, padded=padded)
        for size, k, s, pd in zip(bottom[2:], geometry["kernel"], geometry["stride"], geometry["pad"])
    ]
    if any(out <= 0 for out in spatial):
        raise NetDefinitionError(f"input {bottom} too small for the kernel", layer=layer.name)
    return [(bottom[0], bottom[1], *spatial)]


@_register(SHAPE_RULES, "InnerProduct")
def _ip_shape(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    _expect_bottoms(layer, bottoms, 1)
    axis = canonical_axis(layer.inner_product_param.axis, len(bottoms[0]), layer)
    return [(*bottoms[0][:axis], layer.inner_product_param.num_output)]


@_register(BLOB_RULES, "InnerProduct")
def _ip_blobs(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    p = layer.inner_product_param
    axis = canonical_axis(p.axis, len(bottoms[0]), layer)
    fan_in = math.prod(bottoms[0][axis:])
    weight = (fan_in, p.num_output) if p.transpose else (p.num_output, fan_in)
    return [weight, (p.num_output,)] if p.bias_term else [weight]


@_register(BLOB_RULES, "BatchNorm")
def _bn_blobs(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    channels = bottoms[0][1] if len(bottoms[0]) > 1 else 1
    return [(channels,), (channels,), (1,)]


def _scale_axes(layer: caffe_pb2.LayerParameter, bottoms: list[Shape], axis: int, num_axes: int) -> Shape:
    """The shape of a Scale/Bias layer's learned blob (one bottom)."""
    start = canonical_axis(axis, len(bottoms[0]), layer) if bottoms[0] else 0
    if num_axes < -1:
        raise NetDefinitionError("num_axes must be -1 or non-negative", layer=layer.name)
    end = len(bottoms[0]) if num_axes == -1 else start + num_axes
    if end > len(bottoms[0]):
        raise NetDefinitionError(
            f"axis {axis} + num_axes {num_axes} exceed the input's {len(bottoms[0])} axes", layer=layer.name
        )
    return tuple(bottoms[0][start:end])


def _check_operand(layer: caffe_pb2.LayerParameter, bottoms: list[Shape], axis: int) -> None:
    """Caffe's two-bottom Scale/Bias: bottom[1] must equal a run of bottom[0]'s axes."""
    start = canonical_axis(axis, len(bottoms[0]), layer)
    run = bottoms[0][start : start + len(bottoms[1])]
    if tuple(run) != tuple(bottoms[1]):
        raise NetDefinitionError(
            f"second bottom {bottoms[1]} does not match axes {start}.. of {bottoms[0]}", layer=layer.name
        )


@_register(SHAPE_RULES, "Scale", "Bias")
def _scale_shape(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    _expect_bottoms(layer, bottoms, 1, 2)
    if len(bottoms) == 2:
        axis = layer.scale_param.axis if layer.type == "Scale" else layer.bias_param.axis
        _check_operand(layer, bottoms, axis)
    return [bottoms[0]]


@_register(BLOB_RULES, "Scale")
def _scale_blobs(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    p = layer.scale_param
    if len(bottoms) == 2:
        return [tuple(bottoms[1])] if p.bias_term else []
    shape = _scale_axes(layer, bottoms, p.axis, p.num_axes)
    return [shape, shape] if p.bias_term else [shape]


@_register(BLOB_RULES, "Bias")
def _bias_blobs(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    if len(bottoms) == 2:
        return []
    return [_scale_axes(layer, bottoms, layer.bias_param.axis, layer.bias_param.num_axes)]


@_register(BLOB_RULES, "PReLU")
def _prelu_blobs(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    if len(bottoms[0]) < 2 and not layer.prelu_param.channel_shared:
        raise NetDefinitionError(f"needs a channel axis, got input {bottoms[0]}", layer=layer.name)
    # prelu_layer.cpp: a shared slope is a 0-axis blob, which Caffe checks when loading weights.
    return [()] if layer.prelu_param.channel_shared else [(bottoms[0][1],)]


@_register(SHAPE_RULES, "Axpy")
def _axpy_shape(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    _expect_bottoms(layer, bottoms, 3)
    gate, x, y = bottoms
    if x != y:
        raise NetDefinitionError(f"bottoms 2 and 3 must have equal shapes, got {x} and {y}", layer=layer.name)
    if len(gate) < 2 or gate[:2] != x[:2] or math.prod(gate[2:]) != 1:
        raise NetDefinitionError(
            f"bottom 1 must be N x C x 1 x 1 for input {x}, got {gate}", layer=layer.name
        )
    return [x]


@_register(SHAPE_RULES, "Eltwise")
def _eltwise_shape(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    if len(bottoms) < 2:
        raise NetDefinitionError("Eltwise takes at least 2 bottoms", layer=layer.name)
    if any(shape != bottoms[0] for shape in bottoms):
        raise NetDefinitionError(f"all bottoms must have equal shapes, got {bottoms}", layer=layer.name)
    coeffs = layer.eltwise_param.coeff
    if coeffs and len(coeffs) != len(bottoms):
        raise NetDefinitionError(f"{len(coeffs)} coefficients for {len(bottoms)} bottoms", layer=layer.name)
    return [bottoms[0]]


def concat_axis(layer: caffe_pb2.LayerParameter, ndim: int) -> int:
    p = layer.concat_param
    axis = p.concat_dim if p.HasField("concat_dim") and not p.HasField("axis") else p.axis
    return canonical_axis(axis, ndim, layer)


@_register(SHAPE_RULES, "Concat")
def _concat_shape(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    if not bottoms:
        raise NetDefinitionError("Concat needs bottoms", layer=layer.name)
    axis = concat_axis(layer, len(bottoms[0]))
    for shape in bottoms:
        if len(shape) != len(bottoms[0]) or any(
            a != b for i, (a, b) in enumerate(zip(shape, bottoms[0])) if i != axis
        ):
            raise NetDefinitionError(f"bottoms differ outside axis {axis}: {bottoms}", layer=layer.name)
    out = list(bottoms[0])
    out[axis] = sum(shape[axis] for shape in bottoms)
    return [tuple(out)]


def reshape_axes(layer: caffe_pb2.LayerParameter, ndim: int) -> tuple[int, int]:
    """The [start, end) run of input axes a Reshape layer replaces (Caffe's axis/num_axes)."""
    p = layer.reshape_param
    start = p.axis if p.axis >= 0 else ndim + p.axis + 1
    if not 0 <= start <= ndim:
        raise NetDefinitionError(f"axis {p.axis} out of range", layer=layer.name)
    end = ndim if p.num_axes == -1 else start + p.num_axes
    if p.num_axes < -1 or end > ndim:
        raise NetDefinitionError(f"num_axes {p.num_axes} out of range", layer=layer.name)
    return start, end


@_register(SHAPE_RULES, "Reshape")
def _reshape_shape(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    _expect_bottoms(layer, bottoms, 1)
    p, bottom = layer.reshape_param, bottoms[0]
    dims = list(p.shape.dim)
    start, end = reshape_axes(layer, len(bottom))
    if dims.count(-1) > 1:
        raise NetDefinitionError("at most one -1 in the shape", layer=layer.name)
    new = []
    for i, dim in enumerate(dims):
        if dim == 0:
            if start + i >= len(bottom):
                raise NetDefinitionError(
                    f"dim {i} is 0 but the input has no axis {start + i}", layer=layer.name
                )
            new.append(bottom[start + i])
        elif dim < -1:
            raise NetDefinitionError(f"invalid dim {dim}", layer=layer.name)
        else:
            new.append(dim)
    out = [*bottom[:start], *new, *bottom[end:]]
    total = math.prod(bottom)
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        if known == 0 or total % known:
            raise NetDefinitionError(f"cannot reshape {bottom} to {dims}", layer=layer.name)
        out[out.index(-1)] = total // known
    if math.prod(out) != total:
        raise NetDefinitionError(
            f"cannot reshape {bottom} ({total} values) to {tuple(out)}", layer=layer.name
        )
    return [tuple(out)]


@_register(SHAPE_RULES, "Flatten")
def _flatten_shape(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    _expect_bottoms(layer, bottoms, 1)
    bottom = bottoms[0]
    start = canonical_axis(layer.flatten_param.axis, len(bottom), layer)
    end = canonical_axis(layer.flatten_param.end_axis, len(bottom), layer)
    if end < start:
        raise NetDefinitionError(f"end_axis {end} comes before axis {start}", layer=layer.name)
    return [(*bottom[:start], math.prod(bottom[start : end + 1]), *bottom[end + 1 :])]


@_register(SHAPE_RULES, "Split")
def _split_shape(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    _expect_bottoms(layer, bottoms, 1)
    return [bottoms[0]] * len(layer.top)


def slice_points(layer: caffe_pb2.LayerParameter, bottom: Shape) -> tuple[int, list[int]]:
    """Axis and the [start, end) bounds of each top of a Slice layer."""
    p = layer.slice_param
    axis = p.slice_dim if p.HasField("slice_dim") and not p.HasField("axis") else p.axis
    axis = canonical_axis(axis, len(bottom), layer)
    size, tops = bottom[axis], len(layer.top)
    if not tops:
        raise NetDefinitionError("Slice needs at least one top", layer=layer.name)
    if p.slice_point:
        points = list(p.slice_point)
        steps = zip([0, *points], points)
        if (
            len(points) != tops - 1
            or tops > size
            or points[-1] > size
            or any(point <= previous for previous, point in steps)
        ):
            raise NetDefinitionError(
                f"slice points {points} do not cut axis of size {size} into {tops} parts", layer=layer.name
            )
    else:
        if size % tops:
            raise NetDefinitionError(f"axis size {size} does not divide into {tops} tops", layer=layer.name)
        points = [size // tops * i for i in range(1, tops)]
    return axis, [0, *points, size]


@_register(SHAPE_RULES, "Slice")
def _slice_shape(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    _expect_bottoms(layer, bottoms, 1)
    axis, bounds = slice_points(layer, bottoms[0])
    tops = []
    for start, end in zip(bounds, bounds[1:]):
        shape = list(bottoms[0])
        shape[axis] = end - start
        tops.append(tuple(shape))
    return tops


def crop_offsets(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[int]:
    """Per-axis start of a Crop layer's window in bottom[0] (crop_layer.cpp's Reshape)."""
    p, (data, reference) = layer.crop_param, bottoms
    if len(data) != len(reference):
        raise NetDefinitionError(f"bottoms have different ranks: {data} and {reference}", layer=layer.name)
    start = canonical_axis(p.axis, len(data), layer)
    if len(p.offset) > 1 and start + len(p.offset) != len(data):
        raise NetDefinitionError(
            f"{len(p.offset)} offsets for the {len(data) - start} axes from axis {start}", layer=layer.name
        )
    offsets = []
    for i, size in enumerate(data):
        offset = 0 if i < start or not p.offset else p.offset[0 if len(p.offset) == 1 else i - start]
        if i >= start and size - offset < reference[i]:
            raise NetDefinitionError(
                f"crop of axis {i} (size {reference[i]}, offset {offset}) leaves input {data}",
                layer=layer.name,
            )
        offsets.append(offset)
    return offsets


@_register(SHAPE_RULES, "Crop")
def _crop_shape(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    _expect_bottoms(layer, bottoms, 2)
    start = canonical_axis(layer.crop_param.axis, len(bottoms[0]), layer)
    crop_offsets(layer, bottoms)
    return [(*bottoms[0][:start], *bottoms[1][start:])]


@_register(SHAPE_RULES, "Embed")
def _embed_shape(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    _expect_bottoms(layer, bottoms, 1)
    p = layer.embed_param
    if not (p.num_output > 0 and p.input_dim > 0):
        raise NetDefinitionError("num_output and input_dim must be given and positive", layer=layer.name)
    return [(*bottoms[0], p.num_output)]


@_register(BLOB_RULES, "Embed")
def _embed_blobs(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    p = layer.embed_param
    weight = (p.input_dim, p.num_output)
    return [weight, (p.num_output,)] if p.bias_term else [weight]


@_register(SHAPE_RULES, "ArgMax")
def _argmax_shape(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    _expect_bottoms(layer, bottoms, 1)
    p, bottom = layer.argmax_param, bottoms[0]
    if p.HasField("axis"):
        axis = canonical_axis(p.axis, len(bottom), layer)
        if not 1 <= p.top_k <= bottom[axis]:
            raise NetDefinitionError(f"top_k {p.top_k} not in 1..{bottom[axis]}", layer=layer.name)
        return [(*bottom[:axis], p.top_k, *bottom[axis + 1 :])]
    if not 1 <= p.top_k <= math.prod(bottom[1:]):
        raise NetDefinitionError(f"top_k {p.top_k} not in 1..{math.prod(bottom[1:])}", layer=layer.name)
    shape = [1] * max(len(bottom), 3)
    shape[0], shape[1], shape[2] = bottom[0], 2 if p.out_max_val else 1, p.top_k
    return [tuple(shape)]


def legacy_shape(layer: caffe_pb2.LayerParameter, bottom: Shape) -> Shape:
    """Caffe's num/channels/height/width view of a blob of at most 4 axes (1s appended)."""
    if len(bottom) > 4:
        raise NetDefinitionError(f"{layer.type} takes at most 4 axes, got {bottom}", layer=layer.name)
    return (*bottom, *(1,) * (4 - len(bottom)))


@_register(SHAPE_RULES, "MVN")
def _mvn_shape(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    _expect_bottoms(layer, bottoms, 1)
    return [legacy_shape(layer, bottoms[0])]  # Caffe reshapes the top to 4 axes


@_register(SHAPE_RULES, "Reduction")
def _reduction_shape(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    _expect_bottoms(layer, bottoms, 1)
    return [bottoms[0][: canonical_axis(layer.reduction_param.axis, len(bottoms[0]), layer)]]


@_register(SHAPE_RULES, "Tile")
def _tile_shape(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    _expect_bottoms(layer, bottoms, 1)
    p, bottom = layer.tile_param, list(bottoms[0])
    if not p.HasField("tiles") or p.tiles <= 0:
        raise NetDefinitionError("tiles must be given and positive", layer=layer.name)
    axis = canonical_axis(p.axis, len(bottom), layer)
    bottom[axis] *= p.tiles
    return [tuple(bottom)]


def spp_levels(layer: caffe_pb2.LayerParameter, bottom: Shape) -> list[caffe_pb2.LayerParameter]:
    """The Pooling layer of each pyramid level (spp_layer.cpp's GetPoolingParam)."""
    p = layer.spp_param
    if p.pyramid_height < 1:
        raise NetDefinitionError("pyramid_height must be given and positive", layer=layer.name)
    if len(bottom) != 4 or not (bottom[2] > 0 and bottom[3] > 0):
        raise NetDefinitionError(f"expects a 4-D input of positive size, got {bottom}", layer=layer.name)
    levels = []
    for level in range(p.pyramid_height):
        bins = 2**level
        kernel = [-(-size // bins) for size in bottom[2:]]
        pad = [(k * bins - size + 1) // 2 for k, size in zip(kernel, bottom[2:])]
        pooling = caffe_pb2.PoolingParameter(
            pool=caffe_pb2.SPPParameter.PoolMethod.Name(p.pool),
            kernel_h=kernel[0],
            kernel_w=kernel[1],
            stride_h=kernel[0],
            stride_w=kernel[1],
        )
        pooling.pad_h, pooling.pad_w = pad
        levels.append(
            caffe_pb2.LayerParameter(name=f"{layer.name}/level{level}", type="Pooling", pooling_param=pooling)
        )
    return levels


@_register(SHAPE_RULES, "SPP")
def _spp_shape(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    _expect_bottoms(layer, bottoms, 1)
    pooled = [_pool_shape(level, bottoms)[0] for level in spp_levels(layer, bottoms[0])]
    if len(pooled) == 1:
        return pooled  # one level: the pooling's 4-D top, not flattened
    return [(bottoms[0][0], sum(math.prod(shape[1:]) for shape in pooled))]


@_register(SHAPE_RULES, "ShuffleChannel")
def _shuffle_channel_shape(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    """farmingyard/ShuffleNet's layer (field 164): channels regrouped, shape kept."""
    _expect_bottoms(layer, bottoms, 1)
    group, bottom = layer.shuffle_channel_param.group, bottoms[0]
    if len(bottom) < 2 or group <= 0 or bottom[1] % group:
        raise NetDefinitionError(f"group {group} must divide the channels of {bottom}", layer=layer.name)
    return [bottom]


@_register(SHAPE_RULES, "Parameter")
def _parameter_shape(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    _expect_bottoms(layer, bottoms, 0)
    return [tuple(layer.parameter_param.shape.dim)]


@_register(BLOB_RULES, "Parameter")
def _parameter_blobs(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    return [tuple(layer.parameter_param.shape.dim)]


@_register(SHAPE_RULES, "BatchReindex")
def _batch_reindex_shape(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    _expect_bottoms(layer, bottoms, 2)
    if len(bottoms[1]) != 1:
        raise NetDefinitionError(f"the index bottom must be 1-D, got {bottoms[1]}", layer=layer.name)
    return [(bottoms[1][0], *bottoms[0][1:])]


@_register(SHAPE_RULES, "Im2col")
def _im2col_shape(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    _expect_bottoms(layer, bottoms, 1)
    bottom = bottoms[0]
    if layer.convolution_param.axis != 1 or len(bottom) != 4:
        raise NetDefinitionError(f"only 4-D inputs with channel axis 1, got {bottom}", layer=layer.name)
    g = conv_geometry(layer)
    spatial = [
        (size + 2 * pd - (d * (k - 1) + 1)) // s + 1
        for size, k, s, pd, d in zip(bottom[2:], g["kernel"], g["stride"], g["pad"], g["dilation"])
    ]
    if any(out <= 0 for out in spatial):
        raise NetDefinitionError(f"input {bottom} too small for the kernel", layer=layer.name)
    return [(bottom[0], bottom[1] * math.prod(g["kernel"]), *spatial)]


# --- the SSD fork's layers (weiliu89/caffe, branch ssd) ------------------------------------


def permute_order(layer: caffe_pb2.LayerParameter, ndim: int) -> list[int]:
    """The fork's Permute order: the given axes, then the unnamed ones in increasing order."""
    order = list(layer.permute_param.order)
    if any(axis >= ndim for axis in order) or len(set(order)) != len(order):
        raise NetDefinitionError(
            f"order {order} must name distinct axes of the {ndim}-D input", layer=layer.name
        )
    return order + [axis for axis in range(ndim) if axis not in order]


@_register(SHAPE_RULES, "Permute")
def _permute_shape(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    _expect_bottoms(layer, bottoms, 1)
    return [tuple(bottoms[0][axis] for axis in permute_order(layer, len(bottoms[0])))]


@_register(SHAPE_RULES, "Normalize")
def _normalize_shape(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    _expect_bottoms(layer, bottoms, 1)
    if not 2 <= len(bottoms[0]) <= 4:
        raise NetDefinitionError(f"Normalize needs a 2-D to 4-D input, got {bottoms[0]}", layer=layer.name)
    return [bottoms[0]]


@_register(BLOB_RULES, "Normalize")
def _normalize_blobs(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    """One scale: a scalar blob (shape ()) when channel_shared, else one per channel."""
    return [()] if layer.norm_param.channel_shared else [(bottoms[0][1],)]


@dataclass(frozen=True)
class PriorBoxSpec:
    """A PriorBox layer's parameters as the fork's LayerSetUp keeps them (float32 values).

    `min_sizes`/`max_sizes` are ints: the fork's Forward reads them into `int`
    (prior_box_layer.cpp, `int min_size_ = min_sizes_[s]`), truncating 30.5 to 30.
    `img_hw`/`step_hw` are None where the layer takes them from its bottoms.
    """

    min_sizes: tuple[int, ...]
    max_sizes: tuple[int, ...]
    aspect_ratios: tuple[float, ...]  # 1 first, then each new ratio (and its flip)
    clip: bool
    variances: tuple[float, ...]  # 1 or 4 values
    img_hw: tuple[int, int] | None
    step_hw: tuple[float, float] | None
    offset: float

    @property
    def num_priors(self) -> int:
        return len(self.aspect_ratios) * len(self.min_sizes) + len(self.max_sizes)


def _f32(value: float) -> float:
    return float(np.float32(value))


def prior_box_spec(layer: caffe_pb2.LayerParameter) -> PriorBoxSpec:
    """Read and check a PriorBox layer's parameters (the fork's PriorBoxLayer::LayerSetUp)."""
    p = layer.prior_box_param

    def fail(reason: str) -> NoReturn:
        raise NetDefinitionError(reason, layer=layer.name)

    if not p.min_size or any(size <= 0 for size in p.min_size):
        fail("PriorBox needs min_size, every one positive")
    if p.max_size and (
        len(p.max_size) != len(p.min_size) or any(hi <= lo for lo, hi in zip(p.min_size, p.max_size))
    ):
        fail("PriorBox needs one max_size per min_size, each greater than its min_size")
    ratios = [1.0]
    for ratio in (_f32(r) for r in p.aspect_ratio):
        if all(abs(ratio - known) >= 1e-6 for known in ratios):
            ratios.append(ratio)
            if p.flip:
                ratios.append(_f32(1.0 / ratio))
    if len(p.variance) not in (0, 1, 4) or any(v <= 0 for v in p.variance):
        fail(f"PriorBox takes 1 or 4 positive variances, got {list(p.variance)}")
    img_hw = step_hw = None
    if p.HasField("img_h") or p.HasField("img_w"):
        if p.HasField("img_size"):
            fail("give either img_size or img_h/img_w, not both")
        img_hw = (p.img_h, p.img_w)
    elif p.HasField("img_size"):
        img_hw = (p.img_size, p.img_size)
    if p.HasField("step_h") or p.HasField("step_w"):
        if p.HasField("step"):
            fail("give either step or step_h/step_w, not both")
        step_hw = (_f32(p.step_h), _f32(p.step_w))
    elif p.HasField("step"):
        step_hw = (_f32(p.step), _f32(p.step))
    if (img_hw and min(img_hw) <= 0) or (step_hw and min(step_hw) <= 0):
        fail("img_size/img_h/img_w and step/step_h/step_w must be positive")
    return PriorBoxSpec(
        min_sizes=tuple(int(_f32(size)) for size in p.min_size),
        max_sizes=tuple(int(_f32(size)) for size in p.max_size),
        aspect_ratios=tuple(ratios),
        clip=p.clip,
        variances=tuple(_f32(v) for v in p.variance) or (_f32(0.1),),
        img_hw=img_hw,
        step_hw=step_hw,
        offset=_f32(p.offset),
    )


@_register(SHAPE_RULES, "PriorBox")
def _prior_box_shape(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    """1 x 2 x (H * W * priors * 4): the boxes, then their variances."""
    _expect_bottoms(layer, bottoms, 2)
    legacy_shape(layer, bottoms[1])  # the image: at most 4 axes too
    height, width = legacy_shape(layer, bottoms[0])[2:]
    return [(1, 2, height * width * prior_box_spec(layer).num_priors * 4)]


def detection_heads(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> tuple[int, int]:
    """Check DetectionOutput's bottoms (loc, conf, priors); return (priors, location classes)."""
    p = layer.detection_output_param
    _expect_bottoms(layer, bottoms, 3)
    if not p.HasField("num_classes") or p.num_classes < 1:
        raise NetDefinitionError("DetectionOutput needs num_classes", layer=layer.name)
    if p.nms_param.nms_threshold < 0 or not 0 < p.nms_param.eta <= 1:
        raise NetDefinitionError("nms_threshold must be >= 0 and eta in (0, 1]", layer=layer.name)
    if p.share_location and p.background_label_id == -1:
        # DecodeBBoxesAll skips the shared location label -1 as "background"; Forward then aborts.
        raise NetDefinitionError(
            "background_label_id -1 with share_location: the SSD fork aborts on this "
            "(no location predictions for label -1)",
            layer=layer.name,
        )
    loc, conf, prior = bottoms
    if any(len(shape) < 2 for shape in bottoms):
        raise NetDefinitionError(f"unexpected bottom shapes {bottoms}", layer=layer.name)
    priors = legacy_shape(layer, prior)[2] // 4  # the fork's height() / 4
    loc_classes = 1 if p.share_location else p.num_classes
    expected = (priors * loc_classes * 4, priors * p.num_classes)
    # The fork checks channels() and then reads count(1) values per image: both must agree.
    per_image = (math.prod(loc[1:]), math.prod(conf[1:]))
    prior_values = priors * 4 * (1 if p.variance_encoded_in_target else 2)  # boxes, then variances
    if (
        loc[0] != conf[0]
        or (loc[1], conf[1]) != expected
        or per_image != expected
        or priors == 0
        or math.prod(prior) < prior_values
    ):
        raise NetDefinitionError(
            f"{priors} priors need {expected[0]} location and {expected[1]} confidence values "
            f"per image, got bottoms {bottoms}",
            layer=layer.name,
        )
    return priors, loc_classes


@_register(SHAPE_RULES, "DetectionOutput")
def _detection_output_shape(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    """1 x 1 x rows x 7; the row count is known only after NMS, so this is Caffe's placeholder 1."""
    detection_heads(layer, bottoms)
    return [(1, 1, 1, 7)]


def expected_blob_shapes(layer: caffe_pb2.LayerParameter, bottoms: list[Shape]) -> list[Shape]:
    """The blobs a layer of this type owns, as Caffe would allocate them."""
    rule = BLOB_RULES.get(layer.type)
    return rule(layer, bottoms) if rule else []


def multiply_adds(layer: caffe_pb2.LayerParameter, bottoms: list[Shape], tops: list[Shape]) -> int:
    """Multiply-accumulates of the convolution and inner-product layers, 0 elsewhere."""
    if layer.type == "Convolution":
        kernel = math.prod(expected_blob_shapes(layer, bottoms)[0][1:])
        return math.prod(tops[0]) * kernel
    if layer.type == "Deconvolution":
        weight = expected_blob_shapes(layer, bottoms)[0]
        return math.prod(bottoms[0]) * math.prod(weight[1:])
    if layer.type == "InnerProduct":
        weight = expected_blob_shapes(layer, bottoms)[0]
        return math.prod(tops[0][:-1]) * math.prod(weight)
    return 0
