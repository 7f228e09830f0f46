"""The evaluation preprocessing of the SENet Caffe release, reproduced exactly.

Caffe's data layer read each image with OpenCV (decoded to 8-bit BGR), resized it with
`cv::resize(..., INTER_LINEAR)` so its shorter side is 256, kept the result as 8-bit
pixels, took the centre 224x224 crop (offset `(size - crop) // 2`, Caffe's integer
division) and subtracted the per-channel means 104, 117, 123 (B, G, R) without scaling.

Interpolation, decided here (`INTERPOLATION`): the bilinear filter of OpenCV's
INTER_LINEAR -- two taps per axis, pixel centres at +0.5 (source coordinate
`(d + 0.5) * in / out - 0.5`, clamped at the borders), *no antialiasing* -- evaluated in
exact rational arithmetic and rounded half up to 8 bits. OpenCV's own 8-bit code uses
11-bit fixed-point weights with CPU-dependent intermediate rounding (its SIMD and scalar
paths differ, and INTER_LINEAR_EXACT differs again), so no two of those agree bit for bit;
all of them stay within one grey level of the exact result, which is what we compute
here, identically on CPU and GPU. PIL's or torchvision's antialiased "bilinear" is a
different, wider filter and changes pixels by many grey levels on downscaling.

JPEG decoding (libjpeg-turbo via PIL or torchvision.io, both with the default slow
integer IDCT and fancy upsampling) gives the same pixels as OpenCV's `imdecode`; only
nvJPEG on the GPU differs slightly (see `senet_repro.validate`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

INTERPOLATION = "opencv-linear"
"""Name of the resize filter above; weights descriptions name it for their preprocessing."""


def _taps(
    size_in: int, size_out: int, start: int, count: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Source indices and integer weights of output pixels `start .. start+count-1` on one axis.

    Source coordinate of output pixel d is ((2d + 1) * in - out) / (2 * out); the two
    weights are returned as integer numerators (held in float64) over the common
    denominator 2 * out: every product and sum of the resize is then an integer far
    below 2**53, so float64 computes it exactly.
    """
    denominator = 2 * size_out
    d = torch.arange(start, start + count, device=device, dtype=torch.int64)
    numerator = ((2 * d + 1) * size_in - size_out).clamp(min=0)  # clamp: left/top border
    first = numerator // denominator
    weight_second = numerator - first * denominator
    at_end = first >= size_in - 1  # right/bottom border: all weight on the last pixel
    first = first.clamp(max=size_in - 1)
    weight_second = torch.where(at_end, torch.zeros_like(weight_second), weight_second)
    second = (first + 1).clamp(max=size_in - 1)
    weight_first = (denominator - weight_second).to(torch.float64)
    return first, second, weight_first, weight_second.to(torch.float64), denominator


@dataclass(frozen=True)
class CaffePreprocess:
    """Shorter side to `resize` (OpenCV bilinear), centre `crop`, RGB -> BGR, minus `mean_bgr`.

    Call it on a PIL image or on a uint8 CHW RGB tensor (CPU or CUDA); the result is a
    float32 CHW BGR tensor of values 0..255 minus the means, on the input's device. The
    two halves are also available separately (`resize_crop` on uint8, `normalize`), so
    a data loader can ship 8-bit crops and normalise on the accelerator.
    """

    resize: int = 256
    crop: int = 224
    mean_bgr: tuple[float, float, float] = (104.0, 117.0, 123.0)
    interpolation: str = INTERPOLATION

    def __post_init__(self) -> None:
        if self.interpolation != INTERPOLATION:
            raise ValueError(
                f"unsupported interpolation {self.interpolation!r}; "
                f"only {INTERPOLATION!r} (the Caffe protocol) is implemented"
            )
        if not 0 < self.crop <= self.resize:
            raise ValueError(f"crop ({self.crop}) must be positive and at most resize ({self.resize})")
        if len(self.mean_bgr) != 3:
            raise ValueError(f"mean_bgr needs three values (B, G, R), got {self.mean_bgr!r}")

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """Size after the shorter-side resize; the longer side is truncated as in torchvision."""
        if height <= width:
            return self.resize, self.resize * width // height
        return self.resize * height // width, self.resize

    def crop_offset(self, height: int, width: int) -> tuple[int, int]:
        """Top-left corner of the centre crop in an image of this (resized) size, as Caffe."""
        return (height - self.crop) // 2, (width - self.crop) // 2

    def resize_crop(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 CHW (1 or 3 channels) -> uint8 3 x crop x crop, same device.

        Only the output pixels inside the crop are computed: they do not depend on
        the others, so this equals resizing the whole image and cropping afterwards.
        """
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] not in (1, 3):
            raise ValueError(
                f"expected a uint8 CHW tensor with 1 or 3 channels, got {tuple(image.shape)} {image.dtype}"
            )
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        height, width = image.shape[1:]
        if height == 0 or width == 0:
            raise ValueError("empty image")
        new_h, new_w = self.resized_size(height, width)
        top, left = self.crop_offset(new_h, new_w)
        y0, y1, wy0, wy1, den_y = _taps(height, new_h, top, self.crop, image.device)
        x0, x1, wx0, wx1, den_x = _taps(width, new_w, left, self.crop, image.device)
        rows = torch.addcmul(
            image.index_select(1, y0).to(torch.float64).mul_(wy0[:, None]),
            image.index_select(1, y1).to(torch.float64),
            wy1[:, None],
        )
        both = torch.addcmul(rows.index_select(2, x0).mul_(wx0), rows.index_select(2, x1), wx1)
        # Round half up: floor((v + d/2) / d), the floor being the truncation of a positive
        # value to uint8. The quotient of these exact integers is at least 1/d away from the
        # next integer, far more than float64's rounding error.
        denominator = den_y * den_x  # even, so d/2 is an integer
        return both.add_(denominator // 2).div_(denominator).to(torch.uint8)

    def normalize(self, crops: torch.Tensor) -> torch.Tensor:
        """uint8 RGB (CHW or NCHW) -> float32 BGR minus the means; exact in float32."""
        channel_dim = crops.dim() - 3
        bgr = crops.flip(channel_dim).to(torch.float32)
        mean = torch.tensor(self.mean_bgr, dtype=torch.float32, device=crops.device)
        return bgr - mean.view(3, 1, 1)

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        if isinstance(image, Image.Image):
            image = pil_to_tensor(image)
        elif not isinstance(image, torch.Tensor):
            raise TypeError(f"expected a PIL image or a uint8 CHW tensor, got {type(image).__name__}")
        return self.normalize(self.resize_crop(image))


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image (any mode) -> uint8 CHW RGB tensor, as OpenCV's 3-channel decode would see it."""
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()
