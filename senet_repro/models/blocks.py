"""Building blocks shared by the SE networks.

Every block mirrors a group of layers of the original Caffe deploy prototxts
(hujie-frank/SENet) so that the Caffe weights drop in one to one:

* Caffe `Convolution` (bias_term: false) + `BatchNorm` (use_global_stats) +
  `Scale` (bias_term: true) is one `nn.Conv2d(bias=False)` + one
  `nn.BatchNorm2d(eps=BN_EPS)`: the BatchNorm blobs become the running statistics
  and the Scale blobs become the affine weight and bias.
* Caffe pooling rounds the output size up (ceil) and clips the last window to
  start inside the padded input; `ceil_mode=True` in PyTorch has the same rule.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

# Caffe's BatchNorm default eps, 1e-5, is a float field: Caffe computes with its float32
# value 9.99999974738e-06 in Net<float> and Net<double> alike. The float64 model needs that
# value to agree with Net<double> to 1e-12 (1e-5 itself differs by 2.5e-13 absolute, which a
# low-variance channel amplifies past it); in float32 the two are the same number.
BN_EPS = float(np.float32(1e-5))


# Builds a block's normalisation as `norm_layer(channels, eps=BN_EPS)`: nn.BatchNorm2d (Caffe's
# BatchNorm + Scale) by default, torchvision's FrozenBatchNorm2d for detection backbones.
NormLayer = Callable[..., nn.Module]


def caffe_max_pool(kernel_size: int = 3, stride: int = 2, padding: int = 0) -> nn.MaxPool2d:
    """Max pooling with Caffe's ceil rounding (e.g. 112x112 -> 56x56 for 3x3/s2)."""
    return nn.MaxPool2d(kernel_size, stride, padding, ceil_mode=True)


def caffe_avg_pool(kernel_size: int = 3, stride: int = 1, padding: int = 1) -> nn.AvgPool2d:
    """Average pooling with Caffe's divisor and rounding.

    Caffe divides by the window clipped to the *padded* input,
    `(min(start + k, size + pad) - start)` per axis, i.e. padding counts but a
    window hanging past the padded edge does not. PyTorch's
    `count_include_pad=True` uses exactly that divisor, and `ceil_mode=True`
    gives Caffe's output size.
    """
    return nn.AvgPool2d(kernel_size, stride, padding, ceil_mode=True, count_include_pad=True)


class ConvBNReLU(nn.Module):
    """Convolution (no bias) -> BatchNorm -> ReLU: one Caffe conv/bn/scale/relu group."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = norm_layer(out_channels, eps=BN_EPS)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class SEModule(nn.Module):
    """Squeeze-and-Excitation: channel gate from globally pooled features.

    Caffe: global AVE pooling -> 1x1 conv "down" (bias) -> ReLU -> 1x1 conv "up"
    (bias) -> Sigmoid, then the input is scaled channel-wise by the gate (the
    `Axpy` layer's `a * X` in the ResNets, a two-bottom `Scale` in
    SE-BN-Inception). The squeezed width is given explicitly because Caffe
    spells it out per layer (channels // 16 in all seven networks).
    """

    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeezed, kernel_size=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeezed, channels, kernel_size=1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = x.mean(dim=(2, 3), keepdim=True)
        gate = self.sigmoid(self.fc2(self.relu(self.fc1(gate))))
        return x * gate


class Projection(nn.Module):
    """Projection shortcut: convolution (no bias) + BatchNorm, no ReLU.

    Caffe's `convN_1_1x1_proj`: 1x1 (SE-ResNet, SE-ResNeXt, and SENet-154's
    first stage where only the width changes) or 3x3 with pad 1 (SENet-154's
    strided stages), with the stage's stride.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False
        )
        self.bn = norm_layer(out_channels, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class SEBottleneck(nn.Module):
    """Residual bottleneck with SE: 1x1 -> 3x3 (grouped) -> 1x1 -> SE, + shortcut, ReLU.

    One class covers the three Caffe variants, which differ only in widths,
    groups and where the stride sits:

    * SE-ResNet: stride on the first 1x1 convolution (`stride_on_1x1=True`), as
      in the original Caffe ResNets (torchvision puts it on the 3x3).
    * SE-ResNeXt and SENet-154: stride on the grouped 3x3 convolution.

    Caffe's `Axpy(gate, residual, shortcut)` is `gate * residual + shortcut`,
    which is `se(residual) + shortcut` here.
    """

    def __init__(
        self,
        in_channels: int,
        reduce_channels: int,
        mid_channels: int,
        out_channels: int,
        *,
        stride: int,
        groups: int,
        stride_on_1x1: bool,
        downsample: Projection | None,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if stride_on_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_channels, reduce_channels, 1, stride_1x1, bias=False)
        self.bn1 = norm_layer(reduce_channels, eps=BN_EPS)
        self.conv2 = nn.Conv2d(
            reduce_channels, mid_channels, 3, stride_3x3, padding=1, groups=groups, bias=False
        )
        self.bn2 = norm_layer(mid_channels, eps=BN_EPS)
        self.conv3 = nn.Conv2d(mid_channels, out_channels, 1, bias=False)
        self.bn3 = norm_layer(out_channels, eps=BN_EPS)
        self.relu = nn.ReLU(inplace=True)
        self.se = SEModule(out_channels, out_channels // 16)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(self.se(out) + shortcut)


class ResNetStem(nn.Module):
    """7x7/2 convolution, BatchNorm, ReLU, 3x3/2 ceil max pool (Caffe `conv1/7x7_s2`, `pool1/3x3_s2`)."""

    out_channels = 64

    def __init__(self, norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(64, eps=BN_EPS)
        self.relu = nn.ReLU(inplace=True)
        self.pool = caffe_max_pool()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.relu(self.bn1(self.conv1(x))))


class DeepStem(nn.Module):
    """SENet-154 stem: three 3x3 convolutions (64/2, 64, 128), then a 3x3/2 ceil max pool."""

    out_channels = 128

    def __init__(self, norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)
        self.bn1 = norm_layer(64, eps=BN_EPS)
        self.conv2 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.bn2 = norm_layer(64, eps=BN_EPS)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1, bias=False)
        self.bn3 = norm_layer(128, eps=BN_EPS)
        self.relu = nn.ReLU(inplace=True)
        self.pool = caffe_max_pool()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.relu(self.bn3(self.conv3(x)))
        return self.pool(x)
