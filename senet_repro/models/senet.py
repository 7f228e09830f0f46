"""SE-ResNet-50/101/152, SE-ResNeXt-50/101 (32x4d) and SENet-154 as in the Caffe release.

All six share one layout (Caffe names in brackets): a stem [conv1*, pool1],
four stages of SE bottlenecks [conv2_x .. conv5_x] whose first block carries a
projection shortcut [convN_1_1x1_proj], global average pooling [pool5/7x7_s1],
and a linear classifier [classifier]. They differ in the stem, the bottleneck
widths and groups, where the stride sits, and the projection kernel; a
a keyword
`SENetSpec` beside each registered builder records exactly those differences.

Caffe's final pooling is a 7x7 AVE pool with stride 1, which at the 224x224
input the networks were released for is the global average over the 7x7 map.
We use global average pooling instead, so the networks also accept other input
sizes (Caffe's 7x7 pool would fail below 7x7 and give a spatial map above).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .blocks import DeepStem, NormLayer, Projection, ResNetStem, SEBottleneck
from .registry import register_model

# Bottleneck "planes" of the four stages; each block outputs 4 * planes channels.
STAGE_PLANES = (64, 128, 256, 512)


@dataclass(frozen=True, kw_only=True)
class SENetSpec:
    """What distinguishes one Caffe SE residual network from another (defaults: SE-ResNet)."""

    depths: tuple[int, int, int, int]  # blocks per stage (conv2_x .. conv5_x)
    groups: int = 1  # groups of the 3x3 convolution
    reduce_mult: int = 1  # width of the first 1x1 convolution / planes
    mid_mult: int = 1  # width of the 3x3 convolution / planes
    stride_on_1x1: bool = True  # True: SE-ResNet (Caffe ResNet); False: stride on the 3x3
    deep_stem: bool = False  # three 3x3 convolutions (SENet-154) instead of one 7x7
    proj_kernel: int = 1  # projection kernel of the strided stages (3 in SENet-154)
    drop_rate: float = 0.0  # Dropout before the classifier (SENet-154: 0.2)


SPECS: dict[str, SENetSpec] = {
    "se_resnet50": SENetSpec(depths=(3, 4, 6, 3)),
    "se_resnet101": SENetSpec(depths=(3, 4, 23, 3)),
    "se_resnet152": SENetSpec(depths=(3, 8, 36, 3)),
    # 32 groups x 4 channels per group per 64 planes -> widths 2 * planes.
    "se_resnext50_32x4d": SENetSpec(
        depths=(3, 4, 6, 3), groups=32, reduce_mult=2, mid_mult=2, stride_on_1x1=False
    ),
    "se_resnext101_32x4d": SENetSpec(
        depths=(3, 4, 23, 3), groups=32, reduce_mult=2, mid_mult=2, stride_on_1x1=False
    ),
    "senet154": SENetSpec(
        depths=(3, 8, 36, 3),
        groups=64,
        reduce_mult=2,
        mid_mult=4,
        stride_on_1x1=False,
        deep_stem=True,
        proj_kernel=3,
        drop_rate=0.2,
    ),
}


class SENet(nn.Module):
    """A Caffe SE residual network; see `SENetSpec` and the constructors below.

    `forward_features` returns the last feature map (N x 2048 x H/32 x W/32);
    `forward` returns logits (Caffe's `classifier` output, before its Softmax).
    Class indices follow the Caffe release: the ILSVRC2012 devkit order.
    """

    def __init__(
        self, spec: SENetSpec, num_classes: int = 1000, norm_layer: NormLayer = nn.BatchNorm2d
    ) -> None:
        super().__init__()
        self.stem = DeepStem(norm_layer) if spec.deep_stem else ResNetStem(norm_layer)
        in_channels = self.stem.out_channels
        stages = []
        for index, (planes, depth) in enumerate(zip(STAGE_PLANES, spec.depths)):
            stride = 1 if index == 0 else 2
            stages.append(self._make_stage(spec, in_channels, planes, depth, stride, norm_layer))
            in_channels = 4 * planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.num_features = in_channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(spec.drop_rate) if spec.drop_rate > 0 else nn.Identity()
        self.fc = nn.Linear(in_channels, num_classes)

    @staticmethod
    def _make_stage(
        spec: SENetSpec, in_channels: int, planes: int, depth: int, stride: int, norm_layer: NormLayer
    ) -> nn.Sequential:
        out_channels = 4 * planes
        # Caffe: stride-1 stage -> 1x1 projection (only the width changes);
        # strided stages -> `proj_kernel` x `proj_kernel` projection.
        proj_kernel = spec.proj_kernel if stride > 1 else 1
        blocks = []
        for block_index in range(depth):
            first = block_index == 0
            blocks.append(
                SEBottleneck(
                    in_channels if first else out_channels,
                    spec.reduce_mult * planes,
                    spec.mid_mult * planes,
                    out_channels,
                    stride=stride if first else 1,
                    groups=spec.groups,
                    stride_on_1x1=spec.stride_on_1x1,
                    downsample=(
                        Projection(in_channels, out_channels, proj_kernel, stride, norm_layer)
                        if first
                        else None
                    ),
                    norm_layer=norm_layer,
                )
            )
        return nn.Sequential(*blocks)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.forward_features(x)).flatten(1)
        return self.fc(self.dropout(x))


@register_model
def se_resnet50(num_classes: int = 1000, norm_layer: NormLayer = nn.BatchNorm2d) -> SENet:
    """SE-ResNet-50 (Caffe `SE-ResNet-50.prototxt`)."""
    return SENet(SPECS["se_resnet50"], num_classes, norm_layer)


@register_model
def se_resnet101(num_classes: int = 1000, norm_layer: NormLayer = nn.BatchNorm2d) -> SENet:
    """SE-ResNet-101 (Caffe `SE-ResNet-101.prototxt`)."""
    return SENet(SPECS["se_resnet101"], num_classes, norm_layer)


@register_model
def se_resnet152(num_classes: int = 1000, norm_layer: NormLayer = nn.BatchNorm2d) -> SENet:
    """SE-ResNet-152 (Caffe `SE-ResNet-152.prototxt`)."""
    return SENet(SPECS["se_resnet152"], num_classes, norm_layer)


@register_model
def se_resnext50_32x4d(num_classes: int = 1000, norm_layer: NormLayer = nn.BatchNorm2d) -> SENet:
    """SE-ResNeXt-50 (32 x 4d) (Caffe `SE-ResNeXt-50.prototxt`)."""
    return SENet(SPECS["se_resnext50_32x4d"], num_classes, norm_layer)


@register_model
def se_resnext101_32x4d(num_classes: int = 1000, norm_layer: NormLayer = nn.BatchNorm2d) -> SENet:
    """SE-ResNeXt-101 (32 x 4d) (Caffe `SE-ResNeXt-101.prototxt`)."""
    return SENet(SPECS["se_resnext101_32x4d"], num_classes, norm_layer)


@register_model
def senet154(num_classes: int = 1000, norm_layer: NormLayer = nn.BatchNorm2d) -> SENet:
    """SENet-154 (Caffe `SENet-154.prototxt`, released as `SENet.caffemodel`)."""
    return SENet(SPECS["senet154"], num_classes, norm_layer)
