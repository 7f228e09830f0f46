"""The SSD fork's layers (weiliu89/caffe, branch ssd): Permute, Normalize, PriorBox, DetectionOutput.

BVLC Caffe lacks these layers, so the references are OpenCV's Caffe importer (which runs
SSD nets) and, where OpenCV departs from the fork, a plain-Python replay of the fork's
own code (bbox_util.cpp's ApplyNMSFast, DecodeBBox, DetectionOutputLayer::Forward_cpu)
written here without torch or torchvision. OpenCV 4.x departs from the fork in four
ways, each checked against the replay instead: it ignores `nms_param.eta`, has no
CORNER_SIZE code, pads its output to keep_top_k rows of zeros, and writes zeros (the fork
writes [image, -1, ...]) when nothing is detected.

Tolerances. Detection labels, scores and row sets are compared exactly: given equal
inputs both sides make the same float32 decisions. Box corners may differ by 2 float32
ulps of values up to 2 (4.8e-7): OpenCV evaluates `center - size / 2` and `exp` in float,
the fork (and we) in double rounded to float, each a half-ulp rounding, twice.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import onnxlower
from converter import convert
from converter.calibrate import image_like
from converter.onnx_export import compare_onnx, export_onnx
from converter.serialize import load_converted, save_converted
from converter.ssd import DetectionOutput, decode_boxes
from prototxt import ConversionError, NetDefinitionError, load_net
from senet_repro.cli.convert import main
from tests.caffe_factory import make_random_caffemodel
from tests.cli_assertions import assert_one_line_error
from tests.conftest import CAFFE_ZOO_DIR, require_shared
from tests.test_converter_ops import TinyNet

cv2 = pytest.importorskip("cv2")

BOX_ULPS = 2 * 2.0**-22  # 2 float32 ulps at magnitude 2 (see the module docstring)
F32 = np.float32


def float32_bound(terms: int) -> float:
    """Relative error bound of a float32 result built from a sum of `terms` values and 3 more
    roundings (square root, division, scale): (terms + 3) unit roundoffs."""
    return (terms + 3) * 2.0**-24


def assert_same_detections(ours: np.ndarray, theirs: np.ndarray) -> None:
    ours, theirs = DetectionOutput.comparable(ours), DetectionOutput.comparable(theirs)
    assert ours.shape == theirs.shape, f"{len(ours)} detections, reference {len(theirs)}"
    np.testing.assert_array_equal(ours[:, :3], theirs[:, :3])
    np.testing.assert_allclose(ours[:, 3:], theirs[:, 3:], rtol=0, atol=BOX_ULPS)


# --- Permute and Normalize ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("order", "axes"),
    [("order: 0 order: 2 order: 3 order: 1", (0, 2, 3, 1)), ("order: 0 order: 3", (0, 3, 1, 2))],
)
def test_permute_names_unlisted_axes_last(tmp_path: Path, order: str, axes: tuple[int, ...]) -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    net = TinyNet(
        tmp_path,
        {"data": x},
        f'layer {{ name: "p" type: "Permute" bottom: "data" top: "p" permute_param {{ {order} }} }}',
    )
    (ours,) = net.ours("p")
    np.testing.assert_array_equal(ours, x.astype(F32).transpose(axes))
    if len(order.split()) == 2 * len(axes):  # OpenCV takes only complete orders
        np.testing.assert_array_equal(net.opencv("p")[0], ours)


def normalize_reference(x: np.ndarray, scale: np.ndarray, across_spatial: bool, eps: float) -> np.ndarray:
    """normalize_layer.cpp in float64: x / sqrt(sum x^2 + eps) over C*H*W or over C, times scale."""
    x = x.astype(np.float64)
    axes = (1, 2, 3) if across_spatial else (1,)
    norm = np.sqrt((x * x).sum(axis=axes, keepdims=True) + eps)
    return x / norm * scale.astype(np.float64).reshape(-1, 1, 1)


@pytest.mark.parametrize("across_spatial", [True, False])
@pytest.mark.parametrize("channel_shared", [True, False])
def test_normalize_matches_the_fork_and_opencv(
    tmp_path: Path, across_spatial: bool, channel_shared: bool
) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 4, 5)).astype(F32)
    x[0, :, 0, 0] = 0  # a position whose norm is eps alone
    scale = rng.uniform(0.5, 20, () if channel_shared else (3,)).astype(F32)
    eps = 1e-3  # large enough to matter in the zero position
    layer = (
        f'layer {{ name: "n" type: "Normalize" bottom: "data" top: "n" norm_param {{ across_spatial: '
        f"{str(across_spatial).lower()} channel_shared: {str(channel_shared).lower()} eps: {eps} }} }}"
    )
    # A shared scale is written as shape (1,): OpenCV cannot read the fork's 0-axis blob.
    net = TinyNet(tmp_path, {"data": x}, layer, {"n": [scale.reshape(-1)]})
    (ours,) = net.ours("n")
    expected = normalize_reference(x, scale, across_spatial, float(F32(eps)))
    bound = float32_bound(3 * 4 * 5 if across_spatial else 3) * float(np.abs(expected).max())
    np.testing.assert_allclose(ours, expected, rtol=0, atol=bound)
    if channel_shared or not across_spatial:  # OpenCV rejects per-channel scales across space
        np.testing.assert_allclose(net.opencv("n")[0], ours, rtol=0, atol=2 * bound)


# --- PriorBox -------------------------------------------------------------------------------

PRIOR_CASES = {
    "ssd300-conv4_3": "min_size: 30 max_size: 60 aspect_ratio: 2 flip: true clip: false "
    "variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step: 8",
    "two-sizes-no-flip-clip": "min_size: 20 min_size: 50 max_size: 40 max_size: 90 "
    "aspect_ratio: 2 aspect_ratio: 3 aspect_ratio: 2 flip: false clip: true variance: 0.1",
    "steps-offset": "min_size: 64 aspect_ratio: 0.5 step_h: 12 step_w: 20 offset: 0.25 "
    "variance: 0.2 clip: false",
    "one-size": "min_size: 16 variance: 0.1",  # OpenCV needs the variance that the fork defaults
}


@pytest.mark.parametrize("params", PRIOR_CASES.values(), ids=PRIOR_CASES.keys())
def test_prior_box_matches_opencv(tmp_path: Path, params: str) -> None:
    inputs = {"feature": np.zeros((1, 2, 5, 7), F32), "data": np.zeros((1, 3, 90, 120), F32)}
    layer = (
        'layer { name: "pb" type: "PriorBox" bottom: "feature" bottom: "data" top: "pb" '
        f"prior_box_param {{ {params} }} }}"
    )
    net = TinyNet(tmp_path, inputs, layer)
    (ours,) = net.ours("pb")
    (theirs,) = net.opencv("pb")
    assert ours.shape == theirs.shape == tuple(load_net(net.prototxt).blob_shapes["pb"])
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=BOX_ULPS)


def test_prior_box_img_size_replaces_the_image(tmp_path: Path) -> None:
    """img_h/img_w stand for the image's size (OpenCV ignores them, so no OpenCV here)."""

    def priors(image_hw: tuple[int, int], params: str) -> np.ndarray:
        inputs = {"feature": np.zeros((1, 2, 5, 7), F32), "data": np.zeros((1, 3, *image_hw), F32)}
        layer = (
            'layer { name: "pb" type: "PriorBox" bottom: "feature" bottom: "data" top: "pb" '
            f"prior_box_param {{ min_size: 32 max_size: 48 aspect_ratio: 3 {params} }} }}"
        )
        directory = tmp_path / f"{image_hw[0]}x{image_hw[1]}{params.replace(' ', '')}"
        directory.mkdir()
        return TinyNet(directory, inputs, layer).ours("pb")[0]

    np.testing.assert_array_equal(priors((90, 120), "img_h: 96 img_w: 128"), priors((96, 128), ""))
    assert not np.array_equal(priors((40, 40), "img_size: 96"), priors((40, 40), ""))


def test_prior_box_by_hand(tmp_path: Path) -> None:
    """One 1x1 cell of a 300x300 image: centre 150; boxes of min_size 60, sqrt(60*150), and
    60*sqrt(2) x 60/sqrt(2) (ratio boxes take min_size's area, with or without max_size).
    min_size 60.9 is read as int 60 by the fork's Forward; the variance defaults to 0.1; box
    sides are floats, corners computed in double (kept by float64 nets)."""
    inputs = {"feature": np.zeros((1, 1, 1, 1), F32), "data": np.zeros((1, 3, 300, 300), F32)}
    layer = (
        'layer { name: "pb" type: "PriorBox" bottom: "feature" bottom: "data" top: "pb" '
        "prior_box_param { min_size: 60.9 max_size: 150 aspect_ratio: 2 flip: false } }"
    )
    net = TinyNet(tmp_path, inputs, layer)
    sides = [
        (60, 60),
        (float(F32(math.sqrt(9000))), float(F32(math.sqrt(9000)))),
        (float(F32(60 * math.sqrt(2))), float(F32(60 / math.sqrt(2)))),
    ]
    corners = [
        [(150 - w / 2) / 300, (150 - h / 2) / 300, (150 + w / 2) / 300, (150 + h / 2) / 300] for w, h in sides
    ]
    expected = np.array([np.ravel(corners), [F32(0.1)] * 12])[None]
    module = convert(load_net(net.prototxt, net.caffemodel), dtype=torch.float64)
    with torch.no_grad():
        got = module(*(torch.from_numpy(net.inputs[n]).double() for n in module.caffe_inputs)).numpy()
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-15)  # float box sizes, exact arithmetic
    np.testing.assert_array_equal(net.ours("pb")[0], expected.astype(F32))


# --- DetectionOutput ------------------------------------------------------------------------


def fork_detection_output(
    loc: np.ndarray, conf: np.ndarray, prior: np.ndarray, p: dict[str, Any]
) -> np.ndarray:
    """DetectionOutputLayer<float>::Forward_cpu replayed in Python with numpy float32 scalars."""
    num, classes = loc.shape[0], p["num_classes"]
    priors = prior.shape[2] // 4
    loc_classes = 1 if p["share_location"] else classes
    boxes_in = prior.reshape(-1)[: priors * 4].reshape(priors, 4)
    var_in = (
        np.ones((priors, 4), F32)
        if p["variance_encoded_in_target"]
        else prior.reshape(-1)[priors * 4 : priors * 8].reshape(priors, 4)
    )

    def decode(pb, v, lb):
        if p["code_type"] == "CORNER":
            return [pb[i] + v[i] * lb[i] for i in range(4)]
        pw, ph = pb[2] - pb[0], pb[3] - pb[1]
        if p["code_type"] == "CORNER_SIZE":
            return [
                pb[0] + v[0] * lb[0] * pw,
                pb[1] + v[1] * lb[1] * ph,
                pb[2] + v[2] * lb[2] * pw,
                pb[3] + v[3] * lb[3] * ph,
            ]
        cx, cy = F32((pb[0] + pb[2]) / F32(2)), F32((pb[1] + pb[3]) / F32(2))
        dcx, dcy = v[0] * lb[0] * pw + cx, v[1] * lb[1] * ph + cy
        dw = F32(math.exp(float(v[2] * lb[2]))) * pw
        dh = F32(math.exp(float(v[3] * lb[3]))) * ph
        return [
            F32(float(dcx) - float(dw) / 2),
            F32(float(dcy) - float(dh) / 2),
            F32(float(dcx) + float(dw) / 2),
            F32(float(dcy) + float(dh) / 2),
        ]

    def size(b):
        return F32(0) if b[2] < b[0] or b[3] < b[1] else (b[2] - b[0]) * (b[3] - b[1])

    def jaccard(a, b):
        if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
            return F32(0)
        w, h = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
        if not (w > 0 and h > 0):
            return F32(0)
        inter = w * h
        return inter / (size(a) + size(b) - inter)

    def nms(boxes, scores):
        order = sorted(
            (i for i in range(priors) if scores[i] > p["confidence_threshold"]), key=lambda i: -scores[i]
        )
        if p["top_k"] > -1:
            order = order[: p["top_k"]]
        kept: list[int] = []
        adaptive = F32(p["nms_threshold"])
        for i in order:
            keep = all(jaccard(boxes[i], boxes[k]) <= adaptive for k in kept)
            if keep:
                kept.append(i)
                if p["eta"] < 1 and adaptive > 0.5:
                    adaptive = adaptive * F32(p["eta"])
        return kept

    rows = []
    for n in range(num):
        lb = loc[n].reshape(priors, loc_classes, 4)
        sc = conf[n].reshape(priors, classes)
        decoded = {
            c: [decode(boxes_in[i], var_in[i], lb[i, c]) for i in range(priors)] for c in range(loc_classes)
        }
        indices = {}
        for c in range(classes):
            if c != p["background_label_id"]:
                indices[c] = nms(decoded[0 if p["share_location"] else c], sc[:, c])
        if p["keep_top_k"] > -1 and sum(map(len, indices.values())) > p["keep_top_k"]:
            pairs = sorted(((sc[i, c], c, i) for c in indices for i in indices[c]), key=lambda t: -t[0])[
                : p["keep_top_k"]
            ]
            indices = {c: [i for _, cc, i in pairs if cc == c] for c in indices}
        for c, kept in sorted(indices.items()):
            for i in kept:
                rows.append([n, c, sc[i, c], *decoded[0 if p["share_location"] else c][i]])
    if not rows:
        rows = [[n, -1, -1, -1, -1, -1, -1] for n in range(num)]
    return np.array(rows, dtype=F32).reshape(1, 1, -1, 7)


DEFAULTS = {
    "num_classes": 4,
    "share_location": True,
    "background_label_id": 0,
    "code_type": "CENTER_SIZE",
    "variance_encoded_in_target": False,
    "confidence_threshold": 0.3,
    "nms_threshold": 0.45,
    "top_k": 20,
    "eta": 1.0,
    "keep_top_k": 15,
}
DETECTION_CASES: dict[str, dict[str, Any]] = {
    "center-size": {},
    "corner": {"code_type": "CORNER"},
    "variance-in-target": {"variance_encoded_in_target": True},
    "per-class-locations": {"share_location": False},
    "no-background": {"share_location": False, "background_label_id": -1},
    "no-top-k-cut": {"top_k": -1, "keep_top_k": 1000, "nms_threshold": 0.3},
    # Not in OpenCV: checked against the replay only.
    "corner-size": {"code_type": "CORNER_SIZE"},
    "adaptive-nms": {"nms_threshold": 0.7, "eta": 0.9, "confidence_threshold": 0.1, "keep_top_k": -1},
    "nothing-detected": {"confidence_threshold": 0.999},
}
OPENCV_DEPARTS = {"corner-size", "adaptive-nms", "nothing-detected"}


def detection_net(
    directory: Path, params: dict[str, Any], num: int = 2, priors: int = 60, seed: int = 0
) -> tuple[TinyNet, dict[str, Any]]:
    """Random priors, offsets and scores; a DetectionOutput over them; and its parameters."""
    rng = np.random.default_rng(seed)
    p = {**DEFAULTS, **params}
    loc_classes = 1 if p["share_location"] else p["num_classes"]
    corner = rng.uniform(0, 0.8, (priors, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(0.05, 0.4, (priors, 2))], 1)
    variances = np.tile([0.1, 0.1, 0.2, 0.2], (priors, 1))
    prior = np.stack([boxes.ravel(), variances.ravel()])[None]
    if p["variance_encoded_in_target"]:
        prior = prior[:, :1]  # OpenCV wants the boxes alone then
    inputs = {
        "loc": rng.normal(0, 1, (num, priors * loc_classes * 4)),
        "conf": rng.uniform(0, 1, (num, priors * p["num_classes"])),
        "prior": prior,
    }
    fields = " ".join(
        f"{key}: {str(value).lower() if isinstance(value, bool) else value}"
        for key, value in p.items()
        if key not in ("nms_threshold", "top_k", "eta")
    )
    nms = f"nms_threshold: {p['nms_threshold']} eta: {p['eta']}" + (
        f" top_k: {p['top_k']}" if p["top_k"] > -1 else ""
    )
    layer = (
        'layer { name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" '
        f'top: "det" detection_output_param {{ {fields} nms_param {{ {nms} }} }} }}'
    )
    return TinyNet(directory, inputs, layer), p


@pytest.mark.parametrize("case", DETECTION_CASES, ids=DETECTION_CASES.keys())
def test_detection_output_matches_the_fork(tmp_path: Path, case: str) -> None:
    net, params = detection_net(tmp_path, DETECTION_CASES[case])
    (ours,) = net.ours("det")
    replay = fork_detection_output(net.inputs["loc"], net.inputs["conf"], net.inputs["prior"], params)
    assert_same_detections(ours, replay)
    # The fork's order: by image, then label ascending, then score descending.
    rows = ours.reshape(-1, 7)
    np.testing.assert_array_equal(rows, rows[np.lexsort((-rows[:, 2], rows[:, 1], rows[:, 0]))])
    if case == "nothing-detected":
        np.testing.assert_array_equal(ours, [[[[0, -1, -1, -1, -1, -1, -1], [1, -1, -1, -1, -1, -1, -1]]]])
    if case not in OPENCV_DEPARTS:
        (theirs,) = net.opencv("det")
        assert_same_detections(ours, theirs)  # OpenCV pads with zero rows, which comparable() drops


def test_detection_output_breaks_ties_by_prior_index(tmp_path: Path) -> None:
    """Equal scores: the fork's stable sort visits the lower prior index first, so of two
    identical boxes with equal scores the first one survives NMS."""
    net, params = detection_net(tmp_path, {"keep_top_k": -1}, num=1, priors=6)
    net.inputs["conf"][:] = 0
    net.inputs["conf"].reshape(6, 4)[[1, 4], 2] = 0.5  # priors 1 and 4, class 2
    net.inputs["loc"].reshape(6, 4)[4] = net.inputs["loc"].reshape(6, 4)[1]
    net.inputs["prior"].reshape(2, 6, 4)[0, 4] = net.inputs["prior"].reshape(2, 6, 4)[0, 1]
    (ours,) = net.ours("det")
    replay = fork_detection_output(net.inputs["loc"], net.inputs["conf"], net.inputs["prior"], params)
    np.testing.assert_array_equal(ours, replay)
    assert ours.shape == (1, 1, 1, 7)


def test_detection_output_float64_net_detects_in_float32(tmp_path: Path) -> None:
    """The fork keeps boxes and scores in float whatever the Dtype: a float64 net's rows are
    float32 values widened."""
    net, _ = detection_net(tmp_path, {})
    loaded = load_net(net.prototxt, net.caffemodel)
    single, double = convert(loaded), convert(loaded, dtype=torch.float64)
    args = [torch.from_numpy(net.inputs[n]) for n in single.caffe_inputs]
    with torch.no_grad():
        single, double = single(*args), double(*(a.double() for a in args))
    assert double.dtype == torch.float64
    np.testing.assert_array_equal(double.numpy(), single.numpy().astype(np.float64))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            "num_classes: 4 share_location: true background_label_id: -1",
            "background_label_id -1 with share_location",
        ),
        ("share_location: true num_classes: 5", "need 240 location and 300 confidence"),
    ],
)
def test_detection_output_refuses_what_the_fork_rejects(tmp_path: Path, params: str, message: str) -> None:
    net, _ = detection_net(tmp_path, {})
    text = (
        net.prototxt.read_text()
        .replace("num_classes: 4", "")
        .replace("share_location: true", "")
        .replace("background_label_id: 0", "")
    )
    net.prototxt.write_text(text.replace("detection_output_param {", "detection_output_param { " + params))
    with pytest.raises(NetDefinitionError, match=message):
        load_net(net.prototxt)


def test_prior_box_refuses_bad_sizes(tmp_path: Path) -> None:
    inputs = {"feature": np.zeros((1, 1, 2, 2), F32), "data": np.zeros((1, 3, 8, 8), F32)}
    net = TinyNet(
        tmp_path,
        inputs,
        'layer { name: "pb" type: "PriorBox" bottom: "feature" bottom: "data" top: "pb" '
        "prior_box_param { min_size: 4 max_size: 2 } }",
    )
    with pytest.raises(NetDefinitionError, match="greater than its min_size"):
        load_net(net.prototxt)


# --- a whole detector: MobileNet-SSD with random weights ----------------------------------

HEADS = ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"]


@pytest.fixture(scope="module")
def mobilenet_ssd() -> tuple[Path, Path]:
    prototxt = require_shared(CAFFE_ZOO_DIR / "mobilenet_ssd.prototxt", "MobileNet-SSD's deploy prototxt")
    return make_random_caffemodel(prototxt, seed=0)


@pytest.mark.slow
def test_mobilenet_ssd_matches_opencv(mobilenet_ssd: tuple[Path, Path]) -> None:
    """Heads to float32 round-off, detections exactly.

    The heads (box offsets, class scores, priors) agree within 3x our own float32-vs-float64
    distance (or 1e-4 of their scale), as the classification nets do. DetectionOutput given
    OpenCV's heads reproduces OpenCV's detections exactly (boxes to 2 ulps). End to end,
    the same detections come out; scores differ by at most the score heads' difference and
    corners by at most the difference of the decoded boxes of the two loc heads. The random
    net is non-trivial: more candidates pass confidence_threshold 0.25 than keep_top_k 100.
    """
    prototxt, caffemodel = mobilenet_ssd
    net = load_net(prototxt, caffemodel)
    module = convert(net, [*HEADS, "detection_out"])
    x = image_like((1, 3, 300, 300), seed=1)
    with torch.no_grad():
        ours = [t.numpy() for t in module(x)]
        ours64 = [t.numpy() for t in module.double()(x.double())]
    module.float()
    reference = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    reference.setInput(x.numpy())
    theirs = [np.asarray(t) for t in reference.forward([*HEADS, "detection_out"])]
    for name, a, a64, b in zip(HEADS, ours, ours64, theirs):
        scale = float(np.abs(a64).max())
        allowed = max(1e-4, 3 * float(np.abs(a - a64).max()) / scale)
        assert float(np.abs(a - b).max()) / scale <= allowed, name
    conf = ours[1].reshape(-1, 21)[:, 1:]
    assert (conf > 0.25).sum() > 100
    detector = module.get_submodule(module.caffe_layer_modules["detection_out"])
    assert isinstance(detector, DetectionOutput)
    with torch.no_grad():
        from_their_heads = detector(*(torch.from_numpy(t) for t in theirs[:3])).numpy()
    assert_same_detections(from_their_heads, theirs[3])
    ours_rows, theirs_rows = DetectionOutput.comparable(ours[3]), DetectionOutput.comparable(theirs[3])
    assert ours_rows.shape == theirs_rows.shape == (100, 7)
    np.testing.assert_array_equal(ours_rows[:, :2], theirs_rows[:, :2])
    score_gap = float(np.abs(ours[1] - theirs[1]).max())
    np.testing.assert_allclose(ours_rows[:, 2], theirs_rows[:, 2], rtol=0, atol=score_gap)
    decoded = [detector_boxes(detector, loc, ours[2]) for loc in (ours[0], theirs[0])]
    box_gap = float(np.abs(decoded[0] - decoded[1]).max()) + BOX_ULPS
    np.testing.assert_allclose(ours_rows[:, 3:], theirs_rows[:, 3:], rtol=0, atol=box_gap)


def detector_boxes(detector: DetectionOutput, loc: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Every prior's decoded box for these offsets (what NMS would see)."""
    priors = prior.shape[2] // 4
    boxes = torch.from_numpy(prior.reshape(2, priors, 4))
    return decode_boxes(
        torch.from_numpy(loc).reshape(priors, 4), boxes[0], boxes[1], detector.code_type
    ).numpy()


@pytest.mark.slow
def test_mobilenet_ssd_onnx_refuses_detection_output_and_exports_heads(
    mobilenet_ssd: tuple[Path, Path], tmp_path: Path
) -> None:
    prototxt, caffemodel = mobilenet_ssd
    net = load_net(prototxt, caffemodel)
    example = image_like((1, 3, 300, 300), seed=2)
    with pytest.raises(
        ConversionError,
        match=r"'detection_out' \(DetectionOutput\).*--outputs mbox_loc,mbox_conf_flatten,mbox_priorbox",
    ):
        export_onnx(convert(net), tmp_path / "refused.onnx", example)
    with pytest.raises(ConversionError, match=r"'detection_out' \(DetectionOutput\) cannot go into a \.pt2"):
        save_converted(convert(net), net, tmp_path / "refused.pt2", example)
    assert not (tmp_path / "refused.onnx").exists() and not (tmp_path / "refused.pt2").exists()
    heads = convert(net, HEADS)
    export_onnx(heads, tmp_path / "heads.onnx", example)
    with torch.no_grad():
        own_error = max(
            float((a.double() - b).abs().max() / b.abs().max())
            for a, b in zip(heads(example), heads.double()(example.double()))
        )
    heads.float()
    scale = max(float(t.abs().max()) for t in heads(example))
    assert compare_onnx(tmp_path / "heads.onnx", heads, example) / scale <= max(1e-4, 3 * own_error)
    # the torch-free route: the same refusal, and the heads (Permute, Normalize, PriorBox) alike
    with pytest.raises(ConversionError, match=r"'detection_out' \(DetectionOutput\).*--outputs mbox_loc"):
        onnxlower.lower(net)
    onnxlower.write_onnx(onnxlower.lower(net, HEADS), tmp_path / "lowered.onnx")
    assert compare_onnx(tmp_path / "lowered.onnx", heads, example) / scale <= max(1e-4, 3 * own_error)


@pytest.mark.slow
def test_mobilenet_ssd_command_line(mobilenet_ssd: tuple[Path, Path], tmp_path: Path) -> None:
    """caffe2onnx refuses DetectionOutput in one line and writes nothing, exports the heads
    when asked; caffe2torch writes a .safetensors that loads back into the same detector."""
    prototxt, caffemodel = mobilenet_ssd

    common = ["--prototxt", str(prototxt), "--caffemodel", str(caffemodel)]
    refused = CliRunner().invoke(main, ["caffe2onnx", *common, "-o", str(tmp_path / "ssd.onnx")])
    assert_one_line_error(
        refused, "'detection_out' (DetectionOutput)", "--outputs mbox_loc,mbox_conf_flatten,mbox_priorbox"
    )
    assert not list(tmp_path.iterdir())
    heads = CliRunner().invoke(
        main, ["caffe2onnx", *common, "-o", str(tmp_path / "heads.onnx"), "--outputs", ",".join(HEADS)]
    )
    assert heads.exit_code == 0, heads.output
    saved = CliRunner().invoke(main, ["caffe2torch", *common, "-o", str(tmp_path / "ssd.safetensors")])
    assert saved.exit_code == 0, saved.output
    assert "self-check on 'detection_out'" in saved.output
    loaded = load_converted(tmp_path / "ssd.safetensors")
    direct = convert(load_net(prototxt, caffemodel))
    x = image_like((1, 3, 300, 300), seed=3)
    with torch.no_grad():
        assert isinstance(loaded, torch.nn.Module)
        np.testing.assert_array_equal(loaded(x).numpy(), direct(x).numpy())
