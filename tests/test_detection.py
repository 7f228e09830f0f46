"""SE backbones with FPN in torchvision's detection models, from a converted checkpoint.

The checkpoint is made the way a user's is: random Caffe blobs of the released
SE-ResNeXt-50 prototxt -> `caffe_to_state_dict` -> `.pth`. Images are small
(2 x 128x160, min_size 128) and the RPN/ROI sample counts low, to keep CPU time down.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from prototxt import load_net
from prototxt.random_weights import random_blobs
from senet_repro.detection import (
    CAFFE_IMAGE_MEAN,
    CAFFE_IMAGE_STD,
    fasterrcnn_se_resnext50_fpn,
    se_backbone_with_fpn,
)
from senet_repro.models import Header, caffe_layer_map, caffe_to_state_dict, get_model, to_timm_state_dict
from senet_repro.models.blocks import BN_EPS
from senet_repro.models.checkpoint import save_state_dict

MODEL = "se_resnext50_32x4d"
SMALL_DETECTOR = dict(
    min_size=128,
    max_size=160,
    rpn_pre_nms_top_n_train=200,
    rpn_post_nms_top_n_train=100,
    rpn_pre_nms_top_n_test=200,
    rpn_post_nms_top_n_test=50,
    rpn_batch_size_per_image=64,
    box_batch_size_per_image=32,
)


@pytest.fixture(scope="module")
def converted(senet_prototxts, tmp_path_factory) -> tuple[Path, dict[str, list[np.ndarray]]]:
    """(.pth of SE-ResNeXt-50 from random Caffe blobs, those blobs)."""
    net = load_net(senet_prototxts["SE-ResNeXt-50"])
    blobs = random_blobs(net, seed=0)
    path = tmp_path_factory.mktemp("detection") / "se_resnext50.pth"
    save_state_dict(caffe_to_state_dict(MODEL, blobs), path)
    return path, blobs


def test_faster_rcnn_trains_and_infers(converted):
    path, _ = converted
    torch.manual_seed(0)
    model = fasterrcnn_se_resnext50_fpn(backbone_checkpoint=path, num_classes=3, **SMALL_DETECTOR)
    images = [torch.rand(3, 128, 160), torch.rand(3, 128, 160)]
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 80.0, 100.0]]), "labels": torch.tensor([1])},
        {
            "boxes": torch.tensor([[30.0, 10.0, 150.0, 90.0], [5.0, 5.0, 40.0, 40.0]]),
            "labels": torch.tensor([2, 1]),
        },
    ]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=1e-3)
    before = model.backbone.body.layer4[0].conv1.weight.detach().clone()
    model.train()
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(math.isfinite(value.item()) for value in losses.values())
    sum(losses.values()).backward()
    for name, parameter in model.backbone.body.named_parameters():
        frozen = name.startswith(("stem.", "layer1."))
        assert parameter.requires_grad != frozen, name
        if frozen:
            assert parameter.grad is None, name
        else:
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.fpn.parameters())
    optimizer.step()
    assert not torch.equal(model.backbone.body.layer4[0].conv1.weight, before)

    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2
    for found in detections:
        boxes = found["boxes"]
        assert boxes.shape[1] == 4 and found["scores"].shape == found["labels"].shape == boxes.shape[:1]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 160).all() and (boxes[:, 3] <= 128).all()
    assert model.transform.image_mean == list(CAFFE_IMAGE_MEAN)
    assert model.transform.image_std == list(CAFFE_IMAGE_STD)


def test_frozen_batchnorm_holds_the_caffe_statistics(converted, tmp_path):
    """Every BatchNorm of the body is frozen and holds mean/sf, var/sf, gamma, beta of Caffe;
    a checkpoint in timm's layout gives the same backbone."""
    path, blobs = converted
    timm_path = save_state_dict(
        to_timm_state_dict(MODEL, torch.load(path, weights_only=True)), tmp_path / "timm.safetensors"
    )
    for weights in (path, timm_path):
        body = se_backbone_with_fpn("se_resnext50", checkpoint=weights, rgb_input=False).body
        assert not any(isinstance(m, nn.BatchNorm2d) for m in body.modules())
        checked = 0
        for layer, (kind, module) in caffe_layer_map(MODEL).items():
            if kind != "BatchNorm":
                continue
            norm = body.get_submodule(module)
            mean, var, factor = (np.asarray(blob, dtype=np.float64) for blob in blobs[layer])
            gamma, beta = blobs[f"{layer}/scale"]
            assert isinstance(norm, FrozenBatchNorm2d) and norm.eps == BN_EPS  # Caffe's float32 1e-5
            np.testing.assert_allclose(norm.running_mean.numpy(), mean / factor[0], rtol=1e-6, atol=0)
            np.testing.assert_allclose(norm.running_var.numpy(), var / factor[0], rtol=1e-6, atol=0)
            np.testing.assert_array_equal(norm.weight.numpy(), np.float32(gamma))
            np.testing.assert_array_equal(norm.bias.numpy(), np.float32(beta))
            checked += 1
        assert checked == 53  # stem + 16 blocks x 3 + 4 projections


def test_rgb_input_reverses_the_stem_channels(converted):
    """rgb_input=True on RGB == the Caffe BGR backbone on the channel-reversed image."""
    path, _ = converted
    torch.manual_seed(0)  # the same random FPN weights in both
    rgb = se_backbone_with_fpn(MODEL, checkpoint=path).eval()
    torch.manual_seed(0)
    bgr = se_backbone_with_fpn(MODEL, checkpoint=path, rgb_input=False).eval()
    x = 50.0 * torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, caffe = rgb(x), bgr(x.flip(1))
    assert list(ours) == ["0", "1", "2", "3", "pool"]
    assert [tuple(v.shape) for v in ours.values()] == [
        (1, 256, 16, 24),
        (1, 256, 8, 12),
        (1, 256, 4, 6),
        (1, 256, 2, 3),
        (1, 256, 1, 2),
    ]
    for key in ours:
        torch.testing.assert_close(
            ours[key], caffe[key], rtol=1e-4, atol=1e-5 * float(caffe[key].abs().max())
        )


def test_backbone_options(tmp_path):
    """Returned stages, trainable stages, norm layer and extra blocks; bad values are refused."""
    backbone = se_backbone_with_fpn(
        "se_resnet50",
        trainable_layers=5,
        returned_layers=(2, 3, 4),
        norm_layer=nn.BatchNorm2d,
        extra_blocks=LastLevelP6P7(256, 256),
    )
    assert all(p.requires_grad for p in backbone.body.parameters())
    assert isinstance(backbone.body.stem.bn1, nn.BatchNorm2d)
    assert backbone.fpn.inner_blocks[0][0].in_channels == 512
    with torch.no_grad():
        features = backbone.eval()(torch.zeros(1, 3, 64, 64))
    assert list(features) == ["0", "1", "2", "p6", "p7"]
    frozen = se_backbone_with_fpn("se_resnet50", trainable_layers=0, returned_layers=(4,))
    assert not any(p.requires_grad for p in frozen.body.parameters())
    assert list(frozen.body) == ["stem", "layer1", "layer2", "layer3", "layer4"]  # no pool/fc
    folded = save_state_dict(  # the header is what counts: a real checkpoint's says "torchvision"
        get_model("se_resnet50").state_dict(),
        tmp_path / "folded.safetensors",
        metadata=Header("se_resnet50", normalisation="torchvision").metadata(),
    )
    cases: tuple[tuple[dict[str, Any], str], ...] = (
        (dict(trainable_layers=6), "trainable_layers"),
        (dict(returned_layers=(0, 1)), "returned_layers"),
        (dict(name="se_bn_inception"), "no four-stage residual layout"),
        (dict(checkpoint=folded), "converted with --fold-normalisation"),
    )
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            se_backbone_with_fpn(**{"name": "se_resnet50", **kwargs})
