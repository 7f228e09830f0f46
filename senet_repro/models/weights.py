"""What the original Caffe weights of each network are, in the spirit of torchvision's weights enums.

There is no download URL: the caffemodels are distributed by the SENet authors
(hujie-frank/SENet) and converted locally with `senet-convert`. Each entry
records the file, the published accuracy and how inputs must be prepared.

Published numbers: single 224x224 centre crop of the image resized to shorter
side 256, ImageNet-1k validation set (SENet README). Preprocessing of the
Caffe release: BGR channel order, pixel values 0..255 minus the per-channel
mean (104, 117, 123), no division by a standard deviation. Class indices follow
the ILSVRC2012 devkit (index 0 = n02119789 'kit fox'), not the sorted-WordNet-id
order of torchvision and timm (index 0 = 'tench').
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

from senet_repro.imagenet import ClassOrder
from senet_repro.transforms import CAFFE_MEAN_BGR, CaffePreprocess

from .registry import resolve_name


@dataclass(frozen=True)
class CaffeWeights:
    """One released caffemodel, its published accuracy and its preprocessing."""

    model: str  # our canonical model name
    caffe_name: str  # the network's name in the SENet README
    prototxt: str
    caffemodel: str
    caffemodel_mb: int  # size as published in the SENet README
    top1_err: float  # %, published
    top5_err: float  # %, published
    num_classes: int = 1000
    class_order: ClassOrder = ClassOrder.DEVKIT
    resize: int = 256  # shorter side
    crop: int = 224  # centre crop
    channel_order: str = "BGR"
    pixel_range: tuple[float, float] = (0.0, 255.0)
    mean_bgr: tuple[float, ...] = CAFFE_MEAN_BGR

    @property
    def meta(self) -> dict[str, Any]:
        """All fields as a plain dict (for reports and JSON)."""
        return asdict(self)

    def transforms(self) -> CaffePreprocess:
        """The matching preprocessing: image -> BGR tensor minus the means."""
        return CaffePreprocess(resize=self.resize, crop=self.crop, mean_bgr=self.mean_bgr)


class SENetWeights(Enum):
    """The seven released caffemodels; attribute access falls through to `CaffeWeights`."""

    SE_BN_INCEPTION = CaffeWeights(
        "se_bn_inception",
        "SE-BN-Inception",
        "SE-BN-Inception.prototxt",
        "SE-BN-Inception.caffemodel",
        46,
        23.62,
        7.04,
    )
    SE_RESNET50 = CaffeWeights(
        "se_resnet50", "SE-ResNet-50", "SE-ResNet-50.prototxt", "SE-ResNet-50.caffemodel", 107, 22.37, 6.36
    )
    SE_RESNET101 = CaffeWeights(
        "se_resnet101",
        "SE-ResNet-101",
        "SE-ResNet-101.prototxt",
        "SE-ResNet-101.caffemodel",
        189,
        21.75,
        5.72,
    )
    SE_RESNET152 = CaffeWeights(
        "se_resnet152",
        "SE-ResNet-152",
        "SE-ResNet-152.prototxt",
        "SE-ResNet-152.caffemodel",
        256,
        21.34,
        5.54,
    )
    SE_RESNEXT50_32X4D = CaffeWeights(
        "se_resnext50_32x4d",
        "SE-ResNeXt-50 (32 x 4d)",
        "SE-ResNeXt-50.prototxt",
        "SE-ResNeXt-50.caffemodel",
        105,
        20.97,
        5.54,
    )
    SE_RESNEXT101_32X4D = CaffeWeights(
        "se_resnext101_32x4d",
        "SE-ResNeXt-101 (32 x 4d)",
        "SE-ResNeXt-101.prototxt",
        "SE-ResNeXt-101.caffemodel",
        187,
        19.81,
        4.96,
    )
    # Released as SENet.caffemodel (its prototxt's net name is "SENet").
    SENET154 = CaffeWeights(
        "senet154", "SENet-154", "SENet-154.prototxt", "SENet.caffemodel", 440, 18.68, 4.47
    )

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.value, name)


def weights_for(model_name: str) -> CaffeWeights:
    """The Caffe weights description of a model (canonical name or alias)."""
    model = resolve_name(model_name)
    return next(member.value for member in SENetWeights if member.value.model == model)
