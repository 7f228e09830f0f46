"""Nets without an Input layer (train/val nets with data layers) on the command line:
`--input-shape` on inspect, caffe2torch and caffe2onnx; and inspect's full table cells."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result

from converter.onnx_export import onnx_session
from prototxt import build_net, load_net, parse_prototxt_text, write_caffemodel
from senet_repro.cli.convert import main
from tests.cli_assertions import assert_one_line_error
from tests.conftest import CAFFE_ZOO_DIR, require_shared

# A train/val net: an LMDB Data layer without crop_size (so no image shape), loss and accuracy.
TRAIN_VAL = """
name: "trainval"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        data_param { source: "train_lmdb" batch_size: 64 backend: LMDB } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
        data_param { source: "val_lmdb" batch_size: 50 backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "accuracy" type: "Accuracy" bottom: "fc" bottom: "label" top: "accuracy"
        include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


def _run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def train_val(tmp_path: Path) -> tuple[Path, Path]:
    """TRAIN_VAL and a random caffemodel for 3 x 9 x 9 images."""
    prototxt = tmp_path / "train_val.prototxt"
    prototxt.write_text(TRAIN_VAL)
    net = build_net(parse_prototxt_text(TRAIN_VAL), input_shape={"": (1, 3, 9, 9)})
    rng = np.random.default_rng(0)
    blobs = {
        layer.name: [rng.standard_normal(s).astype(np.float32) for s in layer.blob_shapes]
        for layer in net.layers
    }
    caffemodel = tmp_path / "train_val.caffemodel"
    write_caffemodel(caffemodel, parse_prototxt_text(TRAIN_VAL), {k: v for k, v in blobs.items() if v})
    return prototxt, caffemodel


def test_without_input_shape_the_error_says_to_give_it(train_val: tuple[Path, Path]) -> None:
    assert_one_line_error(_run("inspect", train_val[0]), "has no input", "--input-shape N,C,H,W")


@pytest.mark.parametrize("given", ["2,3,9,9", "data=2,3,9,9"])
def test_inspect_with_input_shape(train_val: tuple[Path, Path], given: str) -> None:
    result = _run("inspect", train_val[0], "--input-shape", given, "--json")
    assert result.exit_code == 0, result.output
    totals = json.loads(result.stdout)["totals"]
    assert totals["inputs"] == {"data": [2, 3, 9, 9]} and totals["outputs"] == {"fc": [2, 5]}
    assert "dropped training layer 'loss' (SoftmaxWithLoss)" in totals["notes"]


@pytest.mark.parametrize(
    "given, message",
    [
        ("image=1,3,9,9", "no input blob named image (the net's inputs: data)"),
        ("1,3,x,9", "expected positive comma-separated integers"),
        ("1,3,0,9", "expected positive comma-separated integers"),
    ],
)
def test_bad_input_shapes_are_one_line_errors(train_val: tuple[Path, Path], given: str, message: str) -> None:
    assert_one_line_error(_run("inspect", train_val[0], "--input-shape", given), message)


def _convert(command: str, train_val: tuple[Path, Path], out: Path) -> None:
    prototxt, caffemodel = train_val
    result = _run(
        command, "--prototxt", prototxt, "--caffemodel", caffemodel, "-o", out, "--input-shape", "1,3,9,9"
    )
    assert result.exit_code == 0, result.output


def _declared(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_caffe2onnx_with_input_shape(train_val: tuple[Path, Path], tmp_path: Path) -> None:
    _convert("caffe2onnx", train_val, tmp_path / "net.onnx")
    graph = onnx.load(str(tmp_path / "net.onnx")).graph
    assert _declared(graph.input[0]) == ["batch", 3, 9, 9] and _declared(graph.output[0]) == ["batch", 5]
    x = np.random.default_rng(1).standard_normal((2, 3, 9, 9)).astype(np.float32)
    assert onnx_session(tmp_path / "net.onnx", "cpu").run(None, {"data": x})[0].shape == (2, 5)


def test_caffe2torch_with_input_shape(train_val: tuple[Path, Path], tmp_path: Path) -> None:
    _convert("caffe2torch", train_val, tmp_path / "net.safetensors")
    # the deploy prototxt written beside it declares the input the command was given
    assert load_net(tmp_path / "net.prototxt").inputs == {"data": (1, 3, 9, 9)}


def test_places365_train_val_net(tmp_path: Path) -> None:
    """CSAILVision's AlexNet train/val net: its data layers' crop size gives 227 x 227; a shape given
    on the command line replaces it."""
    path = require_shared(CAFFE_ZOO_DIR / "places365" / "train_val_alexnet.prototxt", "the Places365 nets")
    result = _run("inspect", path, "--input-shape", "10,3,227,227", "--json")
    assert result.exit_code == 0, result.output
    totals = json.loads(result.stdout)["totals"]
    assert totals["inputs"] == {"data": [10, 3, 227, 227]} and totals["outputs"] == {"fc8": [10, 365]}


def test_inspect_shows_long_names_and_bottoms_whole(tmp_path: Path) -> None:
    """No cell is cut: the columns are as wide as their longest cell."""
    branches = [f"inception_5b/branch_{i}/a_rather_long_layer_name_of_a_real_release" for i in range(4)]
    layers = "".join(f'layer {{ name: "{b}" type: "ReLU" bottom: "data" top: "{b}" }}\n' for b in branches)
    tops = " ".join(f'bottom: "{b}"' for b in branches)
    data = 'input: "data" input_shape { dim: 1 dim: 2 dim: 3 dim: 3 }'
    text = (
        data
        + "\n"
        + layers
        + f'layer {{ name: "{branches[0]}/concat" type: "Concat" {tops} top: "output" }}\n'
    )
    path = tmp_path / "long.prototxt"
    path.write_text(text)
    result = _run("inspect", path)
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if line.startswith(f"{branches[0]}/concat "))
    assert f"{','.join(branches)} -> output" in row and row.split()[-3] == "1x8x3x3"
    table = result.stdout.splitlines()[1 : 1 + 2 + 5 + 2]  # header, rule, 5 layers, rule, total
    assert table[-1].startswith("total") and len({len(line) for line in table}) == 1
