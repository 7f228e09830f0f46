"""SE backbones with a feature pyramid for torchvision's detection models.

Mirrors torchvision's `resnet_fpn_backbone` for the six residual SE networks
(SE-BN-Inception has no four-stage layout to pyramid over): the stages
`layer1..layer4` (strides 4, 8, 16, 32) feed `torchvision.ops.FeaturePyramidNetwork`
through `IntermediateLayerGetter`; BatchNorm becomes `FrozenBatchNorm2d`
(ImageNet statistics kept, as is usual for detection with small batches); the
first stages are frozen. Weights come from a checkpoint written by
`senet-convert caffe2torch` (either layout, either class order: the classifier
is dropped), without `--fold-normalisation`: the detection transform below
reproduces the Caffe input exactly, which a folded first convolution would not
at the image border (a checkpoint whose header says it is folded is refused).

Input convention. The Caffe weights expect BGR, 0..255 minus (104, 117, 123).
torchvision's detection models take RGB images in 0..1 and normalise them in
`GeneralizedRCNNTransform` with `image_mean` / `image_std`. With
`rgb_input=True` (the default) the stem convolution's input channels are
reversed, which is exact, so the backbone takes RGB; pass `CAFFE_IMAGE_MEAN`
and `CAFFE_IMAGE_STD` as `image_mean` / `image_std` and the transform computes
`255 * x - (123, 117, 104)`, the Caffe preprocessing in RGB order.

    from senet_repro.detection import CAFFE_IMAGE_MEAN, CAFFE_IMAGE_STD, se_backbone_with_fpn
    from torchvision.models.detection import FasterRCNN
    backbone = se_backbone_with_fpn("se_resnext50_32x4d", checkpoint="se_resnext50.pth")
    model = FasterRCNN(backbone, num_classes=91, image_mean=CAFFE_IMAGE_MEAN, image_std=CAFFE_IMAGE_STD)
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Sequence
from typing import Any

import torch
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from prototxt import ConversionError

from .models import SENet, get_model, read_checkpoint, resolve_name
from .models.blocks import NormLayer
from .transforms import CAFFE_MEAN_BGR

# For RGB images in 0..1 (torchvision's detection convention): (x - mean) / std = 255 x - mean_rgb.
CAFFE_IMAGE_MEAN = tuple(mean / 255.0 for mean in reversed(CAFFE_MEAN_BGR))  # RGB, on 0..1
CAFFE_IMAGE_STD = (1.0 / 255.0, 1.0 / 255.0, 1.0 / 255.0)

# Frozen from the input side; trainable_layers=k keeps the last k of these trainable.
_STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")


def se_backbone_with_fpn(
    name: str,
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    trainable_layers: int = 3,
    returned_layers: Sequence[int] = (1, 2, 3, 4),
    norm_layer: NormLayer = FrozenBatchNorm2d,
    extra_blocks: ExtraFPNBlock | None = None,
    out_channels: int = 256,
    rgb_input: bool = True,
) -> BackboneWithFPN:
    """An SE network as a detection backbone: `{"0": P2, ..., "pool": P6}` feature maps.

    `trainable_layers` (0..5) counts stages from the output end (3: layer2..4
    train, stem and layer1 frozen, as in torchvision). `returned_layers` are
    stage numbers 1..4. `norm_layer` builds every normalisation (pass `nn.BatchNorm2d`
    to keep it). `extra_blocks` default to a max-pooled P6, as Faster R-CNN
    uses; RetinaNet wants `LastLevelP6P7(256, 256)` with `returned_layers=(2, 3, 4)`.
    """
    model = resolve_name(name)
    if not 0 <= trainable_layers <= len(_STAGES):
        raise ValueError(f"trainable_layers must be in 0..{len(_STAGES)}, got {trainable_layers}")
    returned = sorted(set(returned_layers))
    if not returned or returned[0] < 1 or returned[-1] > 4:
        raise ValueError(f"returned_layers must be stage numbers in 1..4, got {list(returned_layers)}")
    # With a checkpoint, build on the meta device: the random initialisation would be overwritten.
    with torch.device("meta") if checkpoint is not None else contextlib.nullcontext():
        network = get_model(model, norm_layer=norm_layer)
    if not isinstance(network, SENet):
        raise ValueError(
            f"{model} has no four-stage residual layout; detection backbones are "
            "built from the SE-ResNet, SE-ResNeXt and SENet-154 networks"
        )
    if checkpoint is not None:
        loaded = read_checkpoint(checkpoint, model)
        if loaded.header.normalisation != "caffe":
            raise ConversionError(
                f"{checkpoint} was converted with --fold-normalisation ({loaded.header.normalisation} "
                "input); detection backbones need the Caffe-input checkpoint (convert without it)"
            )
        network.load_state_dict(loaded.state_dict, strict=True, assign=True)
    if rgb_input:
        with torch.no_grad():
            network.stem.conv1.weight.copy_(network.stem.conv1.weight.flip(1))
    trainable = _STAGES[len(_STAGES) - trainable_layers :]
    for key, parameter in network.named_parameters():
        if not key.startswith(trainable):
            parameter.requires_grad_(False)
    stages = [getattr(network, f"layer{index}") for index in returned]
    return BackboneWithFPN(
        network,
        return_layers={f"layer{index}": str(position) for position, index in enumerate(returned)},
        in_channels_list=[stage[-1].conv3.out_channels for stage in stages],
        out_channels=out_channels,
        extra_blocks=extra_blocks if extra_blocks is not None else LastLevelMaxPool(),
    )


def _faster_rcnn_keywords() -> set[str]:
    """The keywords `FasterRCNN` and its `GeneralizedRCNNTransform` name in their signatures."""
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {
        name
        for function in (FasterRCNN.__init__, GeneralizedRCNNTransform.__init__)
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.kind in named and name not in ("self", "backbone", "num_classes")
    }


def fasterrcnn_se_resnext50_fpn(
    backbone_checkpoint: str | os.PathLike[str] | None = None,
    *,
    num_classes: int = 91,
    trainable_backbone_layers: int = 3,
    **kwargs: Any,
) -> FasterRCNN:
    """Faster R-CNN on an SE-ResNeXt-50 (32x4d) FPN backbone, Caffe-normalised RGB input.

    `kwargs` go to `FasterRCNN` (e.g. `min_size`, `max_size`, RPN/ROI settings);
    `image_mean` / `image_std` default to the Caffe preprocessing for 0..1 RGB images.
    Any other keyword is a TypeError: torchvision passes unknown ones on to its
    transform, which ignores them, so `weights=` would silently give a random backbone.
    """
    unknown = sorted(set(kwargs) - _faster_rcnn_keywords())
    if unknown:
        hint = "; the backbone's checkpoint is backbone_checkpoint=" if "weights" in unknown else ""
        raise TypeError(
            f"fasterrcnn_se_resnext50_fpn() got unexpected keyword argument(s) {', '.join(unknown)}{hint}"
        )
    backbone = se_backbone_with_fpn(
        "se_resnext50_32x4d", backbone_checkpoint, trainable_layers=trainable_backbone_layers
    )
    kwargs.setdefault("image_mean", list(CAFFE_IMAGE_MEAN))
    kwargs.setdefault("image_std", list(CAFFE_IMAGE_STD))
    return FasterRCNN(backbone, num_classes=num_classes, **kwargs)
