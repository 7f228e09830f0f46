"""Whole nets: the converted PyTorch module against OpenCV's independent Caffe runtime.

Real weights: the trained nsfw ResNet-50-1by2, run by `cv2.dnn.readNetFromCaffe` on its own
prototxt. The seven SENet releases: seeded random weights with calibrated BatchNorm
(tests/caffe_factory.py), run by OpenCV on the portable prototxt (OpenCV's own Axpy is
wrong; a test below keeps that fact in view). The comparison is on the pre-softmax
`classifier` blob, relative to its scale (max |value| in float64): at most 1e-4, or 3x
our own float32-vs-float64 distance where float32 itself is further than 1e-4 from float64.
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from converter import convert
from converter.calibrate import image_like
from converter.selfcheck import TOLERANCE, agreement_bound, opencv_forward
from prototxt import Net, load_net, portable_net, write_prototxt
from tests.caffe_factory import make_random_caffemodel
from tests.conftest import unavailable

cv2 = pytest.importorskip("cv2")

SENETS = [
    "SE-BN-Inception",
    "SE-ResNet-50",
    "SE-ResNet-101",
    "SE-ResNet-152",
    "SE-ResNeXt-50",
    "SE-ResNeXt-101",
    "SENet-154",
]
SENSITIVITY = 0.05  # two images must move the logits by at least 5% of their scale


@pytest.fixture(scope="session")
def senet_path(senet_prototxts: dict[str, Path]):
    """name -> released prototxt, skipping the test when that file is absent."""

    def path(name: str) -> Path:
        if name not in senet_prototxts:
            unavailable(f"{name}.prototxt is not in ../shared/senet-caffe/")
        return senet_prototxts[name]

    return path


@functools.cache
def random_senet(path: Path, input_hw: tuple[int, int] | None = None) -> tuple[Path, Path]:
    """The cached seed-0 random calibrated caffemodel of a released prototxt."""
    return make_random_caffemodel(path, seed=0, input_hw=input_hw)


def last_writer(net: Net, blob: str) -> str:
    """The layer that last writes `blob`: the name OpenCV knows that value by."""
    return [layer.name for layer in net.layers if blob in layer.tops][-1]


def opencv_blobs(
    prototxt: Path, caffemodel: Path, net: Net, x: np.ndarray, blobs: list[str]
) -> list[np.ndarray]:
    """OpenCV's values of `blobs` (as Caffe leaves them) running `prototxt` as given."""
    reader = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    reader.setInput(np.ascontiguousarray(x, dtype=np.float32))
    return [np.asarray(out) for out in reader.forward([last_writer(net, b) for b in blobs])]


@dataclass
class Agreement:
    """How far OpenCV and our float32 run are from our float64 run, relative to its scale."""

    scale: float
    float32_error: float
    opencv_error: float

    @property
    def bound(self) -> float:
        return agreement_bound(self.float32_error)

    def report(self, label: str) -> str:
        return (
            f"{label}: classifier scale {self.scale:.4g}; OpenCV vs ours "
            f"{self.opencv_error:.2e}, float32 vs float64 {self.float32_error:.2e}, "
            f"bound {self.bound:.1e}"
        )


@torch.no_grad()
def check_senet(path: Path, input_hw: tuple[int, int] | None) -> None:
    """Random calibrated `path` at `input_hw`: OpenCV agrees on the classifier, within the
    bound; a second image moves the logits clearly."""
    prototxt, caffemodel = random_senet(path, input_hw)
    net = load_net(prototxt, caffemodel)
    shape = tuple(next(iter(net.inputs.values())))
    x, other = image_like(shape, seed=1), image_like(shape, seed=2)
    module = convert(net, ["classifier"])
    ours, moved = module(x).double(), module(other).double()
    exact = module.double()(x.double())
    opencv = opencv_forward(net, caffemodel, x.numpy(), ["classifier"])
    assert opencv is not None, "OpenCV (opencv-python-headless, a test dependency) is missing"
    reference = opencv[0].reshape(ours.shape)
    scale = float(exact.abs().max())
    result = Agreement(
        scale=scale,
        float32_error=float((ours - exact).abs().max()) / scale,
        opencv_error=float(np.abs(reference - ours.numpy()).max()) / scale,
    )
    label = f"{path.stem} {shape[2]}x{shape[3]}"
    print(result.report(label))
    assert result.opencv_error <= result.bound, result.report(label)
    change = float((moved - ours).abs().max())
    assert change >= SENSITIVITY * scale, f"logits barely depend on the input: {change:.3g}"


# --- the seven SENet releases with random weights --------------------------------------------


@pytest.mark.parametrize("name", SENETS)
def test_random_senet_matches_opencv(senet_path, name: str) -> None:
    check_senet(senet_path(name), None)


@pytest.mark.parametrize("size", [225, 320])
@pytest.mark.parametrize("name", ["SE-ResNet-50", "SE-BN-Inception", "SE-ResNeXt-50"])
def test_random_senet_matches_opencv_at_other_sizes(senet_path, name: str, size: int) -> None:
    """Other sizes move where Caffe's ceil rounding of pooling matters (at 224 pool1 rounds
    112 up to 56, at 225 it gets 113 and 56 is exact); at 320, pool5 (7x7, stride 1) leaves
    4x4 and the classifier's random weights take the implied 16x larger fan-in."""
    path = senet_path(name)
    net = load_net(*random_senet(path, (size, size)))
    assert net.layer("classifier").bottom_shapes[0][2:] == ((1, 1) if size == 225 else (4, 4))
    check_senet(path, (size, size))


def test_opencv_with_its_own_axpy_does_not_match(senet_path) -> None:
    """OpenCV maps Axpy itself as bottom[0] * bottom[2] + bottom[1]: wrong, without an error.
    If this ever starts to pass, OpenCV fixed its Axpy and the docs need updating."""
    prototxt, caffemodel = random_senet(senet_path("SE-ResNet-50"))
    net = load_net(prototxt, caffemodel)
    x = image_like((1, 3, 224, 224), seed=1)
    with torch.no_grad():
        ours = convert(net, ["classifier"])(x).numpy()
    original = opencv_blobs(prototxt, caffemodel, net, x.numpy(), ["classifier"])[0]
    opencv = opencv_forward(net, caffemodel, x.numpy(), ["classifier"])
    assert opencv is not None, "OpenCV (opencv-python-headless, a test dependency) is missing"
    portable = opencv[0]
    scale = float(np.abs(ours).max())
    assert np.abs(portable - ours).max() <= TOLERANCE * scale
    assert np.abs(original - ours).max() > 0.1 * scale


# --- the real trained nsfw model -------------------------------------------------------------


NSFW_BLOBS = ["conv_stage1_block0_branch2b", "eltwise_stage2_block1", "pool", "fc_nsfw", "prob"]


def test_nsfw_matches_opencv(nsfw_model) -> None:
    """Trained weights, OpenCV's own importer on the original files: probabilities to 1e-5,
    pre-softmax blobs (and intermediate ones, as Caffe leaves them) to a relative 1e-4."""
    net = load_net(nsfw_model.prototxt, nsfw_model.caffemodel)
    x = image_like((2, 3, 224, 224), seed=1)
    with torch.no_grad():
        ours = [out.numpy() for out in convert(net, NSFW_BLOBS)(x)]
    theirs = opencv_blobs(nsfw_model.prototxt, nsfw_model.caffemodel, net, x.numpy(), NSFW_BLOBS)
    for blob, got, reference in zip(NSFW_BLOBS, ours, theirs):
        reference = reference.reshape(got.shape)
        error = float(np.abs(got - reference).max())
        relative = error / float(np.abs(reference).max())
        print(f"nsfw {blob}: max abs difference {error:.2e}, relative {relative:.2e}")
        if blob == "prob":
            assert error <= 1e-5
        else:
            assert relative <= TOLERANCE, blob
    logits = ours[NSFW_BLOBS.index("fc_nsfw")]
    assert np.abs(logits[0] - logits[1]).max() > 0.01 * np.abs(logits).max()  # two images


# --- outputs and names -----------------------------------------------------------------------


def test_any_blob_can_be_an_output(senet_path) -> None:
    """Features and logits at once; the features equal OpenCV's, the logits the one-output net's."""
    prototxt, caffemodel = random_senet(senet_path("SE-ResNet-50"))
    net = load_net(prototxt, caffemodel)
    x = image_like((1, 3, 224, 224), seed=1)
    blobs = ["pool5/7x7_s1", "conv4_6", "classifier"]
    module = convert(net, blobs)
    assert module.caffe_outputs == blobs
    with torch.no_grad():
        features, mid, logits = module(x)
        alone = convert(net, ["classifier"])(x)
    assert features.shape == (1, 2048, 1, 1) and mid.shape == (1, 1024, 14, 14)
    assert torch.equal(logits, alone)
    with tempfile.TemporaryDirectory() as scratch:
        portable = Path(scratch) / "portable.prototxt"
        write_prototxt(portable_net(net.to_proto()), portable)
        reference = opencv_blobs(portable, caffemodel, net, x.numpy(), blobs)
    for got, expected in zip((features, mid, logits), reference):
        expected = expected.reshape(got.shape)
        assert np.abs(got.numpy() - expected).max() <= TOLERANCE * np.abs(expected).max()


def test_generated_code_reads_like_the_prototxt(senet_path) -> None:
    """Submodules and nodes are the Caffe layer names, sanitised; in-place tops are data flow."""
    net = load_net(senet_path("SE-ResNet-50"))
    module = convert(net, ["classifier"], require_weights=False)
    mapping = module.caffe_layer_modules
    assert mapping["conv1/7x7_s2"] == "conv1_7x7_s2"
    assert mapping["conv2_1_1x1_reduce/bn"] == "conv2_1_1x1_reduce_bn"
    assert mapping["conv2_1"] == "conv2_1"  # the Axpy
    code = module.code
    assert "conv1_7x7_s2_bn = self.conv1_7x7_s2_bn(conv1_7x7_s2)" in code
    assert "conv2_1 = self.conv2_1(conv2_1_prob, conv2_1_1x1_increase_bn_scale, " in code
    assert "classifier = self.classifier(pool5_7x7_s1)" in code
    assert "prob" not in mapping  # layers after the asked-for output are dropped
    assert set(mapping.values()) == {name for name, _ in module.named_children()}
