"""SE-BN-Inception as in the Caffe release (`SE-BN-Inception.prototxt`).

BN-Inception (Inception v2 with BatchNorm after every convolution) with an SE
gate on the concatenated output of each Inception block. In Caffe the gate is
applied by a `Reshape` (N x C) and a two-bottom `Scale` (axis 0, no bias), i.e.
`concat * gate`; there is no ReLU after it.

Two block kinds occur: the regular one (1x1, 3x3, double 3x3 and pool+1x1
branches, pool = AVE 3x3/1 pad 1, except MAX in `inception_5b`) and the
grid-reduction one (`inception_3c`, `inception_4e`: stride-2 3x3 and double-3x3
branches next to a stride-2 MAX pool without projection). The reduction blocks
need the incoming map to be even-sized (as in Caffe, whose concat would fail
otherwise); 224x224 and 64x64 inputs satisfy that.

Final pooling: global average pooling, equal to Caffe's 7x7 AVE pool at the
224x224 release input size (see `senet.py`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import torch
from torch import nn

from .blocks import ConvBNReLU, NormLayer, SEModule, caffe_avg_pool, caffe_max_pool
from .registry import register_model


def _conv_branches(
    in_channels: int,
    ch3x3_reduce: int,
    ch3x3: int,
    ch_double3x3_reduce: int,
    ch_double3x3: int,
    stride: int,
    norm_layer: NormLayer,
) -> tuple[nn.Sequential, nn.Sequential]:
    """The 3x3 and double-3x3 branches every block has; `stride` on their last convolutions."""
    branch3x3 = nn.Sequential(
        OrderedDict(
            reduce=ConvBNReLU(in_channels, ch3x3_reduce, 1, norm_layer=norm_layer),
            conv=ConvBNReLU(ch3x3_reduce, ch3x3, 3, stride, padding=1, norm_layer=norm_layer),
        )
    )
    branch_double3x3 = nn.Sequential(
        OrderedDict(
            reduce=ConvBNReLU(in_channels, ch_double3x3_reduce, 1, norm_layer=norm_layer),
            conv_a=ConvBNReLU(ch_double3x3_reduce, ch_double3x3, 3, padding=1, norm_layer=norm_layer),
            conv_b=ConvBNReLU(ch_double3x3, ch_double3x3, 3, stride, padding=1, norm_layer=norm_layer),
        )
    )
    return branch3x3, branch_double3x3


class SEInception(nn.Module):
    """A BN-Inception block plus SE: the branches' outputs concatenated in Caffe's order, then gated."""

    se: SEModule
    out_channels: int

    def branches(self) -> list[nn.Module]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.se(torch.cat([branch(x) for branch in self.branches()], dim=1))


class SEInceptionBlock(SEInception):
    """Stride 1: 1x1, 3x3, double 3x3, and a 3x3/1 avg or max pool with a 1x1 projection."""

    def __init__(
        self,
        in_channels: int,
        *,
        ch1x1: int,
        ch3x3_reduce: int,
        ch3x3: int,
        ch_double3x3_reduce: int,
        ch_double3x3: int,
        pool: str,
        pool_proj: int,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool is 'avg' or 'max', not {pool!r}")
        self.branch1x1 = ConvBNReLU(in_channels, ch1x1, 1, norm_layer=norm_layer)
        self.branch3x3, self.branch_double3x3 = _conv_branches(
            in_channels, ch3x3_reduce, ch3x3, ch_double3x3_reduce, ch_double3x3, 1, norm_layer
        )
        pool_layer = caffe_avg_pool(3, 1, 1) if pool == "avg" else caffe_max_pool(3, 1, 1)
        self.branch_pool = nn.Sequential(
            OrderedDict(pool=pool_layer, proj=ConvBNReLU(in_channels, pool_proj, 1, norm_layer=norm_layer))
        )
        self.out_channels = ch1x1 + ch3x3 + ch_double3x3 + pool_proj
        self.se = SEModule(self.out_channels, self.out_channels // 16)

    def branches(self) -> list[nn.Module]:
        return [self.branch1x1, self.branch3x3, self.branch_double3x3, self.branch_pool]


class SEInceptionReduction(SEInception):
    """Grid reduction (stride 2): strided 3x3 and double 3x3, and a 3x3/2 max pool of the input."""

    def __init__(
        self,
        in_channels: int,
        *,
        ch3x3_reduce: int,
        ch3x3: int,
        ch_double3x3_reduce: int,
        ch_double3x3: int,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.branch3x3, self.branch_double3x3 = _conv_branches(
            in_channels, ch3x3_reduce, ch3x3, ch_double3x3_reduce, ch_double3x3, 2, norm_layer
        )
        self.branch_pool = nn.Sequential(OrderedDict(pool=caffe_max_pool(3, 2)))
        self.out_channels = ch3x3 + ch_double3x3 + in_channels
        self.se = SEModule(self.out_channels, self.out_channels // 16)

    def branches(self) -> list[nn.Module]:
        return [self.branch3x3, self.branch_double3x3, self.branch_pool]


class InceptionStem(nn.Module):
    """conv1 7x7/2 -> pool1 3x3/2 -> conv2 1x1 reduce -> conv2 3x3 -> pool2 3x3/2 (ceil pools)."""

    def __init__(self, norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU(3, 64, 7, stride=2, padding=3, norm_layer=norm_layer)
        self.pool1 = caffe_max_pool()
        self.conv2_reduce = ConvBNReLU(64, 64, 1, norm_layer=norm_layer)
        self.conv2 = ConvBNReLU(64, 192, 3, padding=1, norm_layer=norm_layer)
        self.pool2 = caffe_max_pool()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv1(x))
        return self.pool2(self.conv2(self.conv2_reduce(x)))


class BlockConfig(NamedTuple):
    """Branch widths of a stride-1 block, read off SE-BN-Inception.prototxt."""

    ch1x1: int
    ch3x3_reduce: int
    ch3x3: int
    ch_double3x3_reduce: int
    ch_double3x3: int
    pool: str  # the 3x3/1 pad 1 pool: "avg" or "max"
    pool_proj: int


class ReductionConfig(NamedTuple):
    """Branch widths of a grid-reduction block."""

    ch3x3_reduce: int
    ch3x3: int
    ch_double3x3_reduce: int
    ch_double3x3: int


# Caffe block name (inception_<name>) -> configuration, in network order.
INCEPTION_BLOCKS: dict[str, BlockConfig | ReductionConfig] = {
    "3a": BlockConfig(64, 64, 64, 64, 96, "avg", 32),
    "3b": BlockConfig(64, 64, 96, 64, 96, "avg", 64),
    "3c": ReductionConfig(128, 160, 64, 96),
    "4a": BlockConfig(224, 64, 96, 96, 128, "avg", 128),
    "4b": BlockConfig(192, 96, 128, 96, 128, "avg", 128),
    "4c": BlockConfig(160, 128, 160, 128, 160, "avg", 128),
    "4d": BlockConfig(96, 128, 192, 160, 192, "avg", 128),
    "4e": ReductionConfig(128, 192, 192, 256),
    "5a": BlockConfig(352, 192, 320, 160, 224, "avg", 128),
    "5b": BlockConfig(352, 192, 320, 192, 224, "max", 128),
}


class SEBNInception(nn.Module):
    """SE-BN-Inception; `forward_features` gives the 1024-channel last map, `forward` logits."""

    def __init__(self, num_classes: int = 1000, norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        self.stem = InceptionStem(norm_layer)
        channels = 192
        for name, config in INCEPTION_BLOCKS.items():
            block: SEInception = (
                SEInceptionBlock(channels, **config._asdict(), norm_layer=norm_layer)
                if isinstance(config, BlockConfig)
                else SEInceptionReduction(channels, **config._asdict(), norm_layer=norm_layer)
            )
            self.add_module(f"inception{name}", block)
            channels = block.out_channels
        self.num_features = channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for name in INCEPTION_BLOCKS:
            x = getattr(self, f"inception{name}")(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.forward_features(x)).flatten(1))


@register_model
def se_bn_inception(num_classes: int = 1000, norm_layer: NormLayer = nn.BatchNorm2d) -> SEBNInception:
    """SE-BN-Inception (Caffe `SE-BN-Inception.prototxt`)."""
    return SEBNInception(num_classes, norm_layer)
