"""The SSD fork's layers (weiliu89/caffe, branch ssd): Permute, Normalize, PriorBox, DetectionOutput."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from prototxt import Layer, caffe_pb2
from prototxt.shapes import detection_heads, permute_order, prior_box_spec

from .. import ssd
from ..registry import register
from ._blobs import blob, has_weights


@register("Permute")
def permute(layer: Layer) -> nn.Module:
    return ssd.Permute(permute_order(layer.param, len(layer.bottom_shapes[0])))


@register("Normalize")
def normalize(layer: Layer) -> nn.Module:
    p = layer.param.norm_param
    shape = layer.blob_shapes[0]
    if has_weights(layer):
        scale = blob(layer, 0).reshape(shape)
    else:  # the fork's initial scale: its constant filler, 1 by default
        filler = p.scale_filler
        scale = torch.full(
            shape, filler.value if p.HasField("scale_filler") and filler.type == "constant" else 1.0
        )
    return ssd.Normalize(scale, p.across_spatial, float(np.float32(p.eps)))


@register("PriorBox")
def prior_box(layer: Layer) -> nn.Module:
    return ssd.PriorBox(prior_box_spec(layer.param))


@register("DetectionOutput")
def detection_output(layer: Layer) -> nn.Module:
    """save_output_param and visualize (the fork's result files and display) compute nothing: unused."""
    p = layer.param.detection_output_param
    detection_heads(layer.param, layer.bottom_shapes)
    f32 = lambda value: float(np.float32(value))  # noqa: E731  (the fork keeps these as float)
    return ssd.DetectionOutput(
        num_classes=p.num_classes,
        share_location=p.share_location,
        background_label_id=p.background_label_id,
        code_type=caffe_pb2.PriorBoxParameter.CodeType.Name(p.code_type),
        variance_encoded_in_target=p.variance_encoded_in_target,
        confidence_threshold=f32(p.confidence_threshold)
        if p.HasField("confidence_threshold")
        else f32(-np.finfo(np.float32).max),
        nms_threshold=f32(p.nms_param.nms_threshold),
        top_k=p.nms_param.top_k if p.nms_param.HasField("top_k") else -1,
        eta=f32(p.nms_param.eta),
        keep_top_k=p.keep_top_k,
        heads=tuple(layer.bottoms),
    )
