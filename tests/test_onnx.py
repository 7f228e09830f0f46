"""PyTorch -> ONNX: the exported graph is valid, named like Caffe, batch-dynamic, and ONNX
Runtime computes what PyTorch computes (the trained nsfw net and random calibrated SENets)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from converter import convert
from converter.calibrate import image_like
from converter.onnx_export import MIN_OPSET, export_onnx, onnx_session
from prototxt import build_net, load_net, parse_prototxt_text
from tests.caffe_factory import make_random_caffemodel
from tests.caffe_reference import assert_matches_caffe
from tests.conftest import unavailable

LOGIT_TOLERANCE = 1e-4  # max abs difference on logits of scale ~1
FP16_TOLERANCE = 1e-2  # relative to the logits' scale: float16 keeps ~3 decimal digits


@functools.cache
def exported(
    name: str, prototxt: Path, caffemodel: Path, outputs: tuple[str, ...], directory: Path
) -> tuple[torch.nn.Module, Path]:
    """The converted net and its ONNX export `directory/name.onnx` (batch-1 example), once."""
    net = load_net(prototxt, caffemodel)
    module = convert(net, list(outputs))
    shape = next(iter(net.inputs.values()))
    path = directory / f"{name}.onnx"
    export_onnx(module, path, image_like(tuple(shape), seed=0))
    return module, path


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module", params=["nsfw", "SE-ResNet-50", "SE-BN-Inception", "SE-ResNeXt-50"])
def model(request, onnx_dir: Path) -> tuple[torch.nn.Module, Path]:
    """(converted module, .onnx) of the real nsfw net or a random calibrated SENet."""
    if request.param == "nsfw":
        pair = request.getfixturevalue("nsfw_model")
        return exported("nsfw", pair.prototxt, pair.caffemodel, ("fc_nsfw", "prob"), onnx_dir)
    prototxts = request.getfixturevalue("senet_prototxts")
    if request.param not in prototxts:
        unavailable(f"{request.param}.prototxt is not in ../shared/senet-caffe/")
    return exported(
        request.param, *make_random_caffemodel(prototxts[request.param]), ("classifier",), onnx_dir
    )


def test_graph_is_valid_and_named_like_caffe(model) -> None:
    module, path = model
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    opsets = {entry.domain: entry.version for entry in proto.opset_import}
    assert opsets.get("", opsets.get("ai.onnx", 0)) >= MIN_OPSET
    assert [i.name for i in proto.graph.input] == ["data"]
    assert [o.name for o in proto.graph.output] == module.caffe_outputs
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.HasField("dim_value")  # dynamic batch axis


def test_onnxruntime_matches_pytorch_batch_3(model) -> None:
    """Three different images through the dynamic batch axis; every output compared."""
    module, path = model
    x = image_like((3, 3, 224, 224), seed=7)
    got = onnx_session(path, "cpu").run(None, {"data": x.numpy()})
    with torch.no_grad():
        expected = module(x)
    expected = expected if isinstance(expected, tuple) else (expected,)
    assert [g.shape for g in got] == [tuple(e.shape) for e in expected]
    assert expected[0].shape[0] == 3
    difference = max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected))
    print(f"{path.stem}: ONNX Runtime vs PyTorch max abs difference {difference:.2e} (batch 3)")
    assert difference <= LOGIT_TOLERANCE
    logits = got[0].reshape(3, -1)
    assert np.abs(logits[0] - logits[1]).max() > 0.01 * np.abs(logits).max()


def test_fp16_export_runs(nsfw_model, tmp_path: Path) -> None:
    """--fp16: weights and activations float16, input and outputs too; close to float32."""
    net = load_net(nsfw_model.prototxt, nsfw_model.caffemodel)
    module = convert(net, ["fc_nsfw"])
    x = image_like((2, 3, 224, 224), seed=3)
    path = export_onnx(module, tmp_path / "nsfw16.onnx", x[:1], fp16=True)
    assert next(module.parameters()).dtype == torch.float32  # the module is left in float32
    proto = onnx.load(str(path))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    got = onnx_session(path, "cpu").run(None, {"data": x.numpy().astype(np.float16)})[0]
    with torch.no_grad():
        expected = module(x).numpy()
    error = float(np.abs(got.astype(np.float32) - expected).max()) / float(np.abs(expected).max())
    print(f"nsfw float16 ONNX vs float32 PyTorch: relative {error:.2e}")
    assert got.dtype == np.float16 and error <= FP16_TOLERANCE


def test_opset_below_17_is_refused(tmp_path: Path, tiny_model) -> None:
    module = convert(load_net(tiny_model.prototxt, tiny_model.caffemodel))
    with pytest.raises(ValueError, match="opset 16"):
        export_onnx(module, tmp_path / "old.onnx", torch.zeros(1, 3, 8, 8), opset=16)
    assert not list(tmp_path.iterdir())


# --- declared shapes: what the file says equals what runs equals Caffe -------------------------

# (input H x W, pooling parameters): ceil windows kept, clipped in the padding (the last one
# starts at or past size + pad), pad > kernel / 2, windows past an unpadded input, floor rounding.
POOLING_SHAPE_CASES = [
    ((5, 5), "kernel_size: 2 stride: 2 pad: 1"),  # clipped: ONNX would keep a 4th row
    ((7, 9), "kernel_size: 2 stride: 2 pad: 1"),
    ((9, 8), "kernel_size: 3 stride: 2 pad: 1"),
    ((10, 9), "kernel_size: 3 stride: 2"),
    ((6, 6), "kernel_size: 2 stride: 3"),  # a window past the unpadded input, kept by Caffe
    ((7, 7), "kernel_size: 3 stride: 2 pad: 2"),  # pad > kernel / 2
    ((6, 8), "kernel_size: 3 stride: 2 pad: 2"),
    ((8, 8), "kernel_size: 2 stride: 3 pad: 1"),
    ((11, 6), "kernel_size: 4 stride: 3 pad: 3"),
    ((7, 6), "kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0"),
    ((9, 9), "kernel_size: 3 stride: 1 pad: 1"),
    ((10, 9), "kernel_size: 3 stride: 2 pad: 1 round_mode: FLOOR"),
    ((10, 10), "kernel_size: 2 stride: 2 ceil_mode: false"),
    ((6, 7), "global_pooling: true"),
]


def _pooling_net(size: tuple[int, int], mode: str, params: str) -> str:
    return (
        'layer { name: "data" type: "Input" top: "data" '
        f"input_param {{ shape {{ dim: 1 dim: 2 dim: {size[0]} dim: {size[1]} }} }} }}\n"
        f'layer {{ name: "p" type: "Pooling" bottom: "data" top: "p" '
        f"pooling_param {{ pool: {mode} {params} }} }}"
    )


@pytest.mark.parametrize("mode", ["MAX", "AVE"])
@pytest.mark.parametrize("size, params", POOLING_SHAPE_CASES)
def test_declared_pooling_shape_is_the_computed_shape(tmp_path: Path, mode: str, size, params: str) -> None:
    """The file declares Caffe's shape, ONNX's own shape inference agrees (strict), ONNX Runtime
    produces it, for another batch too."""
    net = build_net(parse_prototxt_text(_pooling_net(size, mode, params)))
    expected = net.blob_shapes["p"][1:]
    path = tmp_path / "pool.onnx"
    export_onnx(convert(net), path, image_like((1, 2, *size)))
    model = onnx.load(str(path))
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    for graph in (model.graph, inferred.graph):
        dims = [d.dim_param or d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
        assert dims == ["batch", *expected]
    (result,) = onnx_session(path, "cpu").run(None, {"data": image_like((3, 2, *size)).numpy()})
    assert result.shape == (3, *expected)


@pytest.mark.parametrize("mode", ["MAX", "AVE"])
@pytest.mark.parametrize("size, params", POOLING_SHAPE_CASES)
def test_pooling_shape_cases_match_caffe(mode: str, size, params: str) -> None:
    """The computed shapes above are BVLC Caffe's (values too); `ceil_mode` is a fork's field,
    given to Caffe as the round_mode it means."""
    assert_matches_caffe(_pooling_net(size, mode, params).replace("ceil_mode: false", "round_mode: FLOOR"))
