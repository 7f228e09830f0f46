"""Our PyTorch SE networks -> Caffe deploy files in the layout of the original release.

The deploy NetParameter is generated from the PyTorch module structure, never
copied from the released text: widths, kernels, strides, pads, groups, pooling,
dropout and the classifier come from the modules, walked in registration order,
which is the release's layer order (a block's projection shortcut, registered
last, follows its SE branch there too). The names of the layers with blobs come
from `caffe_names` (module path -> Caffe layer); the blob-less layers follow the
release's naming rules, spelled out below. Comparing the result with the seven
released prototxts (tests/test_torch2caffe.py) is therefore a layer-by-layer
proof that the PyTorch definitions are the original networks.

Conventions of the release that the generator reproduces:

* Convolution: `num_output`, `bias_term: false` for the BatchNorm'd ones, `pad`
  only when non-zero, `kernel_size`, `group` only when not 1; `stride` always in
  the residual nets and on every SE convolution, in SE-BN-Inception's other
  convolutions only when not 1. Each is followed by `X/bn` (BatchNorm,
  use_global_stats) and `X/bn/scale` (Scale with bias), all in place.
* ReLU after convolution `A/B` is `A/relu_B`, after a slash-free `X` it is
  `X/relu`; BN-Inception keeps GoogLeNet's names, which drop the stride suffix
  (`conv1/relu_7x7` after `conv1/7x7_s2`).
* Pooling `poolN/KxK_sS` in the stem (N from the preceding convolution) and at
  the end (N of the last stage; K the final map size at 224x224, i.e. Caffe's
  7x7 AVE pool, where PyTorch pools globally); `inception_X/pool` (stride 1) or
  `inception_X/pool/3x3_s2` inside Inception blocks; `pad` only when non-zero.
* SE branch of block P: `P_global_pool` (global AVE, engine CAFFE), `P_1x1_down`,
  `P_1x1_down/relu`, `P_1x1_up`, `P_prob` (Sigmoid, in place), then `Axpy` named
  P (ResNets) or `P_prob_reshape` + `P_scale` -> `P/output` (SE-BN-Inception).
* SENet-154: `pool5/dropout_7x7_s1` in place before the classifier.

Without weights, `random_state_dict` gives seeded random weights that keep the
deep nets well-conditioned: `prototxt.random_weights.random_blobs` on the
generated net (He-scaled convolutions, damped residual scales), BatchNorm
statistics calibrated on a seeded image batch by `converter.calibrate`, then
mapped through `caffe_to_state_dict`; the same path real Caffe weights take.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from prototxt import InputError, build_net, caffe_pb2, portable_net, write_caffemodel, write_prototxt
from prototxt.atomic import atomic_paths

from .models import (
    caffe_layer_map,
    caffe_to_state_dict,
    get_model,
    resolve_name,
    state_dict_to_caffe,
    weights_for,
)
from .models.blocks import BN_EPS, ConvBNReLU, SEBottleneck, SEModule
from .models.caffe_names import BATCHNORM, CONVOLUTION, INNER_PRODUCT, SCALE
from .models.inception import SEInception
from .models.senet import SENet

INPUT_SHAPE = (1, 3, 224, 224)  # the release's deploy input
CALIBRATION_BATCH = 1  # images for the BatchNorm statistics of random weights


_Pool = nn.MaxPool2d | nn.AvgPool2d


def _square(value: int | str | tuple[int, ...], what: str) -> int:
    """The one size of a square kernel/stride/pad (Caffe's scalar form)."""
    if isinstance(value, str):  # torch's padding="same"/"valid"
        raise ValueError(f"{what} {value!r} has no Caffe form")
    values = {value} if isinstance(value, int) else set(value)
    if len(values) != 1:
        raise ValueError(f"non-square {what} {value} has no scalar Caffe form")
    return int(values.pop())


def _relu_name(blob: str, *, drop_stride: bool = False) -> str:
    """`A/relu_B` after `A/B`, `X/relu` after `X` (see the module docstring)."""
    if "/" not in blob:
        return f"{blob}/relu"
    head, tail = blob.rsplit("/", 1)
    if drop_stride:
        tail = re.sub(r"_s\d+$", "", tail)
    return f"{head}/relu_{tail}"


def _stage_number(name: str) -> str:
    """`1` of `conv1_3/3x3`, `5` of `conv5_3` or `inception_5b`: the pooling's number."""
    match = re.search(r"\d+", name)
    if match is None:
        raise ValueError(f"no stage number in Caffe layer name {name!r}")
    return match.group()


class _Emitter:
    """Appends the Caffe layers of one network's modules to a NetParameter."""

    def __init__(self, model_name: str, model: nn.Module) -> None:
        self.model = model
        self.residual = isinstance(model, SENet)
        self.paths = {id(module): path for path, module in model.named_modules()}
        self.caffe = {(kind, path): name for name, (kind, path) in caffe_layer_map(model_name).items()}
        name = weights_for(model_name).net_name
        self.net = caffe_pb2.NetParameter(name=name)
        self.last_conv = ""

    def layer(self, name: str, kind: str, bottoms: list[str], tops: list[str]) -> caffe_pb2.LayerParameter:
        return self.net.layer.add(name=name, type=kind, bottom=bottoms, top=tops)

    def name_of(self, kind: str, module: nn.Module) -> str:
        return self.caffe[(kind, self.paths[id(module)])]

    def conv(self, conv: nn.Conv2d, bottom: str, *, explicit_stride: bool) -> str:
        name = self.name_of(CONVOLUTION, conv)
        param = self.layer(name, "Convolution", [bottom], [name]).convolution_param
        param.num_output = conv.out_channels
        if conv.bias is None:
            param.bias_term = False
        pad, stride = _square(conv.padding, "pad"), _square(conv.stride, "stride")
        if pad:
            param.pad.append(pad)
        param.kernel_size.append(_square(conv.kernel_size, "kernel"))
        if conv.groups != 1:
            param.group = conv.groups
        if explicit_stride or stride != 1:
            param.stride.append(stride)
        self.last_conv = name
        return name

    def conv_bn(self, conv: nn.Conv2d, bn: nn.Module, bottom: str, *, relu: bool) -> str:
        """Convolution, BatchNorm, Scale (and ReLU), the last three in place."""
        if not isinstance(bn, nn.BatchNorm2d):  # a block built with another norm_layer
            raise TypeError(f"Caffe's BatchNorm + Scale are an nn.BatchNorm2d, not a {type(bn).__name__}")
        blob = self.conv(conv, bottom, explicit_stride=self.residual)
        norm = self.layer(self.name_of(BATCHNORM, bn), "BatchNorm", [blob], [blob])
        norm.batch_norm_param.use_global_stats = True
        if bn.eps != BN_EPS:  # Caffe's default, so written only when a model differs
            norm.batch_norm_param.eps = bn.eps
        self.layer(self.name_of(SCALE, bn), "Scale", [blob], [blob]).scale_param.bias_term = True
        if relu:
            self.layer(_relu_name(blob, drop_stride=not self.residual), "ReLU", [blob], [blob])
        return blob

    def unit(self, unit: ConvBNReLU, bottom: str) -> str:
        return self.conv_bn(unit.conv, unit.bn, bottom, relu=True)

    def pool(self, name: str, pool: _Pool, bottom: str) -> str:
        param = self.layer(name, "Pooling", [bottom], [name]).pooling_param
        param.pool = (
            caffe_pb2.PoolingParameter.MAX
            if isinstance(pool, nn.MaxPool2d)
            else caffe_pb2.PoolingParameter.AVE
        )
        param.kernel_size = _square(pool.kernel_size, "kernel")
        param.stride = _square(pool.stride, "stride")
        pad = _square(pool.padding, "pad")
        if pad:
            param.pad = pad
        return name

    @staticmethod
    def pool_suffix(pool: _Pool) -> str:
        kernel = _square(pool.kernel_size, "kernel")
        return f"{kernel}x{kernel}_s{_square(pool.stride, 'stride')}"

    def stem(self, stem: nn.Module, bottom: str) -> str:
        """Stem children in order: conv (+ its BatchNorm), ConvBNReLU units, max pools."""
        pending: nn.Conv2d | None = None
        for child in stem.children():
            if isinstance(child, nn.Conv2d):
                pending = child
            elif isinstance(child, nn.BatchNorm2d) and pending is not None:
                bottom, pending = self.conv_bn(pending, child, bottom, relu=True), None
            elif isinstance(child, ConvBNReLU):
                bottom = self.unit(child, bottom)
            elif isinstance(child, nn.MaxPool2d):
                name = f"pool{_stage_number(self.last_conv)}/{self.pool_suffix(child)}"
                bottom = self.pool(name, child, bottom)
        return bottom

    def se(self, se: SEModule, bottom: str) -> tuple[str, str]:
        """The SE branch on `bottom`; returns the block prefix and the gate blob."""
        prefix = self.name_of(CONVOLUTION, se.fc1).removesuffix("_1x1_down")
        pooled = f"{prefix}_global_pool"
        param = self.layer(pooled, "Pooling", [bottom], [pooled]).pooling_param
        param.pool = caffe_pb2.PoolingParameter.AVE
        param.engine = caffe_pb2.PoolingParameter.CAFFE
        param.global_pooling = True
        down = self.conv(se.fc1, pooled, explicit_stride=True)
        self.layer(_relu_name(down), "ReLU", [down], [down])
        gate = self.conv(se.fc2, down, explicit_stride=True)
        self.layer(f"{prefix}_prob", "Sigmoid", [gate], [gate])
        return prefix, gate

    def bottleneck(self, block: SEBottleneck, bottom: str) -> str:
        out = self.conv_bn(block.conv1, block.bn1, bottom, relu=True)
        out = self.conv_bn(block.conv2, block.bn2, out, relu=True)
        residual = self.conv_bn(block.conv3, block.bn3, out, relu=False)
        prefix, gate = self.se(block.se, residual)
        shortcut = bottom
        if block.downsample is not None:
            shortcut = self.conv_bn(block.downsample.conv, block.downsample.bn, bottom, relu=False)
        self.layer(prefix, "Axpy", [gate, residual, shortcut], [prefix])
        self.layer(_relu_name(prefix), "ReLU", [prefix], [prefix])
        return prefix

    def inception(self, block: SEInception, bottom: str) -> str:
        prefix = self.name_of(CONVOLUTION, block.se.fc1).removesuffix("_1x1_down")
        branches = []
        for branch in block.branches():
            blob = bottom
            for child in branch.children() if isinstance(branch, nn.Sequential) else [branch]:
                if isinstance(child, ConvBNReLU):
                    blob = self.unit(child, blob)
                elif isinstance(child, _Pool):
                    stride = _square(child.stride, "stride")
                    name = f"{prefix}/pool" + ("" if stride == 1 else f"/{self.pool_suffix(child)}")
                    blob = self.pool(name, child, blob)
                else:
                    raise TypeError(f"an inception branch holds a {type(child).__name__}")
            branches.append(blob)
        concat = f"{prefix}/concat"
        self.layer(concat, "Concat", branches, [concat])
        _, gate = self.se(block.se, concat)
        flat = f"{prefix}_prob_reshape"
        self.layer(flat, "Reshape", [gate], [flat]).reshape_param.shape.dim.extend([0, 0])
        out = f"{prefix}/output"
        scale = self.layer(f"{prefix}_scale", "Scale", [concat, flat], [out]).scale_param
        scale.axis = 0
        scale.bias_term = False
        return out

    def head(self, bottom: str) -> str:
        """Caffe's final KxK/1 AVE pool, K the last map's size (Caffe's shape rules, 224x224)."""
        size = build_net(self.net).blob_shapes[bottom][-1]
        name = f"pool{_stage_number(bottom)}/{size}x{size}_s1"
        param = self.layer(name, "Pooling", [bottom], [name]).pooling_param
        param.pool = caffe_pb2.PoolingParameter.AVE
        param.kernel_size = size
        param.stride = 1
        return name

    def build(self) -> caffe_pb2.NetParameter:
        data = self.layer("data", "Input", [], ["data"])
        data.input_param.shape.add(dim=INPUT_SHAPE)
        blob = "data"
        for name, child in self.model.named_children():
            if name == "stem":
                blob = self.stem(child, blob)
            elif isinstance(child, nn.Sequential):
                for block in child:
                    if not isinstance(block, SEBottleneck):
                        raise TypeError(f"{name} holds a {type(block).__name__}, not an SEBottleneck")
                    blob = self.bottleneck(block, blob)
            elif isinstance(child, SEInception):
                blob = self.inception(child, blob)
            elif isinstance(child, nn.AdaptiveAvgPool2d):
                blob = self.head(blob)
            elif isinstance(child, nn.Dropout):
                head, tail = blob.rsplit("/", 1)
                self.layer(
                    f"{head}/dropout_{tail}", "Dropout", [blob], [blob]
                ).dropout_param.dropout_ratio = child.p
            elif isinstance(child, nn.Linear):
                name = self.name_of(INNER_PRODUCT, child)
                param = self.layer(name, "InnerProduct", [blob], [name]).inner_product_param
                param.num_output = child.out_features
                if child.bias is None:
                    param.bias_term = False
                blob = name
            elif not isinstance(child, nn.Identity):
                raise TypeError(f"no Caffe form for module {name} ({type(child).__name__})")
        self.layer("prob", "Softmax", [blob], ["prob"])
        return self.net


def caffe_net(model_name: str, *, portable: bool = False) -> caffe_pb2.NetParameter:
    """The deploy NetParameter of `model_name` in the release's layout.

    `portable=True` writes each Axpy as Reshape + Scale + Eltwise, for stock Caffe
    and OpenCV (which swaps Axpy's operands); the blobs are the same either way.
    """
    model = resolve_name(model_name)
    with torch.device("meta"):
        module = get_model(model)
    net = _Emitter(model, module).build()
    return portable_net(net) if portable else net


@torch.no_grad()
def random_state_dict(model_name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded random weights with calibrated BatchNorm statistics (see the module docstring)."""
    from converter.calibrate import random_calibrated_blobs

    if seed < 0:
        raise InputError(f"the seed must be a non-negative integer, not {seed}")
    model = resolve_name(model_name)
    net = build_net(caffe_net(model))
    return caffe_to_state_dict(model, random_calibrated_blobs(net, seed, CALIBRATION_BATCH))


def _header(model: str) -> str:
    mean = ", ".join(f"{value:g}" for value in weights_for(model).mean_bgr)
    return f"mean_value: {mean}\ngenerated by senet-convert torch2caffe from senet_repro ({model})"


def export_caffe(
    model_name: str,
    state_dict: Mapping[str, torch.Tensor] | None,
    out_dir: str | os.PathLike[str],
    portable: bool = False,
    *,
    seed: int = 0,
) -> tuple[Path, Path]:
    """Write the release-layout prototxt and a .caffemodel for `state_dict`; return both paths.

    `state_dict=None` writes seeded random weights (`random_state_dict`). BatchNorm
    blobs carry a scale factor of 1. The caffemodel embeds the release net (with
    Axpy) even when `portable` asks for the portable prototxt: Caffe and OpenCV
    match blobs by layer name, so one caffemodel serves both prototxts. Files
    are named as in the release (`SE-ResNet-50.prototxt`, `SENet.caffemodel`,
    `.portable.prototxt` for the portable form). Both are written to temporary
    files and only then renamed into place, so a failure while writing leaves
    nothing behind.
    """
    model = resolve_name(model_name)
    directory = Path(out_dir)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{directory} exists and is not a directory")
    if state_dict is None:
        state_dict = random_state_dict(model, seed)
    blobs = state_dict_to_caffe(model, state_dict)
    release = caffe_net(model)
    prototxt, caffemodel = (directory / name for name in release_file_names(model, portable))
    created = not directory.exists()
    try:
        # Both files appear together, only once both are complete.
        with atomic_paths([prototxt, caffemodel]) as (prototxt_tmp, caffemodel_tmp):
            write_prototxt(
                portable_net(release) if portable else release, prototxt_tmp, header=_header(model)
            )
            write_caffemodel(caffemodel_tmp, release, blobs)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise
    return prototxt, caffemodel


def release_file_names(model_name: str, portable: bool = False) -> tuple[str, str]:
    """The release's prototxt and caffemodel names (`.portable.prototxt` for the portable form)."""
    info = weights_for(resolve_name(model_name))
    prototxt = info.prototxt.replace(".prototxt", ".portable.prototxt") if portable else info.prototxt
    return prototxt, info.caffemodel


__all__ = ["INPUT_SHAPE", "caffe_net", "export_caffe", "random_state_dict", "release_file_names"]
