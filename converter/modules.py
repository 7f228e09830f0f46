"""The few nn.Modules Caffe semantics need beyond torch.nn's own.

Each is small and exported by name into the generated graph, so a converted
net reads as `self.conv2_1_1x1_down_scale(...)` calling one of these.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from prototxt.shapes import Shape, ave_pool_divisor, pool_padding


def pair(values: Sequence[int]) -> tuple[int, int]:
    """A 2-D kernel/stride/pad as the (h, w) pair torch's 2-D layers take."""
    if len(values) != 2:
        raise ValueError(f"expected 2 spatial values, got {list(values)}")
    return values[0], values[1]


def running_statistics(norm: nn.modules.batchnorm._NormBase) -> tuple[torch.Tensor, torch.Tensor]:
    """A BatchNorm's running mean and variance; converted Caffe BatchNorms always track them."""
    if norm.running_mean is None or norm.running_var is None:
        raise ValueError("a BatchNorm without running statistics has no inference form")
    return norm.running_mean, norm.running_var


def broadcast_shape(ndim: int, axis: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape that places `shape` at `axis` of an `ndim`-D tensor, 1 elsewhere."""
    return (1,) * axis + tuple(shape) + (1,) * (ndim - axis - len(shape))


class Affine(nn.Module):
    """Caffe Scale/Bias with learned blobs: x * weight (+ bias) over axes [axis, axis+k)."""

    def __init__(self, shape: tuple[int, ...], ndim: int, axis: int, scale: bool, bias: bool) -> None:
        super().__init__()
        self.view = broadcast_shape(ndim, axis, shape)
        self.weight = nn.Parameter(torch.ones(shape)) if scale else None
        self.bias = nn.Parameter(torch.zeros(shape)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is not None:
            x = x * self.weight.view(self.view)
        if self.bias is not None:
            x = x + self.bias.view(self.view)
        return x

    def extra_repr(self) -> str:
        return f"view={self.view}"


class ScaleBy(nn.Module):
    """Caffe Scale with two bottoms: x * y, y broadcast from `axis` (SE-BN-Inception's gate)."""

    def __init__(self, ndim: int, axis: int, operand_ndim: int, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.axis, self.trailing = axis, ndim - axis - operand_ndim
        self.bias = None if bias is None else nn.Parameter(bias)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = y.reshape(*y.shape, *((1,) * self.trailing))
        out = x * y
        if self.bias is not None:
            out = out + self.bias.reshape(*self.bias.shape, *((1,) * self.trailing))
        return out

    def extra_repr(self) -> str:
        return f"axis={self.axis}"


class BiasBy(nn.Module):
    """Caffe Bias with two bottoms: x + y, y broadcast from `axis`."""

    def __init__(self, ndim: int, axis: int, operand_ndim: int) -> None:
        super().__init__()
        self.axis, self.trailing = axis, ndim - axis - operand_ndim

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y.reshape(*y.shape, *((1,) * self.trailing))


class Axpy(nn.Module):
    """SENet's Axpy (axpy_layer.cpp): top = a * x + y, a the N x C x 1 x 1 SE gate."""

    def forward(self, a: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # Not torch.addcmul: its ONNX export adds a float32 Cast (breaking --fp16) and a Mul.
        return a * x + y


class EltwiseSum(nn.Module):
    """Caffe Eltwise SUM, optionally with one coefficient per bottom."""

    def __init__(self, coefficients: list[float] | None = None) -> None:
        super().__init__()
        self.coefficients = coefficients

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.coefficients is None:
            out = inputs[0]
            for x in inputs[1:]:
                out = out + x
            return out
        out = inputs[0] * self.coefficients[0]
        for c, x in zip(self.coefficients[1:], inputs[1:]):
            out = out + x * c
        return out

    def extra_repr(self) -> str:
        return f"coefficients={self.coefficients}" if self.coefficients else ""


class EltwiseProd(nn.Module):
    """Caffe Eltwise PROD."""

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        out = inputs[0]
        for x in inputs[1:]:
            out = out * x
        return out


class EltwiseMax(nn.Module):
    """Caffe Eltwise MAX."""

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        out = inputs[0]
        for x in inputs[1:]:
            out = torch.maximum(out, x)
        return out


class Concat(nn.Module):
    """Caffe Concat along `axis`."""

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return torch.cat(inputs, dim=self.axis)

    def extra_repr(self) -> str:
        return f"axis={self.axis}"


class Reshape(nn.Module):
    """Caffe Reshape: 0 copies an input dim, -1 is inferred; batch stays dynamic."""

    def __init__(self, dims: list[int], start: int, end: int | None) -> None:
        super().__init__()
        self.dims, self.start, self.end = dims, start, end

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        end = x.dim() if self.end is None else self.end
        new = [x.shape[self.start + i] if d == 0 else d for i, d in enumerate(self.dims)]
        return x.reshape(*x.shape[: self.start], *new, *x.shape[end:])

    def extra_repr(self) -> str:
        return f"dims={self.dims}, start={self.start}, end={self.end}"


class InnerProduct(nn.Module):
    """Caffe InnerProduct: flatten from `axis`, then a linear layer."""

    def __init__(self, in_features: int, out_features: int, bias: bool, axis: int) -> None:
        super().__init__()
        self.axis = axis
        self.linear = nn.Linear(in_features, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(x, self.axis))


class Slice(nn.Module):
    """Caffe Slice: split along `axis` at the given sizes."""

    def __init__(self, axis: int, sizes: list[int]) -> None:
        super().__init__()
        self.axis, self.sizes = axis, sizes

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.split(x, self.sizes, dim=self.axis)


class Flatten(nn.Module):
    """Caffe Flatten over axes [start, end]."""

    def __init__(self, start: int, end: int) -> None:
        super().__init__()
        self.start, self.end = start, end

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, self.start, self.end)


class CaffePool2d(nn.Module):
    """Caffe MAX/AVE pooling where torch's pooling can't express it.

    (pad > kernel / 2, or a last window starting past an unpadded input.) The
    input is padded explicitly so every output window lies inside it; AVE
    divides by Caffe's divisor, the window clipped to the padded extent
    [-pad, size + pad) with padding counted, precomputed for the layer's input size.
    """

    divisor: torch.Tensor

    def __init__(self, mode: str, geometry: dict[str, list[int]], bottom: Shape, top: Shape) -> None:
        super().__init__()
        self.mode, self.kernel, self.stride = mode, geometry["kernel"], geometry["stride"]
        self.padding = pool_padding(geometry, bottom, top)
        self.register_buffer(
            "divisor", torch.from_numpy(ave_pool_divisor(geometry, bottom, top)), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (top, bottom), (left, right) = self.padding
        # Caffe's MAX starts from -FLT_MAX in Net<float> and Net<double> alike
        # (pooling_layer.cpp), which an empty window (past the input) keeps.
        fill = torch.finfo(torch.float32).min if self.mode == "MAX" else 0.0
        padded = F.pad(x, (left, max(right, 0), top, max(bottom, 0)), value=fill)
        padded = padded[..., : padded.shape[-2] + min(bottom, 0), : padded.shape[-1] + min(right, 0)]
        if self.mode == "MAX":
            return F.max_pool2d(padded, self.kernel, self.stride)
        summed = F.avg_pool2d(padded, self.kernel, self.stride, divisor_override=1)
        return summed / self.divisor.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.mode}, kernel={self.kernel}, stride={self.stride}, padding={self.padding}"


class LRNWithinChannel(nn.Module):
    """Caffe LRN WITHIN_CHANNEL: x / (1 + alpha * avg_{size x size}(x^2))^beta."""

    def __init__(self, size: int, alpha: float, beta: float) -> None:
        super().__init__()
        self.size, self.alpha, self.beta = size, alpha, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = (self.size - 1) // 2
        mean_square = F.avg_pool2d(x * x, self.size, 1, pad, count_include_pad=True)
        return x * (1 + self.alpha * mean_square).pow(-self.beta)


# --- element-wise layers, each in the form of its Caffe source (for equal rounding) -------------


class AbsVal(nn.Module):
    """Caffe AbsVal: |x|."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.abs(x)


class BNLL(nn.Module):
    """Caffe BNLL, log(1 + e^x) as bnll_layer.cpp writes it: two branches, neither overflows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, x + torch.log(1 + torch.exp(-x)), torch.log(1 + torch.exp(x)))


class Clip(nn.Module):
    """Caffe Clip: max(low, min(x, high)) (low wins when low > high, as in clip_layer.cpp)."""

    def __init__(self, low: float, high: float) -> None:
        super().__init__()
        self.low, self.high = low, high

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.clamp(x, max=self.high), min=self.low)

    def extra_repr(self) -> str:
        return f"low={self.low}, high={self.high}"


class ELU(nn.Module):
    """Caffe ELU: max(x, 0) + alpha * (exp(min(x, 0)) - 1), elu_layer.cpp's form."""

    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, min=0) + self.alpha * (torch.exp(torch.clamp(x, max=0)) - 1)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class Exp(nn.Module):
    """Caffe Exp: base^(shift + scale * x) = outer * exp(inner * x), exp_layer.cpp's factors."""

    def __init__(self, inner: float, outer: float) -> None:
        super().__init__()
        self.inner, self.outer = inner, outer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.exp(x if self.inner == 1 else x * self.inner)
        return y if self.outer == 1 else y * self.outer

    def extra_repr(self) -> str:
        return f"inner={self.inner}, outer={self.outer}"


class Log(nn.Module):
    """Caffe Log: log_base(shift + scale * x) = log(scale * x + shift) * (1 / ln base)."""

    def __init__(self, scale: float, shift: float, base_scale: float) -> None:
        super().__init__()
        self.scale, self.shift, self.base_scale = scale, shift, base_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale != 1:
            x = x * self.scale
        if self.shift != 0:
            x = x + self.shift
        y = torch.log(x)
        return y if self.base_scale == 1 else y * self.base_scale

    def extra_repr(self) -> str:
        return f"scale={self.scale}, shift={self.shift}, base_scale={self.base_scale}"


class Power(nn.Module):
    """Caffe Power: (shift + scale * x)^power; a constant when power * scale is 0."""

    def __init__(self, power: float, scale: float, shift: float) -> None:
        super().__init__()
        self.power, self.scale, self.shift = power, scale, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.power * self.scale == 0:  # power_layer.cpp: 1 for power 0, else shift^power
            constant = torch.full_like(x, 1.0 if self.power == 0 else self.shift)
            return constant if self.power == 0 else torch.pow(constant, self.power)
        if self.scale != 1:
            x = x * self.scale
        if self.shift != 0:
            x = x + self.shift
        return x if self.power == 1 else torch.pow(x, self.power)

    def extra_repr(self) -> str:
        return f"power={self.power}, scale={self.scale}, shift={self.shift}"


class Threshold(nn.Module):
    """Caffe Threshold: 1 where x > threshold, else 0."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x > self.threshold).to(x.dtype)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"


class Swish(nn.Module):
    """Caffe Swish: x * sigmoid(beta * x), with Caffe's sigmoid 0.5 * tanh(0.5 * v) + 0.5."""

    def __init__(self, beta: float) -> None:
        super().__init__()
        self.beta = beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (0.5 * torch.tanh(0.5 * (x * self.beta)) + 0.5)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


# --- layers that move, pick or reduce values ---------------------------------------------------


class Crop(nn.Module):
    """Caffe Crop: bottom[0]'s window at `offsets` of bottom[1]'s size, axes `start` on."""

    def __init__(self, start: int, offsets: list[int], sizes: list[int]) -> None:
        super().__init__()
        self.start, self.offsets, self.sizes = start, offsets, sizes

    def forward(self, x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        for axis, (offset, size) in enumerate(zip(self.offsets, self.sizes), start=self.start):
            x = x.narrow(axis, offset, size)
        return x

    def extra_repr(self) -> str:
        return f"start={self.start}, offsets={self.offsets}, sizes={self.sizes}"


class Tile(nn.Module):
    """Caffe Tile: `tiles` copies of everything from `axis` on, one after another."""

    def __init__(self, ndim: int, axis: int, tiles: int) -> None:
        super().__init__()
        self.repeats = [tiles if i == axis else 1 for i in range(ndim)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat(self.repeats)

    def extra_repr(self) -> str:
        return f"repeats={self.repeats}"


class ShuffleChannel(nn.Module):
    """ShuffleNet's channel shuffle (farmingyard/ShuffleNet's Resize_cpu): channel
    i * (C / g) + j of the input becomes channel j * g + i."""

    def __init__(self, group: int) -> None:
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grouped = x.unflatten(1, (self.group, -1))
        return grouped.transpose(1, 2).flatten(1, 2)

    def extra_repr(self) -> str:
        return f"group={self.group}"


class LearnedBlob(nn.Module):
    """Caffe Parameter: a layer without bottoms whose top is its learned blob."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(shape))

    def forward(self) -> torch.Tensor:
        return self.weight


class BatchReindex(nn.Module):
    """Caffe BatchReindex: the items of x at the (float) indices of the second bottom."""

    def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return x.index_select(0, index.long())


class Im2col(nn.Module):
    """Caffe Im2col: each k_h x k_w patch as a column, rows ordered channel, kernel row, kernel column."""

    def __init__(self, kernel: list[int], stride: list[int], pad: list[int], dilation: list[int]) -> None:
        super().__init__()
        self.kernel, self.stride, self.pad, self.dilation = kernel, stride, pad, dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = [
            (n + 2 * p - (d * (k - 1) + 1)) // s + 1
            for n, k, s, p, d in zip(x.shape[2:], self.kernel, self.stride, self.pad, self.dilation)
        ]
        columns = F.unfold(x, tuple(self.kernel), tuple(self.dilation), tuple(self.pad), tuple(self.stride))
        return columns.unflatten(2, out)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}, pad={self.pad}, dilation={self.dilation}"


class Embed(nn.Module):
    """Caffe Embed: row int(x) of the input_dim x num_output weight (+ bias) per input value."""

    def __init__(self, input_dim: int, num_output: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(input_dim, num_output))
        self.bias = nn.Parameter(torch.zeros(num_output)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.embedding(x.long(), self.weight)  # .long() truncates toward 0, as static_cast<int>
        return out if self.bias is None else out + self.bias


class ArgMax(nn.Module):
    """Caffe ArgMax: the top_k indices (or values) in descending order.

    Equal values come larger index first, as argmax_layer.cpp's partial_sort of
    (value, index) pairs with std::greater orders them: the axis is reversed and
    sorted stably (in ONNX, by TopK, whose ties come lower index first). Without
    `axis`, each item is flattened and the top is N x 1 x k (indices) or N x 2 x k
    (indices, then values), padded to `ndim` axes.
    """

    def __init__(self, top_k: int, axis: int | None, out_max_val: bool, ndim: int) -> None:
        super().__init__()
        self.top_k, self.axis, self.out_max_val, self.ndim = top_k, axis, out_max_val, ndim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axis = 1 if self.axis is None else self.axis
        values = x.flatten(1) if self.axis is None else x
        size, reversed_ = values.shape[axis], values.flip(axis)
        if torch.onnx.is_in_onnx_export():  # ONNX TopK puts equal values lower index first
            ordered, position = torch.topk(reversed_, self.top_k, dim=axis)
        else:  # torch.topk leaves the order of ties open; a stable sort does not
            ordered, position = torch.sort(reversed_, dim=axis, descending=True, stable=True)
            ordered, position = ordered.narrow(axis, 0, self.top_k), position.narrow(axis, 0, self.top_k)
        index = (size - 1 - position).to(x.dtype)
        if self.axis is not None:
            return ordered if self.out_max_val else index
        top = torch.stack([index, ordered], 1) if self.out_max_val else index.unsqueeze(1)
        return top.reshape(*top.shape, *(1,) * (self.ndim - top.dim()))

    def extra_repr(self) -> str:
        return f"top_k={self.top_k}, axis={self.axis}, out_max_val={self.out_max_val}"


class Reduction(nn.Module):
    """Caffe Reduction: SUM, ASUM, SUMSQ or MEAN of all axes from `axis` on, times `coeff`."""

    def __init__(self, operation: str, axis: int, coeff: float) -> None:
        super().__init__()
        self.operation, self.axis, self.coeff = operation, axis, coeff

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(self.axis)
        if self.operation == "ASUM":
            x = torch.abs(x)
        elif self.operation == "SUMSQ":
            x = x * x
        out = x.sum(-1)
        return out if self.coeff == 1 else out * self.coeff

    def extra_repr(self) -> str:
        return f"{self.operation}, axis={self.axis}, coeff={self.coeff}"


class MVN(nn.Module):
    """Caffe MVN: subtract the mean, then divide by (standard deviation + eps), per item and
    channel (or per item across channels); the top has Caffe's 4 axes."""

    def __init__(self, across_channels: bool, normalize_variance: bool, eps: float) -> None:
        super().__init__()
        self.dims = (1, 2, 3) if across_channels else (2, 3)
        self.normalize_variance, self.eps = normalize_variance, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(*x.shape, *(1,) * (4 - x.dim()))
        centred = x - x.mean(self.dims, keepdim=True)
        if not self.normalize_variance:
            return centred
        std = torch.sqrt((centred * centred).mean(self.dims, keepdim=True))
        return centred / (std + self.eps)

    def extra_repr(self) -> str:
        return f"dims={self.dims}, normalize_variance={self.normalize_variance}, eps={self.eps}"


class SPP(nn.Module):
    """Caffe SPP: each pyramid level's pooling, flattened, concatenated."""

    def __init__(self, levels: list[nn.Module]) -> None:
        super().__init__()
        self.levels = nn.ModuleList(levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.flatten(level(x), 1) for level in self.levels], 1)
