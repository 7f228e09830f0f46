"""Model-zoo validation: Caffe's data transformation (mean file, scale, ten crops) and mean files.

The preprocessing is checked against BVLC Caffe's own DataTransformer (built by
`make caffe-reference`; tests/transform_reference.cpp links it) and, for what its TEST phase
never does (corner crops), against a line-by-line transcription of data_transformer.cpp.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from prototxt import CaffemodelFormatError, caffe_pb2, parse_blobproto_buffer, read_blobproto
from senet_repro.transforms import CaffePreprocess
from tests.caffe_reference import REFERENCE_HOME, require_reference
from tests.conftest import CAFFE_ZOO_DIR, require_shared

PLACES_DIR = CAFFE_ZOO_DIR / "places365"


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
    mean_file = require_shared(PLACES_DIR / "places365CNN_mean.binaryproto", "the Places365 mean file")
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
    ours = preprocess.normalise(crops.unsqueeze(0))[0].numpy()
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
    crops = torch.randint(
        0, 256, (1, 10, 3, 11, 11), dtype=torch.uint8
    )  # pycaffe: the same mean for every view
    expected = crops.flip(2).float() - torch.from_numpy(mean)
    assert torch.equal(crop_sized.normalise(crops), expected)
    with pytest.raises(ValueError, match="not both"):
        CaffePreprocess(resize=11, crop=6, resize_mode="warp", mean_file=str(mean_file))


def transform_reference(tmp_path: Path) -> Path:
    """Compile tests/transform_reference.cpp against the reference Caffe's libcaffe."""
    require_reference()
    library = REFERENCE_HOME / "build" / "lib" / "libcaffe.so"
    compiler = shutil.which("c++")
    assert library.is_file() and compiler is not None, "the reference build leaves libcaffe and needs c++"
    tool = tmp_path / "transform_reference"
    includes = [
        REFERENCE_HOME / "build" / "include",
        REFERENCE_HOME / "build",
        REFERENCE_HOME / "src" / "include",
    ]
    command = [
        str(compiler), "-std=gnu++14", "-O1", "-DCPU_ONLY", *(f"-I{path}" for path in includes),
        str(Path(__file__).with_name("transform_reference.cpp")), "-o", str(tool), str(library),
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
    ours = preprocess.normalise(preprocess.resize_views(image).unsqueeze(0))[0].numpy()
    centre, mirrored = ours[4], ours[9]
    matches = [np.array_equal(run, centre) or np.array_equal(run, mirrored) for run in caffe]
    assert all(matches), "a Caffe output equals neither our centre view nor its mirror"
    assert any(np.array_equal(run, centre) for run in caffe) and any(
        np.array_equal(run, mirrored) for run in caffe
    )


# --- a Places365-style set, end to end ---------------------------------------------------------

SCENE_NET = """\
name: "scene365"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 24 dim: 24 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 16 kernel_size: 3 stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc365" type: "InnerProduct" bottom: "pool1" top: "fc365"
        inner_product_param { num_output: 365 } }
layer { name: "prob" type: "Softmax" bottom: "fc365" top: "prob" }
"""
# Where each image's label sits among the network's ranked classes: top-1, within top-5
# (ranks 1..4) or outside it. 7 of 20 are top-1 wrong, 3 of 20 top-5 wrong.
SCENE_RANKS = [0, 0, 2, 0, 0, 4, 0, 0, 364, 0, 1, 0, 0, 0, 200, 0, 3, 0, 9, 0]


@pytest.fixture(scope="module")
def scene_set(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A random-weight 365-way net (converted generically) and 20 photos-like JPEGs of odd sizes."""
    from PIL import Image

    from prototxt import load_net, parse_prototxt_text, write_caffemodel
    from prototxt.random_weights import random_blobs

    root = tmp_path_factory.mktemp("scenes")
    prototxt = root / "deploy_scene365.prototxt"
    prototxt.write_text(SCENE_NET)
    caffemodel = root / "scene365.caffemodel"
    write_caffemodel(caffemodel, parse_prototxt_text(SCENE_NET), random_blobs(load_net(prototxt), seed=3))
    rng = np.random.default_rng(11)
    (root / "val").mkdir()
    for index in range(len(SCENE_RANKS)):
        height, width = int(rng.integers(30, 60)), int(rng.integers(30, 60))
        coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)  # smooth colour fields survive JPEG
        pixels = np.array(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR))
        Image.fromarray(pixels).save(root / "val" / f"Places365_val_{index + 1:08d}.jpg", quality=95)
    mean = (rng.random((3, 28, 28)) * 40 + 100).astype(np.float32)
    write_mean_file(root / "scene_mean.binaryproto", mean)
    (root / "categories.txt").write_text("".join(f"/s/scene_{k:03d} {k}\n" for k in range(365)))
    return {
        "root": root,
        "prototxt": prototxt,
        "caffemodel": caffemodel,
        "mean": root / "scene_mean.binaryproto",
    }


def scene_scores(scene_set: dict[str, Path], preprocess: CaffePreprocess) -> list[np.ndarray]:
    """Per image, the mean over its views of the converted net's softmax, computed image by image."""
    from converter import convert_caffe
    from senet_repro.validate import read_image

    net = convert_caffe(scene_set["prototxt"], scene_set["caffemodel"], outputs=["prob"]).eval()
    scores = []
    with torch.no_grad():
        for path in sorted((scene_set["root"] / "val").iterdir()):
            views = preprocess(read_image(path))
            scores.append(net(views if preprocess.ten_crop else views[None]).double().mean(dim=0).numpy())
    return scores


def write_scene_list(scene_set: dict[str, Path], scores: list[np.ndarray]) -> Path:
    """A Caffe image list whose label for image i is the class ranked SCENE_RANKS[i] by the net."""
    lines = []
    for index, (rank, score) in enumerate(zip(SCENE_RANKS, scores)):
        ranked = np.argsort(-score, kind="stable")
        gap = np.sort(score)[::-1]
        # ONNX Runtime's float32 differs from PyTorch's by ~1e-9 in these probabilities
        assert rank == 364 or gap[rank] - gap[rank + 1] > 1e-7, "a near tie would make the rank fragile"
        lines.append(f"val/Places365_val_{index + 1:08d}.jpg {int(ranked[rank])}\n")
    listing = scene_set["root"] / "places365_val.txt"
    listing.write_text("".join(reversed(lines)))  # any order: the harness sorts by file name
    return listing


@pytest.mark.slow
def test_places365_style_set_with_ten_crops_and_a_mean_file(scene_set, tmp_path: Path) -> None:
    """Any label set: a Caffe list over 365 classes, mean file, scale, ten crops; exact error counts."""
    from click.testing import CliRunner

    from senet_repro.cli.validate import main as validate_cli

    preprocess = CaffePreprocess(
        resize=28, resize_mode="warp", crop=24, mean_bgr=None, mean_file=str(scene_set["mean"]), scale=0.017,
        ten_crop=True,
    )  # fmt: skip
    listing = write_scene_list(scene_set, scene_scores(scene_set, preprocess))
    top1_wrong = sum(rank >= 1 for rank in SCENE_RANKS)
    top5_wrong = sum(rank >= 5 for rank in SCENE_RANKS)
    common = [
        "--backend", "graph", "--prototxt", str(scene_set["prototxt"]),
        "--weights", str(scene_set["caffemodel"]), "--data", str(scene_set["root"]),
        "--layout", "list", "--labels", str(listing), "--device", "cpu",
        "--workers", "0", "--batch-size", "30",
    ]  # fmt: skip
    flags = [
        "--resize", "28", "--resize-mode", "warp", "--crop", "24", "--mean-file", str(scene_set["mean"]),
        "--scale", "0.017", "--ten-crop", "--label-set", str(scene_set["root"] / "categories.txt"),
    ]  # fmt: skip
    report = tmp_path / "report.json"
    expected = (20, 20 - top1_wrong, 20 - top5_wrong)
    result = CliRunner().invoke(validate_cli, [*common, *flags, "--report", str(report)])
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())["results"]
    assert (data["images"], data["top1_correct"], data["top5_correct"]) == expected

    from converter import convert_caffe
    from converter.onnx_export import export_onnx

    onnx = export_onnx(
        convert_caffe(scene_set["prototxt"], scene_set["caffemodel"], outputs=["fc365"]).eval(),
        tmp_path / "scene365.onnx",
        torch.zeros(2, 3, 24, 24),
        output_names=["fc365"],
    )
    onnx_run = [*common[6:], "--backend", "onnxruntime", "--weights", str(onnx)]
    result = CliRunner().invoke(validate_cli, [*onnx_run, *flags, "--report", str(report), "--force"])
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())["results"]
    assert (data["images"], data["top1_correct"], data["top5_correct"]) == expected

    card: dict[str, Any] = {
        "name": "scene365", "title": "a Places365-style test net",
        "prototxt": "here:deploy_scene365.prototxt", "caffemodel": "scene365.caffemodel",
        "labels": {"set": "places365", "classes": 365, "names": "categories.txt"},
        "preprocess": {"resize": 28, "resize_mode": "warp", "crop": 24, "mean_bgr": None,
                       "mean_file": "scene_mean.binaryproto", "scale": 0.017, "ten_crop": True},
        "preprocess_source": "this test",
        "published": [{"protocol": "10-crop", "metric": "error", "top1": 100 * top1_wrong / 20,
                       "top5": 100 * top5_wrong / 20, "source": "this test"}],
    }  # fmt: skip
    card_file = tmp_path / "scene365.json"
    card_file.write_text(json.dumps(card))
    result = CliRunner().invoke(
        validate_cli, [*common, "--card", str(card_file), "--check", "--tolerance", "0"]
    )
    assert result.exit_code == 0 and "PASS" in result.output, (
        result.output
    )  # mean file found beside the weights
    card["published"][0]["top1"] += 5  # one image's worth
    card_file.write_text(json.dumps(card))
    result = CliRunner().invoke(
        validate_cli, [*common, "--card", str(card_file), "--check", "--tolerance", "0"]
    )
    assert result.exit_code == 1 and "FAIL" in result.output, result.output
    result = CliRunner().invoke(validate_cli, [*common, "--card", str(card_file), "--centre-crop", "--check"])
    assert result.exit_code == 2 and "10-crop" in result.output, result.output  # no figure for one crop


def test_a_list_label_beyond_the_label_set_is_refused(scene_set, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from senet_repro.cli.validate import main as validate_cli

    listing = tmp_path / "list.txt"
    listing.write_text("val/Places365_val_00000001.jpg 365\n")
    result = CliRunner().invoke(
        validate_cli,
        ["--backend", "graph", "--prototxt", str(scene_set["prototxt"]),
         "--weights", str(scene_set["caffemodel"]), "--data", str(scene_set["root"]),
         "--layout", "list", "--labels", str(listing),
         "--label-set", str(scene_set["root"] / "categories.txt"), "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 2 and "label 365, but the label set has 365 classes" in result.output, (
        result.output
    )


# --- model cards -------------------------------------------------------------------------------


def zoo_sources() -> dict[str, Path]:
    """repository@commit:path -> the file in ../shared/caffe-zoo, from its README's tables."""
    readme = require_shared(CAFFE_ZOO_DIR / "README.md", "the caffe-zoo README")
    sources = {}
    text = readme.read_text()
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].endswith(".prototxt") and "@" in cells[1]:
            sources[cells[1]] = CAFFE_ZOO_DIR / cells[0]
    places = re.search(r"From (CSAILVision/places365@[0-9a-f]{40}):", text)
    assert places, "the README names the Places365 commit"
    for path in PLACES_DIR.glob("deploy_*.prototxt"):
        sources[f"{places.group(1)}:{path.name}"] = path
    return sources


def test_shipped_cards_reference_the_real_files() -> None:
    """Each card's deploy prototxt (where ../shared holds it) has the card's input size and class count."""
    from prototxt import load_net
    from senet_repro.validate.cards import shipped_cards

    sources = zoo_sources()
    checked = []
    for card in shipped_cards().values():
        if card.prototxt not in sources:
            continue
        net = load_net(sources[card.prototxt])
        crop = card.preprocess["crop"]
        assert tuple(net.inputs.values())[0][1:] == (3, crop, crop), card.name
        assert net.layers[-1].top_shapes[0][1] == card.num_classes, card.name
        checked.append(card.name)
    assert {"bvlc_alexnet", "bvlc_googlenet", "resnet50", "squeezenet_v1.1", "places365_vgg16"} <= set(
        checked
    )


def test_places365_cards_use_the_released_mean_and_categories() -> None:
    from senet_repro.validate.cards import shipped_cards
    from senet_repro.validate.data import read_label_set

    require_shared(PLACES_DIR, "the Places365 files")
    cards = shipped_cards()
    for name in ("places365_alexnet", "places365_vgg16", "places365_resnet152"):
        card = cards[name]
        assert card.class_names is not None and card.mean_file is not None, name
        assert len(read_label_set(PLACES_DIR / card.class_names)) == card.num_classes == 365
        assert (PLACES_DIR / card.mean_file).is_file(), card.mean_file
        card.transforms(PLACES_DIR / card.mean_file)  # the mean image fits the card's geometry
    resnet = cards["places365_resnet152"]
    figure = resnet.published_for(resnet.transforms(PLACES_DIR / "places365CNN_mean.binaryproto"))
    assert figure is not None and figure.protocol == "10-crop" and figure.top1_error is None
    assert figure.top5_error == pytest.approx(100 - 85.08)


def test_card_figures_are_quoted_from_their_source(tmp_path: Path) -> None:
    """Every published number appears in the quote from where it is published; protocols resolve."""
    from senet_repro.validate.cards import CARDS_FILE, shipped_cards

    records = json.loads(CARDS_FILE.read_text())
    assert len(records) == len(shipped_cards()) >= 11
    for record in records:
        for figure in record["published"]:
            assert figure["source"].startswith("https://"), record["name"]
            quoted = {float(number) for number in re.findall(r"(\d+(?:\.\d+)?)%", figure["quote"])}
            for key in ("top1", "top5"):
                if key in figure:
                    assert figure[key] in quoted, (record["name"], key, quoted)
    mean_file = write_mean_file(
        tmp_path / "imagenet_mean.binaryproto", np.full((3, 256, 256), 110, np.float32)
    )
    alexnet = shipped_cards()["bvlc_alexnet"]
    preprocess = alexnet.transforms(mean_file)
    assert (preprocess.resize_mode, preprocess.crop, preprocess.mean_bgr) == ("warp", 227, None)
    centre = alexnet.published_for(preprocess)
    assert centre is not None and centre.top1_error == pytest.approx(42.9)
    assert alexnet.published_for(alexnet.transforms(mean_file, ten_crop=True)) is None  # only centre crop
    resnet = shipped_cards()["resnet50"]
    crop_mean = write_mean_file(tmp_path / "ResNet_mean.binaryproto", np.full((3, 224, 224), 110, np.float32))
    ten = resnet.published_for(resnet.transforms(crop_mean, ten_crop=True))
    assert ten is not None and (ten.top1_error, ten.top5_error) == (22.9, 6.7)
    assert shipped_cards()["vgg16"].published_for(shipped_cards()["vgg16"].transforms()) is None  # dense only


def test_bad_cards_are_refused(tmp_path: Path) -> None:
    from senet_repro.validate import ValidateError
    from senet_repro.validate.cards import find_card

    with pytest.raises(ValidateError, match="no model card 'nope'"):
        find_card("nope")
    path = tmp_path / "card.json"
    base: dict[str, Any] = {"name": "x", "title": "x", "prototxt": "p", "caffemodel": "c", "preprocess": {},
            "preprocess_source": "s", "labels": {"set": "imagenet-1k", "classes": 1000}}  # fmt: skip
    path.write_text(json.dumps(base))
    with pytest.raises(ValidateError, match="names its class order"):
        find_card(str(path))
    path.write_text(json.dumps({**base, "labels": {**base["labels"], "class_order": "torchvision"},
                                "published": [{"metric": "accuracy", "top1": 57.1}]}))  # fmt: skip
    with pytest.raises(ValidateError, match="needs its 'source'"):
        find_card(str(path))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("val/missing.jpg 3\n", "lists 1 image(s) not found"),
        ("val/a.jpg\n", "expected 'relative/path label'"),
        ("val/a.jpg -1\n", "expected 'relative/path label'"),
        ("val/a.jpg ３\n", "expected 'relative/path label'"),  # a full-width digit is not a label
        ("\n\n", "lists no images"),
    ],
)
def test_bad_image_lists_are_refused_in_one_line(tmp_path: Path, content: str, message: str) -> None:
    from senet_repro.validate import ValidateError, open_valset

    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "a.jpg").write_bytes(b"")
    listing = tmp_path / "list.txt"
    listing.write_text(content, encoding="utf-8")
    with pytest.raises(ValidateError, match=re.escape(message)):
        open_valset(tmp_path, layout="list", labels_file=listing)


def test_image_list_with_spaces_and_bom_and_label_sets(tmp_path: Path) -> None:
    """Caffe splits a list line at its last space; a BOM is not part of the first name."""
    from senet_repro.validate import ValidateError, open_valset
    from senet_repro.validate.data import OUTPUT_ORDER, read_label_set

    (tmp_path / "my photos").mkdir()
    for name in ("b 1.jpg", "a.jpg"):
        (tmp_path / "my photos" / name).write_bytes(b"")
    listing = tmp_path / "list.txt"
    listing.write_text("\ufeffmy photos/b 1.jpg 7\r\nmy photos/a.jpg 364\r\n", encoding="utf-8")
    valset = open_valset(tmp_path, layout="list", labels_file=listing)
    assert [path.name for path in valset.paths] == ["a.jpg", "b 1.jpg"] and valset.labels == (364, 7)
    assert valset.label_order == OUTPUT_ORDER
    with pytest.raises(ValidateError, match="needs --labels"):
        open_valset(tmp_path, layout="list")
    names = tmp_path / "names.txt"
    names.write_text("/a/airfield 0\n/a/airplane_cabin 1\n")
    assert read_label_set(names) == ("/a/airfield", "/a/airplane_cabin")
    names.write_text("/a/airfield 0\n/a/airplane_cabin 2\n")
    with pytest.raises(ValidateError, match="class index 2, expected 1"):
        read_label_set(names)
    names.write_bytes(b"\xff\xfe/a/airfield 0\n")
    with pytest.raises(ValidateError, match="not UTF-8"):
        read_label_set(names)


@pytest.mark.slow
def test_a_shipped_card_runs_its_real_deploy_prototxt(tmp_path: Path) -> None:
    """--card squeezenet_v1.1 on the released deploy prototxt (random weights) runs the card's protocol."""
    from click.testing import CliRunner

    from prototxt import load_net, parse_prototxt, write_caffemodel
    from prototxt.random_weights import random_blobs
    from senet_repro.cli.validate import main as validate_cli
    from senet_repro.validate.fake_imagenet import make_fake_imagenet

    prototxt = require_shared(CAFFE_ZOO_DIR / "squeezenet_v1.1.prototxt", "SqueezeNet v1.1's deploy prototxt")
    caffemodel = tmp_path / "squeezenet_v1.1.caffemodel"
    write_caffemodel(caffemodel, parse_prototxt(prototxt), random_blobs(load_net(prototxt), seed=1))
    fake = make_fake_imagenet(tmp_path / "imagenet", num_classes=2, images_per_class=2)
    report = tmp_path / "report.json"
    arguments = [
        "--card", "squeezenet_v1.1", "--backend", "graph", "--prototxt", str(prototxt),
        "--weights", str(caffemodel), "--data", str(fake.layouts["flat"]), "--device", "cpu",
        "--workers", "0", "--report", str(report),
    ]  # fmt: skip
    result = CliRunner().invoke(validate_cli, arguments)
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["card"] == "squeezenet_v1.1" and data["class_order"] == "torchvision"
    preprocessing = data["preprocessing"]
    assert (preprocessing["resize_mode"], preprocessing["resize"], preprocessing["crop"]) == (
        "warp",
        256,
        227,
    )
    assert preprocessing["mean_bgr"] == [104, 117, 123] and data["results"]["images"] == 4
    result = CliRunner().invoke(validate_cli, [*arguments[:-2], "--check"])
    assert result.exit_code == 2 and "squeezenet_v1.1 publishes: none" in result.output, result.output
