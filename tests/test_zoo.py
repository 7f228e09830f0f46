"""Model-zoo validation: Caffe's data transformation (mean file, scale, ten crops) and mean files.

The preprocessing is checked against BVLC Caffe's own DataTransformer (built by
../shared/caffe-reference/build.sh; a ten-line tool links it) and, for what its TEST phase
never does (corner crops), against a line-by-line transcription of data_transformer.cpp.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from prototxt import CaffemodelFormatError, caffe_pb2, parse_blobproto_buffer, read_blobproto
from senet_repro.transforms import CaffePreprocess

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = Path(os.environ.get("SENET_REPRO_SHARED", REPO_ROOT.parent / "shared"))
ZOO_DIR = SHARED_DIR / "caffe-zoo"
PLACES_DIR = ZOO_DIR / "places365"
CAFFE_HOME = Path(os.environ.get("CAFFE_REFERENCE_HOME", Path.home() / ".cache" / "caffe-reference"))


def require(present: bool, reason: str) -> None:
    """Skip when a shared input is absent; in CI (CI=true) its absence is a failure."""
    if present:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def write_mean_file(path: Path, mean: np.ndarray) -> Path:
    """A mean file as Caffe's compute_image_mean writes it: legacy num/channels/height/width."""
    blob = caffe_pb2.BlobProto(num=1, channels=mean.shape[0], height=mean.shape[1], width=mean.shape[2])
    blob.data.extend(mean.astype(np.float32).ravel().tolist())
    path.write_bytes(blob.SerializeToString())
    return path


# --- mean files ------------------------------------------------------------------------------


def test_blobproto_reader_keeps_caffes_shape_rules(tmp_path: Path) -> None:
    mean = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4) / 7
    array = read_blobproto(write_mean_file(tmp_path / "mean.binaryproto", mean))
    assert array.shape == (1, 2, 3, 4) and array.dtype == np.float32
    assert np.array_equal(array[0], mean)
    shaped = caffe_pb2.BlobProto(shape=caffe_pb2.BlobShape(dim=[2, 2]), double_data=[1.0, 2.0, 3.0, 4.0])
    assert parse_blobproto_buffer(shaped.SerializeToString()).tolist() == [[1.0, 2.0], [3.0, 4.0]]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (caffe_pb2.BlobProto(num=1, channels=3, height=2, width=2, data=[1.0]).SerializeToString(), "shape"),
        (caffe_pb2.NetParameter(name="net").SerializeToString(), "no blob values"),
        (b"\xff\xff\xff", "truncated"),
    ],
)
def test_blobproto_reader_refuses_what_is_not_a_blob(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.binaryproto"
    path.write_bytes(content)
    with pytest.raises(CaffemodelFormatError, match=message) as raised:
        read_blobproto(path)
    assert str(path) in str(raised.value)


def test_places365_mean_file_reads_as_published() -> None:
    mean_file = PLACES_DIR / "places365CNN_mean.binaryproto"
    require(mean_file.is_file(), f"{mean_file} is not there (../shared/caffe-zoo/places365/)")
    mean = read_blobproto(mean_file)
    assert mean.shape == (1, 3, 256, 256)  # the README: BlobProto 1x3x256x256, BGR
    per_channel = mean[0].reshape(3, -1).mean(axis=1)
    assert np.all((per_channel > 90) & (per_channel < 130)), per_channel  # a mean of 8-bit photos
    preprocess = CaffePreprocess(resize_mode="warp", crop=227, mean_bgr=None, mean_file=str(mean_file))
    mean_image = preprocess.mean_image()
    assert mean_image is not None and mean_image.shape == (3, 256, 256)


# --- DataTransformer semantics ---------------------------------------------------------------


def transformer_transcription(
    bgr: np.ndarray, mean: np.ndarray, crop: int, scale: float, h_off: int, w_off: int, mirror: bool
) -> np.ndarray:
    """DataTransformer<float>::Transform(const Datum&, Dtype*) of data_transformer.cpp, loop for loop.

    `h_off`/`w_off` are fixed where Caffe's TRAIN phase draws them at random; the arithmetic
    is float32 as in `Dtype = float`.
    """
    channels, height, width = bgr.shape
    data, mean_flat = bgr.ravel(), mean.astype(np.float32).ravel()
    out = np.zeros(channels * crop * crop, dtype=np.float32)
    for c in range(channels):
        for h in range(crop):
            for w in range(crop):
                data_index = (c * height + h_off + h) * width + w_off + w
                top_index = (c * crop + h) * crop + ((crop - 1 - w) if mirror else w)
                element = np.float32(data[data_index])
                out[top_index] = (element - mean_flat[data_index]) * np.float32(scale)
    return out.reshape(channels, crop, crop)


@pytest.fixture
def small_case(tmp_path: Path) -> tuple[torch.Tensor, np.ndarray, Path]:
    """A 3x11x11 RGB image and a 3x11x11 BGR mean image with fractional values, as a mean file."""
    rng = np.random.default_rng(7)
    image = torch.from_numpy(rng.integers(0, 256, (3, 11, 11), dtype=np.uint8))
    mean = (rng.random((3, 11, 11)) * 255).astype(np.float32)
    return image, mean, write_mean_file(tmp_path / "mean.binaryproto", mean)


def test_ten_crops_follow_data_transformer_at_each_views_offset(small_case) -> None:
    """Corners, centre and mirrors: each view is DataTransformer's output at that view's offset."""
    image, mean, mean_file = small_case
    preprocess = CaffePreprocess(
        resize=11,
        crop=6,
        resize_mode="warp",
        mean_bgr=None,
        mean_file=str(mean_file),
        scale=0.017,
        ten_crop=True,
    )
    views = preprocess.views(11, 11)
    # caffe.io.oversample: corners (row-major), centre, then the same five mirrored.
    corners_and_centre = [(0, 0), (0, 5), (5, 0), (5, 5), (2, 2)]
    assert views == tuple((top, left, m) for m in (False, True) for top, left in corners_and_centre)
    crops = preprocess.resize_views(image)  # an 11x11 image warped to 11x11 is itself
    assert crops.shape == (10, 3, 6, 6) and crops.dtype == torch.uint8
    ours = preprocess.normalize(crops.unsqueeze(0))[0].numpy()
    bgr = image.flip(0).numpy()
    for index, (top, left, mirrored) in enumerate(views):
        expected = transformer_transcription(bgr, mean, 6, 0.017, top, left, mirrored)
        np.testing.assert_array_equal(ours[index], expected, err_msg=f"view {index}")


def test_mean_values_scale_and_channel_order(small_case) -> None:
    image, _, _ = small_case
    preprocess = CaffePreprocess(
        resize=11, crop=5, resize_mode="warp", mean_bgr=(103.94, 116.78, 123.68), scale=0.017
    )
    out = preprocess(image).numpy()
    bgr = image.flip(0).numpy()[:, 3:8, 3:8].astype(np.float32)
    mean = np.array([103.94, 116.78, 123.68], dtype=np.float32).reshape(3, 1, 1)
    np.testing.assert_array_equal(out, (bgr - mean) * np.float32(0.017))
    rgb = CaffePreprocess(
        resize=11,
        crop=5,
        resize_mode="warp",
        mean_bgr=(103.94, 116.78, 123.68),
        scale=0.017,
        channel_order="RGB",
    )(image)
    assert torch.equal(rgb, torch.from_numpy(out).flip(0))
    single = CaffePreprocess(resize=11, crop=5, resize_mode="warp", mean_bgr=(128.0,))(image)
    assert torch.equal(single, image.flip(0)[:, 3:8, 3:8].float() - 128)


def test_warp_and_shorter_side_geometry() -> None:
    warp = CaffePreprocess(resize=256, crop=227, resize_mode="warp")
    assert warp.resized_size(375, 500) == (256, 256) and warp.crop_offset(256, 256) == (14, 14)
    shorter = CaffePreprocess(resize=256, crop=224, ten_crop=True)
    assert shorter.resized_size(375, 500) == (256, 341)
    views = shorter.views(256, 341)
    assert [v[:2] for v in views[:5]] == [(0, 0), (0, 117), (32, 0), (32, 117), (16, 58)]
    image = torch.randint(0, 256, (3, 30, 40), dtype=torch.uint8)
    small = CaffePreprocess(resize=16, crop=12, ten_crop=True)
    crops = small.resize_views(image)
    assert torch.equal(crops[4], small.resize_crop(image))  # view 4 is the centre crop
    assert torch.equal(crops[9], crops[4].flip(2))  # view 9 its mirror


def test_mean_file_needs_an_image_of_its_size(small_case) -> None:
    _, mean, mean_file = small_case
    with pytest.raises(ValueError, match="warped to exactly that size"):
        CaffePreprocess(resize=11, crop=6, mean_bgr=None, mean_file=str(mean_file))  # shorter side
    with pytest.raises(ValueError, match="warped to exactly that size"):
        CaffePreprocess(resize=12, crop=6, resize_mode="warp", mean_bgr=None, mean_file=str(mean_file))
    crop_sized = CaffePreprocess(resize=16, crop=11, mean_bgr=None, mean_file=str(mean_file), ten_crop=True)
    crops = torch.randint(0, 256, (1, 10, 3, 11, 11), dtype=torch.uint8)  # pycaffe: the same mean for every view
    expected = crops.flip(2).float() - torch.from_numpy(mean)
    assert torch.equal(crop_sized.normalize(crops), expected)
    with pytest.raises(ValueError, match="not both"):
        CaffePreprocess(resize=11, crop=6, resize_mode="warp", mean_file=str(mean_file))


def transform_reference(tmp_path: Path) -> Path:
    """Compile tests/transform_reference.cpp against the reference Caffe's libcaffe."""
    library = CAFFE_HOME / "build" / "lib" / "libcaffe.so"
    compiler = shutil.which("c++")
    require(
        library.is_file() and compiler is not None,
        f"the BVLC Caffe reference is not built ({library}; ../shared/caffe-reference/build.sh) or no c++",
    )
    tool = tmp_path / "transform_reference"
    includes = [CAFFE_HOME / "build" / "include", CAFFE_HOME / "build", CAFFE_HOME / "src" / "include"]
    command = [
        str(compiler), "-std=gnu++14", "-O1", "-DCPU_ONLY", *(f"-I{path}" for path in includes),
        str(REPO_ROOT / "tests" / "transform_reference.cpp"), "-o", str(tool), str(library),
        f"-Wl,-rpath,{library.parent}", "-lglog", "-lgflags", "-lprotobuf", "-lboost_system",
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    return tool


@pytest.mark.slow
def test_mean_file_crop_equals_bvlc_caffe(small_case, tmp_path: Path) -> None:
    """Centre crop, mean image cropped with it, scale, and mirroring: Caffe's own DataTransformer."""
    image, _, mean_file = small_case
    tool = transform_reference(tmp_path)
    bgr = image.flip(0).numpy()
    (tmp_path / "in.u8").write_bytes(np.ascontiguousarray(bgr).tobytes())
    runs = 16  # with mirror, Caffe flips a (seeded) coin per run: both outcomes appear
    subprocess.run(
        [str(tool), str(mean_file), "6", "0.017", "1", str(runs), str(tmp_path / "in.u8"), "3", "11", "11",
         str(tmp_path / "out.f32")],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    caffe = np.fromfile(tmp_path / "out.f32", dtype=np.float32).reshape(runs, 3, 6, 6)
    preprocess = CaffePreprocess(
        resize=11,
        crop=6,
        resize_mode="warp",
        mean_bgr=None,
        mean_file=str(mean_file),
        scale=0.017,
        ten_crop=True,
    )
    ours = preprocess.normalize(preprocess.resize_views(image).unsqueeze(0))[0].numpy()
    centre, mirrored = ours[4], ours[9]
    matches = [np.array_equal(run, centre) or np.array_equal(run, mirrored) for run in caffe]
    assert all(matches), "a Caffe output equals neither our centre view nor its mirror"
    assert any(np.array_equal(run, centre) for run in caffe) and any(
        np.array_equal(run, mirrored) for run in caffe
    )
