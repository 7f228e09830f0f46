"""The few nn.Modules Caffe semantics need beyond torch.nn's own.

Each is small and exported by name into the generated graph, so a converted
net reads as `self.conv2_1_1x1_down_scale(...)` calling one of these.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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

    def __init__(
        self,
        mode: str,
        kernel: list[int],
        stride: list[int],
        pad: list[int],
        in_size: list[int],
        out_size: list[int],
    ) -> None:
        super().__init__()
        self.mode, self.kernel, self.stride, self.pad = mode, kernel, stride, pad
        self.in_size, self.out_size = in_size, out_size
        counts = [
            torch.clamp(torch.arange(o) * s - p + k, max=n + p) - (torch.arange(o) * s - p)
            for n, k, s, p, o in zip(in_size, kernel, stride, pad, out_size)
        ]
        self.register_buffer("divisor", (counts[0][:, None] * counts[1][None, :]).float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        extra = [
            (o - 1) * s + k - n - p
            for n, k, s, p, o in zip(self.in_size, self.kernel, self.stride, self.pad, self.out_size)
        ]
        # Caffe's MAX starts from -FLT_MAX in Net<float> and Net<double> alike
        # (pooling_layer.cpp), which an empty window (past the input) keeps.
        fill = torch.finfo(torch.float32).min if self.mode == "MAX" else 0.0
        padded = F.pad(x, (self.pad[1], max(extra[1], 0), self.pad[0], max(extra[0], 0)), value=fill)
        padded = padded[
            ..., : self.pad[0] + self.in_size[0] + extra[0], : self.pad[1] + self.in_size[1] + extra[1]
        ]
        if self.mode == "MAX":
            return F.max_pool2d(padded, self.kernel, self.stride)
        summed = F.avg_pool2d(padded, self.kernel, self.stride, divisor_override=1)
        return summed / self.divisor.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.mode}, kernel={self.kernel}, stride={self.stride}, pad={self.pad}"


class LRNWithinChannel(nn.Module):
    """Caffe LRN WITHIN_CHANNEL: x / (1 + alpha * avg_{size x size}(x^2))^beta."""

    def __init__(self, size: int, alpha: float, beta: float) -> None:
        super().__init__()
        self.size, self.alpha, self.beta = size, alpha, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = (self.size - 1) // 2
        mean_square = F.avg_pool2d(x * x, self.size, 1, pad, count_include_pad=True)
        return x * (1 + self.alpha * mean_square).pow(-self.beta)
