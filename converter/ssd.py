"""The SSD fork's inference layers (weiliu89/caffe, branch ssd) as nn.Modules.

Each follows the fork's CPU code operation by operation, in the precision the
fork uses: PriorBox mixes float and double arithmetic (prior_box_layer.cpp),
DetectionOutput works on float32 whatever the net's Dtype (its boxes are
`NormalizedBBox` protobufs with float fields and its scores `vector<float>`,
bbox_util.cpp), so a float64 net gets float32-exact detections widened to float64.
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision
from torch import nn

from prototxt.priors import prior_boxes
from prototxt.shapes import PriorBoxSpec


class Permute(nn.Module):
    """The fork's Permute: transpose to `order` (every axis named)."""

    def __init__(self, order: list[int]) -> None:
        super().__init__()
        self.order = order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(self.order)

    def extra_repr(self) -> str:
        return f"order={self.order}"


class Normalize(nn.Module):
    """The fork's Normalize: L2 norm over C x H x W (across_spatial) or over C per position, then a scale.

    eps sits inside the square root: sqrt(sum x^2 + eps) (normalize_layer.cpp). Across
    space the fork multiplies by 1/norm, per position it divides by the norm; so do we.
    """

    def __init__(self, scale: torch.Tensor, across_spatial: bool, eps: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(scale)
        self.across_spatial, self.eps = across_spatial, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squares = x * x
        if self.across_spatial:
            norm = torch.sqrt(squares.flatten(1).sum(1) + self.eps)
            out = x * (1.0 / norm).reshape(-1, *(1,) * (x.dim() - 1))
        else:
            out = x / torch.sqrt(squares.sum(1, keepdim=True) + self.eps)
        return out * self.scale.reshape(*self.scale.shape, *(1,) * (x.dim() - 2))

    def extra_repr(self) -> str:
        return f"across_spatial={self.across_spatial}, eps={self.eps}"


class PriorBox(nn.Module):
    """The fork's PriorBox: prior boxes and variances from the feature map's and image's sizes."""

    def __init__(self, spec: PriorBoxSpec) -> None:
        super().__init__()
        self.spec = spec

    def forward(self, feature: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        dtype = np.dtype(np.float64 if feature.dtype == torch.float64 else np.float32)
        # Caffe's height()/width(): axes 2 and 3, 1 where the blob has fewer (at most 4, checked).
        feature_hw, image_hw = ((*x.shape, 1, 1)[2:4] for x in (feature, image))
        priors = prior_boxes(self.spec, feature_hw, image_hw, dtype)
        return torch.from_numpy(priors.copy()).to(feature.device, feature.dtype)

    def extra_repr(self) -> str:
        return str(self.spec)


CODE_TYPES = ("CORNER", "CENTER_SIZE", "CORNER_SIZE")


def decode_boxes(
    loc: torch.Tensor, priors: torch.Tensor, variances: torch.Tensor | None, code_type: str
) -> torch.Tensor:
    """bbox_util.cpp's DecodeBBox on float32 tensors: (..., P, 4) offsets -> (..., P, 4) corners.

    `variances` None: variance_encoded_in_target (the offsets are used as they are).
    Float operations are applied one at a time in the fork's order; the exp and the
    final `center -/+ size / 2.` are evaluated in double and stored as float, as there.
    """
    var = torch.ones_like(priors) if variances is None else variances
    pmin, pmax = priors[..., :2], priors[..., 2:]
    if code_type == "CORNER":
        return torch.cat([pmin + var[..., :2] * loc[..., :2], pmax + var[..., 2:] * loc[..., 2:]], -1)
    size = pmax - pmin
    if code_type == "CORNER_SIZE":
        return torch.cat(
            [pmin + var[..., :2] * loc[..., :2] * size, pmax + var[..., 2:] * loc[..., 2:] * size], -1
        )
    center = (pmin + pmax) / 2
    box_center = var[..., :2] * loc[..., :2] * size + center
    box_size = torch.exp((var[..., 2:] * loc[..., 2:]).double()).float() * size
    half = box_size.double() / 2.0
    return torch.cat([box_center.double() - half, box_center.double() + half], -1).float()


def fork_nms(
    boxes: torch.Tensor, scores: torch.Tensor, threshold: float, top_k: int, nms_threshold: float, eta: float
) -> torch.Tensor:
    """bbox_util.cpp's ApplyNMSFast for one class: indices kept, best score first.

    Candidates score > threshold, stably sorted (ties: lower index first), cut to
    top_k before suppression; a candidate is dropped when its IoU with a kept box
    exceeds the threshold. torchvision's nms computes the same float32 IoU, so it
    decides when eta is 1; the adaptive threshold (eta < 1) needs the loop.
    """
    candidates = torch.nonzero(scores > threshold).flatten()
    order = torch.sort(scores[candidates], descending=True, stable=True).indices
    candidates = candidates[order]
    if top_k > -1:
        candidates = candidates[:top_k]
    if eta >= 1:
        rank = torch.arange(len(candidates), 0, -1, dtype=torch.float32)  # torchvision re-sorts by score
        return candidates[torchvision.ops.nms(boxes[candidates], rank, nms_threshold)]
    kept: list[int] = []
    adaptive = np.float32(nms_threshold)
    overlaps = torchvision.ops.box_iou(boxes[candidates], boxes[candidates]).numpy()
    for position in range(len(candidates)):
        # NaN (two empty boxes) compares false, as the fork's IoU of 0 keeps the box.
        if not (overlaps[position, kept] > adaptive).any():
            kept.append(position)
            if adaptive > 0.5:
                adaptive = np.float32(adaptive * np.float32(eta))
    return candidates[kept]


class DetectionOutput(nn.Module):
    """The fork's DetectionOutput (Forward_cpu): decode, per-class NMS, keep_top_k; 1 x 1 x rows x 7.

    Each row is [image, label, score, xmin, ymin, xmax, ymax], images in order, labels
    ascending, scores descending. With no detection at all in the batch, one row
    [image, -1, -1, -1, -1, -1, -1] per image, as the fork writes. Its row count depends
    on the data, so tracing exporters refuse it (`data_dependent_shape`).
    """

    data_dependent_shape = True

    def __init__(
        self,
        *,
        num_classes: int,
        share_location: bool,
        background_label_id: int,
        code_type: str,
        variance_encoded_in_target: bool,
        confidence_threshold: float,
        nms_threshold: float,
        top_k: int,
        eta: float,
        keep_top_k: int,
        heads: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.num_classes, self.share_location = num_classes, share_location
        self.background_label_id, self.code_type = background_label_id, code_type
        self.variance_encoded_in_target = variance_encoded_in_target
        self.confidence_threshold, self.nms_threshold = confidence_threshold, nms_threshold
        self.top_k, self.eta, self.keep_top_k = top_k, eta, keep_top_k
        self.heads = heads  # the Caffe blobs it reads, for the exporters' refusal message

    @torch.no_grad()
    def forward(self, loc: torch.Tensor, conf: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        dtype, device = loc.dtype, loc.device  # the net's Dtype; the work is float32, as in the fork
        num, loc_classes = loc.shape[0], 1 if self.share_location else self.num_classes
        priors = prior.shape[2] // 4
        prior = prior.reshape(-1).float().cpu()
        corners = prior[: priors * 4].reshape(priors, 4)
        # Variances follow the boxes; a net whose targets carry them may give boxes alone.
        variances = (
            None if self.variance_encoded_in_target else prior[priors * 4 : priors * 8].reshape(priors, 4)
        )
        loc = loc.reshape(num, priors, loc_classes, 4).float().cpu().transpose(1, 2)
        conf = conf.reshape(num, priors, self.num_classes).float().cpu()
        boxes = decode_boxes(loc, corners, variances, self.code_type)
        rows: list[torch.Tensor] = []
        for image in range(num):
            kept: list[tuple[int, torch.Tensor]] = []  # (label, prior indices), labels ascending
            for label in range(self.num_classes):
                if label == self.background_label_id:
                    continue
                label_boxes = boxes[image, 0 if self.share_location else label]
                indices = fork_nms(
                    label_boxes,
                    conf[image, :, label],
                    self.confidence_threshold,
                    self.top_k,
                    self.nms_threshold,
                    self.eta,
                )
                kept.append((label, indices))
            kept = self._keep_top_k(kept, conf[image])
            for label, indices in kept:
                label_boxes = boxes[image, 0 if self.share_location else label]
                rows.append(self._rows(image, label, conf[image, indices, label], label_boxes[indices]))
        out = torch.cat(rows) if rows else torch.zeros(0, 7)
        if not len(out):  # the fork's "no detections": one row of -1 per image
            out = torch.full((num, 7), -1.0)
            out[:, 0] = torch.arange(num, dtype=out.dtype)
        return out.to(device, dtype).reshape(1, 1, -1, 7)

    def _keep_top_k(
        self, kept: list[tuple[int, torch.Tensor]], scores: torch.Tensor
    ) -> list[tuple[int, torch.Tensor]]:
        """Keep the keep_top_k best detections of an image over all classes.

        The fork sorts with std::sort (unstable): the order of equal scores at the cut
        is unspecified there; we keep the lower label, then the earlier NMS rank.
        """
        total = sum(len(indices) for _, indices in kept)
        if self.keep_top_k <= -1 or total <= self.keep_top_k:
            return kept
        labels = torch.cat([torch.full((len(i),), label) for label, i in kept])
        indices = torch.cat([i for _, i in kept])
        order = torch.sort(scores[indices, labels], descending=True, stable=True).indices
        order = order[: self.keep_top_k]
        return [(label, indices[order[labels[order] == label]]) for label, _ in kept]

    @staticmethod
    def comparable(rows: np.ndarray) -> np.ndarray:
        """Detections as a canonical set, to compare runtimes: all-zero rows dropped (OpenCV pads
        to keep_top_k with them), rows by image, label, score descending, then xmin."""
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, 7)
        rows = rows[~np.all(rows == 0, axis=1)]
        return rows[np.lexsort((rows[:, 3], -rows[:, 2], rows[:, 1], rows[:, 0]))]

    @staticmethod
    def _rows(image: int, label: int, scores: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        ids = torch.tensor([float(image), float(label)]).expand(len(scores), 2)
        return torch.cat([ids, scores[:, None], boxes], 1)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, code_type={self.code_type}, "
            f"confidence_threshold={self.confidence_threshold}, nms_threshold={self.nms_threshold}, "
            f"top_k={self.top_k}, eta={self.eta}, keep_top_k={self.keep_top_k}"
        )
