"""Caffe layer name -> (Caffe layer type, module path) for each network.

Only layers with blobs appear. The tables are generated from the naming scheme
of the released prototxts rather than typed out (SENet-154 alone has 571 such
layers); `tests/test_caffe_mapping.py` checks them against the seven prototxts.

Naming scheme of the prototxts:

* Every convolution `X` without bias is followed by `X/bn` (BatchNorm: mean,
  variance, scale factor) and `X/bn/scale` (Scale: gamma, beta); all three land
  in one `Conv2d` + `BatchNorm2d` pair.
* Residual networks: stem `conv1/7x7_s2`, or for SENet-154 `conv1_1/3x3_s2`,
  `conv1_2/3x3`, `conv1_3/3x3`. Block `b` (1-based) of stage `s` (2..5) is
  `conv{s}_{b}_1x1_reduce`, `_3x3`, `_1x1_increase`, the SE pair
  `_1x1_down` / `_1x1_up` (convolutions with bias), and in each stage's first
  block the shortcut `_1x1_proj` (named so even where it is 3x3).
* SE-BN-Inception: stem `conv1/7x7_s2`, `conv2/3x3_reduce`, `conv2/3x3`; block
  `inception_{n}/1x1`, `/3x3_reduce`, `/3x3`, `/double3x3_reduce`,
  `/double3x3a`, `/double3x3b`, `/pool_proj`, SE pair `inception_{n}_1x1_down`
  / `_1x1_up`.
* The classifier is `classifier` (InnerProduct) everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from .inception import INCEPTION_BLOCKS, BlockConfig
from .senet import SPECS

CONVOLUTION, BATCHNORM, SCALE, INNER_PRODUCT = "Convolution", "BatchNorm", "Scale", "InnerProduct"

LayerMap = Mapping[str, tuple[str, str]]


def _conv_bn(caffe: str, conv: str, bn: str) -> dict[str, tuple[str, str]]:
    """A bias-free convolution with its BatchNorm and Scale layers."""
    return {caffe: (CONVOLUTION, conv), f"{caffe}/bn": (BATCHNORM, bn), f"{caffe}/bn/scale": (SCALE, bn)}


def _se(caffe_prefix: str, module: str) -> dict[str, tuple[str, str]]:
    """The SE pair of 1x1 convolutions with bias."""
    return {
        f"{caffe_prefix}_1x1_down": (CONVOLUTION, f"{module}.se.fc1"),
        f"{caffe_prefix}_1x1_up": (CONVOLUTION, f"{module}.se.fc2"),
    }


def _residual_names(model: str) -> dict[str, tuple[str, str]]:
    spec = SPECS[model]
    names: dict[str, tuple[str, str]] = {}
    if spec.deep_stem:
        for index, caffe in enumerate(("conv1_1/3x3_s2", "conv1_2/3x3", "conv1_3/3x3"), start=1):
            names |= _conv_bn(caffe, f"stem.conv{index}", f"stem.bn{index}")
    else:
        names |= _conv_bn("conv1/7x7_s2", "stem.conv1", "stem.bn1")
    for stage, depth in enumerate(spec.depths, start=1):
        for block in range(depth):
            caffe, module = f"conv{stage + 1}_{block + 1}", f"layer{stage}.{block}"
            for index, suffix in enumerate(("1x1_reduce", "3x3", "1x1_increase"), start=1):
                names |= _conv_bn(f"{caffe}_{suffix}", f"{module}.conv{index}", f"{module}.bn{index}")
            names |= _se(caffe, module)
            if block == 0:
                names |= _conv_bn(f"{caffe}_1x1_proj", f"{module}.downsample.conv", f"{module}.downsample.bn")
    names["classifier"] = (INNER_PRODUCT, "fc")
    return names


def _unit(caffe: str, module: str) -> dict[str, tuple[str, str]]:
    """A `ConvBNReLU` unit: its `conv` and `bn` children."""
    return _conv_bn(caffe, f"{module}.conv", f"{module}.bn")


def _inception_names() -> dict[str, tuple[str, str]]:
    names = _unit("conv1/7x7_s2", "stem.conv1")
    names |= _unit("conv2/3x3_reduce", "stem.conv2_reduce")
    names |= _unit("conv2/3x3", "stem.conv2")
    for block, config in INCEPTION_BLOCKS.items():
        caffe, module = f"inception_{block}", f"inception{block}"
        if isinstance(config, BlockConfig):
            names |= _unit(f"{caffe}/1x1", f"{module}.branch1x1")
        names |= _unit(f"{caffe}/3x3_reduce", f"{module}.branch3x3.reduce")
        names |= _unit(f"{caffe}/3x3", f"{module}.branch3x3.conv")
        names |= _unit(f"{caffe}/double3x3_reduce", f"{module}.branch_double3x3.reduce")
        names |= _unit(f"{caffe}/double3x3a", f"{module}.branch_double3x3.conv_a")
        names |= _unit(f"{caffe}/double3x3b", f"{module}.branch_double3x3.conv_b")
        if isinstance(config, BlockConfig):
            names |= _unit(f"{caffe}/pool_proj", f"{module}.branch_pool.proj")
        names |= _se(caffe, module)
    names["classifier"] = (INNER_PRODUCT, "fc")
    return names


CAFFE_LAYERS: Mapping[str, LayerMap] = MappingProxyType(
    {
        "se_bn_inception": MappingProxyType(_inception_names()),
        **{model: MappingProxyType(_residual_names(model)) for model in SPECS},
    }
)
