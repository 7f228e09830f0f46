"""The Caffe preprocessing against step-by-step references on real JPEG bytes."""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image

from senet_repro.transforms import INTERPOLATION, CaffePreprocess, pil_to_tensor
from senet_repro.validate.data import quiet_torchvision_io

MEAN_BGR = np.array([104.0, 117.0, 123.0])


def natural_jpeg(height: int, width: int, seed: int = 0, quality: int = 90) -> bytes:
    """JPEG bytes of a photo-like image: smooth structure, edges and noise, 4:2:0 chroma."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    pixels = np.stack(
        [
            (x * 0.7 + 40 * np.sin(y / 9)) % 256,
            (y * 0.9 + 50 * np.cos(x / 13)) % 256,
            128 + 100 * np.sign(np.sin(x / 17) * np.cos(y / 11)),
        ],
        axis=-1,
    )
    pixels = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def exact_weights(size_in: int, size_out: int) -> tuple[np.ndarray, int]:
    """Integer matrix W (out x in) and denominator d with W / d the bilinear (half-pixel) weights.

    Written independently of the implementation: the source coordinate of every output
    pixel as an exact Fraction, clamped as OpenCV clamps it.
    """
    matrix = [[Fraction(0)] * size_in for _ in range(size_out)]
    for d in range(size_out):
        source = Fraction(2 * d + 1, 2) * Fraction(size_in, size_out) - Fraction(1, 2)
        source = min(max(source, Fraction(0)), Fraction(size_in - 1))
        left = int(source)  # floor, source >= 0
        fraction = source - left
        matrix[d][left] += 1 - fraction
        matrix[d][min(left + 1, size_in - 1)] += fraction
    denominator = 2 * size_out
    integers = np.array([[int(w * denominator) for w in row] for row in matrix], dtype=np.int64)
    assert all(sum(row) == 1 for row in matrix)
    return integers, denominator


def reference_preprocess(jpeg: bytes, resize: int = 256, crop: int = 224) -> np.ndarray:
    """Caffe step by step: decode (PIL), resize the whole image, round half up, crop, BGR, minus mean."""
    rgb = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(np.int64)
    height, width = rgb.shape[:2]
    if height <= width:
        new_h, new_w = resize, resize * width // height
    else:
        new_h, new_w = resize * height // width, resize
    wy, dy = exact_weights(height, new_h)
    wx, dx = exact_weights(width, new_w)
    resized = np.empty((new_h, new_w, 3), dtype=np.int64)
    for c in range(3):
        numerator = wy @ rgb[:, :, c] @ wx.T
        resized[:, :, c] = (2 * numerator + dy * dx) // (2 * dy * dx)
    top, left = (new_h - crop) // 2, (new_w - crop) // 2
    cropped = resized[top : top + crop, left : left + crop]
    return (cropped[:, :, ::-1] - MEAN_BGR).transpose(2, 0, 1).astype(np.float32)


def decode(jpeg: bytes) -> torch.Tensor:
    """torchvision's libjpeg-turbo decode, as the harness uses it."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with quiet_torchvision_io():
        return decode_jpeg(torch.frombuffer(bytearray(jpeg), dtype=torch.uint8), mode=ImageReadMode.RGB)


@pytest.mark.parametrize("size", [(300, 400), (400, 270), (60, 45), (256, 256), (241, 512)])
def test_pixel_for_pixel_equal_to_the_step_by_step_reference(size: tuple[int, int]) -> None:
    jpeg = natural_jpeg(*size, seed=size[0])
    expected = reference_preprocess(jpeg)
    ours_pil = CaffePreprocess()(Image.open(io.BytesIO(jpeg)))
    ours_tensor = CaffePreprocess()(decode(jpeg))
    assert ours_pil.dtype == torch.float32 and ours_pil.shape == (3, 224, 224)
    np.testing.assert_array_equal(ours_pil.numpy(), expected)
    np.testing.assert_array_equal(ours_tensor.numpy(), expected)


def test_decoders_agree_and_resize_is_within_one_grey_level_of_opencv() -> None:
    """Caffe itself: cv2.imdecode (BGR), cv2.resize INTER_LINEAR, centre crop, minus mean.

    OpenCV's 8-bit bilinear uses 11-bit fixed-point weights, so it may differ from the
    exact result by one grey level; decoding is identical (both are libjpeg-turbo).
    """
    cv2 = pytest.importorskip("cv2")
    jpeg = natural_jpeg(375, 500, seed=7)
    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(bgr[:, :, ::-1], decode(jpeg).permute(1, 2, 0).numpy())
    preprocess = CaffePreprocess()
    new_h, new_w = preprocess.resized_size(375, 500)
    top, left = preprocess.crop_offset(new_h, new_w)
    resized = cv2.resize(bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    caffe = (resized[top : top + 224, left : left + 224].astype(np.float32) - MEAN_BGR).transpose(2, 0, 1)
    difference = np.abs(preprocess(decode(jpeg)).numpy() - caffe)
    print(
        f"vs OpenCV INTER_LINEAR: max {difference.max():.0f} grey level, "
        f"{(difference > 0).mean():.1%} of values differ"
    )
    assert difference.max() <= 1
    assert (difference > 0).mean() < 0.25


def test_an_antialiased_resize_would_be_a_different_protocol() -> None:
    """PIL's (and torchvision's default) bilinear widens the filter when shrinking: not Caffe's."""
    jpeg = natural_jpeg(375, 500, seed=3)
    image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    antialiased = np.asarray(image.resize((341, 256), Image.Resampling.BILINEAR)).astype(np.int64)[
        16:240, 58:282
    ]
    ours = CaffePreprocess().resize_crop(pil_to_tensor(image)).permute(1, 2, 0).numpy().astype(np.int64)
    assert np.abs(antialiased - ours).max() > 20


def test_geometry_follows_caffe() -> None:
    preprocess = CaffePreprocess()
    assert preprocess.resized_size(375, 500) == (256, 341)  # longer side truncated
    assert preprocess.resized_size(500, 375) == (341, 256)
    assert preprocess.resized_size(100, 100) == (256, 256)
    assert preprocess.crop_offset(256, 341) == (16, 58)  # (341 - 224) // 2 = 58, not round(58.5)
    assert CaffePreprocess(resize=320, crop=320).resized_size(480, 640) == (320, 426)


def test_channel_order_and_means() -> None:
    red = torch.zeros(3, 10, 20, dtype=torch.uint8)
    red[0] = 255
    out = CaffePreprocess()(red)
    assert out.shape == (3, 224, 224)
    assert torch.all(out[0] == -104) and torch.all(out[1] == -117) and torch.all(out[2] == 255 - 123)


def test_identity_when_no_resampling_is_needed() -> None:
    image = torch.randint(0, 256, (3, 256, 300), dtype=torch.uint8)
    crop = CaffePreprocess().resize_crop(image)
    assert torch.equal(crop, image[:, 16:240, 38:262])


def test_grey_images_become_three_channels() -> None:
    grey = torch.randint(0, 256, (1, 50, 40), dtype=torch.uint8)
    out = CaffePreprocess().resize_crop(grey)
    assert out.shape == (3, 224, 224) and torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="uint8"):
        CaffePreprocess()(torch.zeros(3, 10, 10))
    with pytest.raises(ValueError, match="at most resize"):
        CaffePreprocess(resize=200, crop=224)
    with pytest.raises(ValueError, match="interpolation"):
        CaffePreprocess(interpolation="bicubic")
    with pytest.raises(TypeError):
        CaffePreprocess()(np.zeros((10, 10, 3), dtype=np.uint8))  # type: ignore[arg-type]  # the point


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_same_pixels_as_cpu() -> None:
    image = decode(natural_jpeg(375, 500, seed=5))
    assert torch.equal(CaffePreprocess()(image.cuda()).cpu(), CaffePreprocess()(image))


def test_weights_descriptions_name_this_preprocessing() -> None:
    """Every model's weights description hands out exactly this preprocessing."""
    models = pytest.importorskip("senet_repro.models", reason="senet_repro.models is not available")
    jpeg = natural_jpeg(300, 400, seed=11)
    expected = reference_preprocess(jpeg)
    for name in models.list_models():
        transforms = models.weights_for(name).transforms()
        assert isinstance(transforms, CaffePreprocess), name
        assert transforms.interpolation == INTERPOLATION, name
        assert (transforms.resize, transforms.crop, transforms.mean_bgr) == (256, 224, (104.0, 117.0, 123.0))
        np.testing.assert_array_equal(transforms(Image.open(io.BytesIO(jpeg))).numpy(), expected)
