"""Both ONNX routes: PyTorch -> ONNX (torch2onnx) and the torch-free lowering (caffe2onnx).

Each exported graph is valid, named like Caffe and batch-dynamic; ONNX Runtime computes
what PyTorch computes, and the two exports agree to float32 round-off (the trained
nsfw net and random calibrated SENets)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import onnxlower
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
    """The converted net and its ONNX export `directory/name.onnx` (batch-1 example), once;
    the torch-free export of the same net and outputs is `directory/name.lowered.onnx`."""
    net = load_net(prototxt, caffemodel)
    module = convert(net, list(outputs))
    shape = next(iter(net.inputs.values()))
    path = directory / f"{name}.onnx"
    export_onnx(module, path, image_like(tuple(shape), seed=0))
    onnxlower.write_onnx(onnxlower.lower(net, list(outputs)), lowered(path))
    return module, path


def lowered(path: Path) -> Path:
    return path.with_suffix(".lowered.onnx")


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


@pytest.mark.parametrize("route", ["torch", "lowered"])
def test_graph_is_valid_and_named_like_caffe(model, route: str) -> None:
    """Strict shape inference also checks every shape the lowering declares (Caffe's)."""
    module, path = model
    path = path if route == "torch" else lowered(path)
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
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


def test_torch_free_export_equals_the_torch_route(model) -> None:
    """The lowering's numbers are the PyTorch route's: both exports run in ONNX Runtime on three
    images; the lowered one is no farther from PyTorch in float64 than twice the torch export's
    own float32 error (both are float32 computations of the same ops, in possibly other orders)."""
    module, path = model
    x = image_like((3, 3, 224, 224), seed=11)
    torch_route = onnx_session(path, "cpu").run(None, {"data": x.numpy()})
    ours = onnx_session(lowered(path), "cpu").run(None, {"data": x.numpy()})
    with torch.no_grad():
        exact = module.double()(x.double())
    module.float()
    exact = exact if isinstance(exact, tuple) else (exact,)
    for got, reference, value in zip(ours, torch_route, exact):
        torch_error = float(np.abs(reference - value.numpy()).max())
        error = float(np.abs(got - value.numpy()).max())
        between = float(np.abs(got - reference).max())
        print(
            f"{path.stem} vs float64: torch route {torch_error:.2e}, lowered {error:.2e}; {between:.2e} apart"
        )
        assert got.shape == reference.shape
        assert error <= 2 * torch_error


def test_lowered_nodes_are_named_after_the_layers(model) -> None:
    """Every layer that computes something is a node of its own name (extra nodes extend it)."""
    module, path = model
    names = {node.name for node in onnx.load(str(lowered(path)), load_external_data=False).graph.node}
    assert set(module.caffe_layer_modules) <= names


def test_external_data_and_dynamic_batch(nsfw_model, tmp_path: Path) -> None:
    """Past 2 GB the weights go beside the model; forced here on nsfw: same numbers, any batch."""
    model = onnxlower.lower(load_net(nsfw_model.prototxt, nsfw_model.caffemodel), ["fc_nsfw"])
    inline = onnxlower.write_onnx(model, tmp_path / "inline.onnx")
    external = onnxlower.write_onnx(model, tmp_path / "external.onnx", external_data=True)
    assert [p.name for p in external] == ["external.onnx", "external.onnx.data"]
    assert external[0].stat().st_size < 1e6 < external[1].stat().st_size
    onnx.checker.check_model(str(external[0]), full_check=True)
    for batch in (1, 4):
        x = image_like((batch, 3, 224, 224), seed=batch).numpy()
        a = onnx_session(inline[0], "cpu").run(None, {"data": x})[0]
        b = onnx_session(external[0], "cpu").run(None, {"data": x})[0]
        assert a.shape == (batch, 2) and np.array_equal(a, b)


def test_lowered_fp16_is_close_to_float32(nsfw_model, tmp_path: Path) -> None:
    net = load_net(nsfw_model.prototxt, nsfw_model.caffemodel)
    x = image_like((2, 3, 224, 224), seed=3).numpy()
    results = []
    for fp16 in (False, True):
        path = onnxlower.write_onnx(onnxlower.lower(net, ["fc_nsfw"], fp16=fp16), tmp_path / f"{fp16}.onnx")[
            0
        ]
        results.append(
            onnx_session(path, "cpu").run(None, {"data": x.astype(np.float16 if fp16 else np.float32)})[0]
        )
    assert results[1].dtype == np.float16
    error = float(np.abs(results[1].astype(np.float32) - results[0]).max()) / float(np.abs(results[0]).max())
    print(f"nsfw lowered float16 vs float32: relative {error:.2e}")
    assert error <= FP16_TOLERANCE


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
    net = load_net(tiny_model.prototxt, tiny_model.caffemodel)
    with pytest.raises(ValueError, match="opset 16"):
        export_onnx(convert(net), tmp_path / "old.onnx", torch.zeros(1, 3, 8, 8), opset=16)
    with pytest.raises(ValueError, match="opset 16"):
        onnxlower.lower(net, opset=16)
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


@pytest.mark.parametrize("route", ["torch", "lowered"])
@pytest.mark.parametrize("mode", ["MAX", "AVE"])
@pytest.mark.parametrize("size, params", POOLING_SHAPE_CASES)
def test_declared_pooling_shape_is_the_computed_shape(
    tmp_path: Path, route: str, mode: str, size, params: str
) -> None:
    """The file declares Caffe's shape, ONNX's own shape inference agrees (strict), ONNX Runtime
    produces it, for another batch too; both export routes."""
    net = build_net(parse_prototxt_text(_pooling_net(size, mode, params)))
    expected = net.blob_shapes["p"][1:]
    path = tmp_path / "pool.onnx"
    if route == "torch":
        export_onnx(convert(net), path, image_like((1, 2, *size)))
    else:
        onnxlower.write_onnx(onnxlower.lower(net), path)
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


def test_every_converter_type_has_a_lowering() -> None:
    """A layer type the PyTorch route converts must have a torch-free ONNX lowering too."""
    from converter import CONVERTERS

    missing = sorted(set(CONVERTERS) - set(onnxlower.LOWERINGS))
    assert not missing, f"no ONNX lowering (onnxlower/layers.py) for {missing}"
