"""The SSD fork's PriorBox values: boxes and variances from the feature map's and image's sizes.

They depend on shapes only, so both converters (PyTorch and the torch-free ONNX
lowering) take them from here, in the fork's own float/double arithmetic.
"""

from __future__ import annotations

import functools

import numpy as np

from .shapes import PriorBoxSpec


@functools.lru_cache(maxsize=64)
def prior_boxes(
    spec: PriorBoxSpec, feature_hw: tuple[int, int], image_hw: tuple[int, int], dtype: np.dtype
) -> np.ndarray:
    """The fork's PriorBox output (1 x 2 x H*W*priors*4) for a feature map and image size.

    The fork computes centres and box sizes in float, each coordinate
    `(center - size / 2.) / img_size` in double, and stores it in Dtype; we replay that.
    The sqrt of an aspect ratio is taken in double (the C library's sqrt).
    """
    f32 = np.float32
    height, width = feature_hw
    img_h, img_w = spec.img_hw or image_hw
    if spec.step_hw is None:
        step_h, step_w = f32(img_h) / f32(height), f32(img_w) / f32(width)
    else:
        step_h, step_w = f32(spec.step_hw[0]), f32(spec.step_hw[1])
    center_y = (np.arange(height, dtype=f32) + f32(spec.offset)) * step_h
    center_x = (np.arange(width, dtype=f32) + f32(spec.offset)) * step_w
    sizes: list[tuple[float, float]] = []  # (box width, box height), in the fork's order
    for s, min_size in enumerate(spec.min_sizes):
        sizes.append((min_size, min_size))
        if spec.max_sizes:
            side = np.sqrt(float(min_size * spec.max_sizes[s]))
            sizes.append((side, side))
        for ratio in spec.aspect_ratios:  # ratio boxes have min_size's area, with or without max_size
            if abs(ratio - 1.0) < 1e-6:
                continue
            root = np.sqrt(float(ratio))
            sizes.append((min_size * root, min_size / root))
    box = np.array(sizes, dtype=f32).astype(np.float64)  # float box_width/box_height
    half_w, half_h = box[:, 0] / 2.0, box[:, 1] / 2.0
    cx = center_x.astype(np.float64)[None, :, None]
    cy = center_y.astype(np.float64)[:, None, None]
    shape = (height, width, len(sizes))
    coords = np.stack(
        [
            np.broadcast_to((cx - half_w) / img_w, shape),
            np.broadcast_to((cy - half_h) / img_h, shape),
            np.broadcast_to((cx + half_w) / img_w, shape),
            np.broadcast_to((cy + half_h) / img_h, shape),
        ],
        axis=-1,
    ).astype(dtype)
    if spec.clip:
        coords = np.clip(coords, 0, 1)
    variances = np.broadcast_to(np.array(spec.variances, dtype=np.float32).astype(dtype), coords.shape)
    out = np.stack([coords.reshape(-1), variances.reshape(-1)])[None]
    out.setflags(write=False)
    return out
