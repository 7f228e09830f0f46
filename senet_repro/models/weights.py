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

PAPER_SOURCE = "SENet paper (Hu et al., CVPR 2018 / TPAMI 2019), Table 2"
PAPER_PARAMS_SOURCE = "SENet paper, reduction-ratio study (SE-ResNet-50, r = 16 vs original)"
RESNEXT_PARAMS_SOURCE = "ResNeXt paper (Xie et al., CVPR 2017)"
SENET154_SOURCE = (
    "issue 4 (20.7); consistent with the EfficientNet paper's 42B FLOPs for SENet "
    "at 320x320: 20.7 x (320/224)^2 = 42.2"
)


@dataclass(frozen=True)
class PaperFigure:
    """What a publication reports for one network, as printed there (so "7.60" keeps its digits)."""

    printed_gflops: str | None
    printed_params_m: str | None
    source: str

    @property
    def gflops(self) -> float | None:
        return None if self.printed_gflops is None else float(self.printed_gflops)

    @property
    def params_m(self) -> float | None:
        return None if self.printed_params_m is None else float(self.printed_params_m)


@dataclass(frozen=True)
class PaperComplexity:
    """The paper's complexity figures for a network and for its plain (SE-less) counterpart."""

    se_name: str
    plain_name: str
    se: PaperFigure
    plain: PaperFigure


@dataclass(frozen=True, kw_only=True)
class CaffeWeights:
    """One released caffemodel: its files, its published accuracy, how to feed it, where it maps.

    The one record of each network's facts; the builder of its module is registered
    under `name` beside it (`registry.register_model`).
    """

    name: str  # our canonical model name
    caffe_name: str  # the network's name in the SENet README
    net_name: str  # the `name:` of its deploy prototxt
    prototxt: str
    caffemodel: str
    caffemodel_mb: int  # size as published in the SENet README
    top1_err: float  # %, published
    top5_err: float  # %, published
    timm_name: str | None  # timm's port of it (`timm.models.senet`), None when timm has none
    paper: PaperComplexity  # the SENet paper's GFLOPs (and parameters) for it and without SE
    first_conv: str = "stem.conv1"  # module path of the convolution that sees the image
    first_norm: str = "stem.bn1"  # and of its BatchNorm
    classifier: str = "fc"  # module path of the final Linear layer
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
    """The seven released caffemodels, in the order of the SENet README's table;
    attribute access falls through to `CaffeWeights`."""

    SE_BN_INCEPTION = CaffeWeights(
        name="se_bn_inception",
        caffe_name="SE-BN-Inception",
        net_name="SE-BN-Inception",
        prototxt="SE-BN-Inception.prototxt",
        caffemodel="SE-BN-Inception.caffemodel",
        caffemodel_mb=46,
        top1_err=23.62,
        top5_err=7.04,
        timm_name=None,  # timm has no BN-Inception with SE
        paper=PaperComplexity(
            "SE-BN-Inception",
            "BN-Inception",
            PaperFigure("2.04", None, PAPER_SOURCE),
            PaperFigure("2.03", None, PAPER_SOURCE),
        ),
        first_conv="stem.conv1.conv",
        first_norm="stem.conv1.bn",
    )
    SE_RESNET50 = CaffeWeights(
        name="se_resnet50",
        caffe_name="SE-ResNet-50",
        net_name="SE-ResNet-50",
        prototxt="SE-ResNet-50.prototxt",
        caffemodel="SE-ResNet-50.caffemodel",
        caffemodel_mb=107,
        top1_err=22.37,
        top5_err=6.36,
        timm_name="legacy_seresnet50",
        paper=PaperComplexity(
            "SE-ResNet-50",
            "ResNet-50",
            PaperFigure("3.87", "28.1", f"{PAPER_SOURCE}; params: {PAPER_PARAMS_SOURCE}"),
            PaperFigure("3.86", "25.6", f"{PAPER_SOURCE}; params: {PAPER_PARAMS_SOURCE}"),
        ),
    )
    SE_RESNET101 = CaffeWeights(
        name="se_resnet101",
        caffe_name="SE-ResNet-101",
        net_name="SE-ResNet-101",
        prototxt="SE-ResNet-101.prototxt",
        caffemodel="SE-ResNet-101.caffemodel",
        caffemodel_mb=189,
        top1_err=21.75,
        top5_err=5.72,
        timm_name="legacy_seresnet101",
        paper=PaperComplexity(
            "SE-ResNet-101",
            "ResNet-101",
            PaperFigure("7.60", None, PAPER_SOURCE),
            PaperFigure("7.58", None, PAPER_SOURCE),
        ),
    )
    SE_RESNET152 = CaffeWeights(
        name="se_resnet152",
        caffe_name="SE-ResNet-152",
        net_name="SE-ResNet-152",
        prototxt="SE-ResNet-152.prototxt",
        caffemodel="SE-ResNet-152.caffemodel",
        caffemodel_mb=256,
        top1_err=21.34,
        top5_err=5.54,
        timm_name="legacy_seresnet152",
        paper=PaperComplexity(
            "SE-ResNet-152",
            "ResNet-152",
            PaperFigure("11.32", None, PAPER_SOURCE),
            PaperFigure("11.30", None, PAPER_SOURCE),
        ),
    )
    SE_RESNEXT50_32X4D = CaffeWeights(
        name="se_resnext50_32x4d",
        caffe_name="SE-ResNeXt-50 (32 x 4d)",
        net_name="SE-ResNeXt-50 (32 x 4d)",
        prototxt="SE-ResNeXt-50.prototxt",
        caffemodel="SE-ResNeXt-50.caffemodel",
        caffemodel_mb=105,
        top1_err=20.97,
        top5_err=5.54,
        timm_name="legacy_seresnext50_32x4d",
        paper=PaperComplexity(
            "SE-ResNeXt-50 (32x4d)",
            "ResNeXt-50 (32x4d)",
            PaperFigure("4.25", None, PAPER_SOURCE),
            PaperFigure("4.24", "25.0", f"{PAPER_SOURCE}; params: {RESNEXT_PARAMS_SOURCE}"),
        ),
    )
    SE_RESNEXT101_32X4D = CaffeWeights(
        name="se_resnext101_32x4d",
        caffe_name="SE-ResNeXt-101 (32 x 4d)",
        net_name="SE-ResNeXt-101 (32 x 4d)",
        prototxt="SE-ResNeXt-101.prototxt",
        caffemodel="SE-ResNeXt-101.caffemodel",
        caffemodel_mb=187,
        top1_err=19.81,
        top5_err=4.96,
        timm_name="legacy_seresnext101_32x4d",
        paper=PaperComplexity(
            "SE-ResNeXt-101 (32x4d)",
            "ResNeXt-101 (32x4d)",
            PaperFigure("8.00", None, PAPER_SOURCE),
            PaperFigure("7.99", None, PAPER_SOURCE),
        ),
    )
    SENET154 = CaffeWeights(
        name="senet154",
        caffe_name="SENet-154",
        net_name="SENet",  # released as SENet.caffemodel
        prototxt="SENet-154.prototxt",
        caffemodel="SENet.caffemodel",
        caffemodel_mb=440,
        top1_err=18.68,
        top5_err=4.47,
        timm_name="legacy_senet154",
        paper=PaperComplexity(
            "SENet-154",
            "SENet-154 without SE",
            PaperFigure("20.7", None, SENET154_SOURCE),
            PaperFigure(None, None, "no published figure"),
        ),
    )

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.value, name)
