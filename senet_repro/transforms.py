"""The evaluation preprocessing of Caffe releases (the SENet one by default), reproduced exactly.

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

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from prototxt import InputError

INTERPOLATION = "opencv-linear"
"""Name of the resize filter above; weights descriptions name it for their preprocessing."""

MAX_SIZE = 1024
"""Largest shorter side: the releases were evaluated at 224 (SENet-154 also at 320); at 1024 a
batch of 100 float32 crops is 1.2 GB, and a larger value is far more likely a typo than a protocol."""


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


RESIZE_MODES = ("shorter", "warp")
"""`shorter`: shorter side to `resize`, aspect kept; `warp`: to `resize` x `resize`, as the
BVLC ImageNet LMDBs were built (`convert_imageset --resize_height 256 --resize_width 256`)."""
CHANNEL_ORDERS = ("BGR", "RGB")


# The per-channel means (B, G, R) every Caffe ImageNet release subtracts, on 0..255 pixels.
CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)


@dataclass(frozen=True)
class CaffePreprocess:
    """Caffe's test-time data transformation, after an OpenCV bilinear resize.

    Resize (`resize_mode`), crop `crop` x `crop` -- the centre, or with `ten_crop` the four
    corners, the centre and their mirrors in `caffe.io.oversample`'s order -- subtract the
    mean, multiply by `scale`, as Caffe's DataTransformer: `(pixel - mean) * scale`. The mean
    is either per-channel values (`mean_bgr`: B, G, R, or one value for all) or a mean image
    (`mean_file`, a `.binaryproto` BlobProto). A mean image as large as the warped image is
    cropped (and mirrored) together with it, as Caffe's DataTransformer does; one as large as
    the crop is subtracted from every view as it is, as pycaffe's Transformer does. The network input is BGR;
    `channel_order="RGB"` reverses the channels last (the means stay given as B, G, R).

    Call it on a PIL image or on a uint8 CHW RGB tensor (CPU or CUDA); the result is a
    float32 CHW tensor (views x CHW with `ten_crop`) on the input's device. The two halves
    are also available separately (`resize_views` on uint8, `normalise`), so a data loader
    can ship 8-bit crops and normalise on the accelerator.
    """

    resize: int = 256
    crop: int = 224
    mean_bgr: tuple[float, ...] | None = CAFFE_MEAN_BGR
    interpolation: str = INTERPOLATION
    resize_mode: str = "shorter"
    mean_file: str | None = None
    scale: float = 1.0
    channel_order: str = "BGR"
    ten_crop: bool = False

    def __post_init__(self) -> None:
        if self.interpolation != INTERPOLATION:
            raise InputError(
                f"unsupported interpolation {self.interpolation!r}; "
                f"only {INTERPOLATION!r} (the Caffe protocol) is implemented"
            )
        if not 0 < self.crop <= self.resize:
            raise InputError(f"crop ({self.crop}) must be positive and at most resize ({self.resize})")
        if self.resize > MAX_SIZE:
            raise InputError(f"resize ({self.resize}) must be at most {MAX_SIZE} pixels")
        if self.resize_mode not in RESIZE_MODES:
            raise InputError(f"resize mode {self.resize_mode!r}: choose one of {', '.join(RESIZE_MODES)}")
        if self.channel_order not in CHANNEL_ORDERS:
            raise InputError(f"channel order {self.channel_order!r}: choose {' or '.join(CHANNEL_ORDERS)}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise InputError(f"scale must be a positive number, got {self.scale!r}")
        if self.mean_bgr is not None and len(self.mean_bgr) not in (1, 3):
            raise InputError(f"mean_bgr needs three values (B, G, R) or one, got {self.mean_bgr!r}")
        if self.mean_file is not None:
            if self.mean_bgr is not None:
                raise InputError(
                    "give mean values or a mean file, not both (Caffe's DataTransformer refuses both)"
                )
            self.mean_image()  # fail now, not in a data-loader worker

    @property
    def num_views(self) -> int:
        """Crops per image: 1, or 10 with `ten_crop`."""
        return 10 if self.ten_crop else 1

    def mean_image(self) -> np.ndarray | None:
        """The mean file's image as float32 3 x H x W (BGR), checked as Caffe checks it.

        H x W must be the warped image's size (DataTransformer: image size == mean size) or
        the crop's (pycaffe: mean shape == input shape).
        """
        if self.mean_file is None:
            return None
        mean = _read_mean_file(self.mean_file)
        size = mean.shape[1:]
        if not (self.mean_is_full_image(size) or size == (self.crop, self.crop)):
            raise InputError(
                f"{self.mean_file}: a mean image of {size[0]}x{size[1]} needs every image warped to "
                f"exactly that size (Caffe requires image size == mean size) or crops of that size; "
                f"got resize mode {self.resize_mode!r} to {self.resize}, crop {self.crop}"
            )
        return mean

    def mean_is_full_image(self, size: tuple[int, ...]) -> bool:
        """Whether a mean image of `size` covers the whole warped image (else it covers a crop)."""
        return self.resize_mode == "warp" and size == (self.resize, self.resize)

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """Size after the resize; a shorter-side resize truncates the longer side as torchvision."""
        if self.resize_mode == "warp":
            return self.resize, self.resize
        if height <= width:
            return self.resize, self.resize * width // height
        return self.resize * height // width, self.resize

    def crop_offset(self, height: int, width: int) -> tuple[int, int]:
        """Top-left corner of the centre crop in an image of this (resized) size, as Caffe."""
        return (height - self.crop) // 2, (width - self.crop) // 2

    def views(self, height: int, width: int) -> tuple[tuple[int, int, bool], ...]:
        """(top, left, mirrored) of every crop of a (resized) image of this size.

        Ten crops follow `caffe.io.oversample`: corners (top-left, top-right, bottom-left,
        bottom-right), centre, then the same five mirrored. Its centre, `int(h/2 - crop/2)`,
        equals DataTransformer's `(h - crop) / 2` for every size.
        """
        centre = self.crop_offset(height, width)
        if not self.ten_crop:
            return ((*centre, False),)
        places = [(top, left) for top in (0, height - self.crop) for left in (0, width - self.crop)]
        places.append(centre)
        return tuple((top, left, mirrored) for mirrored in (False, True) for top, left in places)

    def resize_views(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 CHW (1 or 3 channels) -> uint8 views x 3 x crop x crop, same device.

        Only the resized pixels the crops cover are computed: they do not depend on the
        others, so this equals resizing the whole image and cropping afterwards.
        """
        image = _check_image(image)
        new_h, new_w = self.resized_size(*image.shape[1:])
        views = self.views(new_h, new_w)
        top = min(view[0] for view in views)
        left = min(view[1] for view in views)
        height = max(view[0] for view in views) + self.crop - top
        width = max(view[1] for view in views) + self.crop - left
        region = _resize_region(image, (new_h, new_w), (top, left), (height, width))
        crops = []
        for view_top, view_left, mirrored in views:
            crop = region[:, view_top - top :, view_left - left :][:, : self.crop, : self.crop]
            crops.append(crop.flip(2) if mirrored else crop)
        return torch.stack(crops)

    def resize_crop(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 CHW (1 or 3 channels) -> the centre crop, uint8 3 x crop x crop, same device."""
        image = _check_image(image)
        new_h, new_w = self.resized_size(*image.shape[1:])
        offset = self.crop_offset(new_h, new_w)
        return _resize_region(image, (new_h, new_w), offset, (self.crop, self.crop))

    def normalise(self, crops: torch.Tensor) -> torch.Tensor:
        """uint8 RGB crops (..., 3, crop, crop) -> float32 `(pixel - mean) * scale` in the net's order.

        With a mean file and ten crops the views axis (-4) must hold the ten views in the
        order of `views`. Every step is one float32 operation, as in Caffe.
        """
        channel_dim = crops.dim() - 3
        bgr = crops.flip(channel_dim).to(torch.float32)
        if self.mean_file is not None:
            mean = _mean_views(self, crops.device)
            if self.ten_crop and (crops.dim() < 4 or crops.shape[-4] != self.num_views):
                raise ValueError(f"expected the {self.num_views} views on axis -4, got {tuple(crops.shape)}")
            bgr = bgr - mean
        elif self.mean_bgr is not None:
            mean = torch.tensor(self.mean_bgr, dtype=torch.float32, device=crops.device)
            bgr = bgr - mean.view(-1, 1, 1)
        if self.scale != 1.0:
            bgr = bgr * torch.tensor(self.scale, dtype=torch.float32)
        return bgr.flip(channel_dim) if self.channel_order == "RGB" else bgr

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        if isinstance(image, Image.Image):
            image = pil_to_tensor(image)
        elif not isinstance(image, torch.Tensor):
            raise TypeError(f"expected a PIL image or a uint8 CHW tensor, got {type(image).__name__}")
        if self.ten_crop:
            return self.normalise(self.resize_views(image))
        return self.normalise(self.resize_crop(image))


def _check_image(image: torch.Tensor) -> torch.Tensor:
    """A non-empty uint8 CHW image with 1 or 3 channels, as 3 channels."""
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(
            f"expected a uint8 CHW tensor with 1 or 3 channels, got {tuple(image.shape)} {image.dtype}"
        )
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise InputError("empty image")
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image


def _resize_region(
    image: torch.Tensor, size: tuple[int, int], offset: tuple[int, int], region: tuple[int, int]
) -> torch.Tensor:
    """Pixels `offset .. offset + region` of `image` resized to `size`, uint8 3 x region."""
    height, width = image.shape[1:]
    y0, y1, wy0, wy1, den_y = _taps(height, size[0], offset[0], region[0], image.device)
    x0, x1, wx0, wx1, den_x = _taps(width, size[1], offset[1], region[1], image.device)
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


@functools.lru_cache(maxsize=8)
def _read_mean_file(path: str) -> np.ndarray:
    """A mean file's image as float32 3 x H x W (Caffe stores it 1 x 3 x H x W)."""
    from prototxt import read_blobproto

    mean = read_blobproto(path)
    if mean.ndim == 4 and mean.shape[0] == 1:
        mean = mean[0]
    if mean.ndim != 3 or mean.shape[0] != 3:
        raise InputError(f"{path}: expected a 3-channel mean image (1 x 3 x H x W), got {mean.shape}")
    return np.array(mean, dtype=np.float32)  # a writable copy of the file's bytes


@functools.lru_cache(maxsize=8)
def _mean_views(preprocess: CaffePreprocess, device: torch.device) -> torch.Tensor:
    """The mean image as each view subtracts it: views x 3 x crop x crop, or 3 x crop x crop.

    DataTransformer subtracts `mean[(c * H + h_off + h) * W + w_off + w]` from the pixel
    taken at the same place before mirroring, so a mirrored view subtracts the mirrored
    mean crop.
    """
    image = preprocess.mean_image()
    assert image is not None
    mean = torch.from_numpy(image)
    crop = preprocess.crop
    if not preprocess.mean_is_full_image(tuple(mean.shape[1:])):  # a crop-sized mean, as pycaffe
        return (mean.expand(preprocess.num_views, -1, -1, -1) if preprocess.ten_crop else mean).to(device)
    views = []
    for top, left, mirrored in preprocess.views(preprocess.resize, preprocess.resize):
        window = mean[:, top : top + crop, left : left + crop]
        views.append(window.flip(2) if mirrored else window)
    stacked = torch.stack(views) if preprocess.ten_crop else views[0]
    return stacked.contiguous().to(device)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image (any mode) -> uint8 CHW RGB tensor, as OpenCV's 3-channel decode would see it."""
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()
