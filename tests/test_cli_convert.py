"""`senet-convert caffe2torch | caffe2onnx | torch2onnx | portable-prototxt` on generic nets.

(The SENet state_dict path of caffe2torch is tests/test_senet_convert.py.) Every bad input
ends in one line `error: ...` on stderr with exit code 2, no traceback, and no file left.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner, Result

from converter import convert
from converter.calibrate import image_like
from converter.onnx_export import onnx_session
from converter.serialize import load_converted
from prototxt import load_net, parse_prototxt, write_caffemodel
from senet_repro.assets import CaffePair
from senet_repro.cli.convert import main
from tests.caffe_factory import make_random_caffemodel
from tests.cli_assertions import assert_one_line_error

# A residual block with an SE gate joined by Axpy: the CLI's self-check must route it to OpenCV
# through the portable prototxt.
SE_TINY = """\
name: "se-tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 16 dim: 16 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 stride: 2 bias_term: false } }
layer { name: "conv1/bn" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "conv1/scale" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "conv1/relu" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 bias_term: false } }
layer { name: "conv2/bn" type: "BatchNorm" bottom: "conv2" top: "conv2" }
layer { name: "conv2/scale" type: "Scale" bottom: "conv2" top: "conv2" scale_param { bias_term: true } }
layer { name: "se/pool" type: "Pooling" bottom: "conv2" top: "se/pool"
        pooling_param { pool: AVE global_pooling: true } }
layer { name: "se/down" type: "Convolution" bottom: "se/pool" top: "se/down"
        convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "se/relu" type: "ReLU" bottom: "se/down" top: "se/down" }
layer { name: "se/up" type: "Convolution" bottom: "se/down" top: "se/up"
        convolution_param { num_output: 8 kernel_size: 1 } }
layer { name: "se/gate" type: "Sigmoid" bottom: "se/up" top: "se/up" }
layer { name: "block" type: "Axpy" bottom: "se/up" bottom: "conv2" bottom: "conv1" top: "block" }
layer { name: "block/relu" type: "ReLU" bottom: "block" top: "block" }
layer { name: "pool" type: "Pooling" bottom: "block" top: "pool" pooling_param { pool: AVE kernel_size: 8 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""
SHAPE = "1,3,16,16"
OTHER_NET = SE_TINY.replace("num_output: 5", "num_output: 6")  # the classifier differs


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args])


@pytest.fixture(scope="module")
def se_tiny(tmp_path_factory: pytest.TempPathFactory) -> CaffePair:
    """SE_TINY with random calibrated weights."""
    directory = tmp_path_factory.mktemp("se-tiny")
    source = directory / "source.prototxt"
    source.write_text(SE_TINY)
    return CaffePair(*make_random_caffemodel(source, directory))


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """An empty output folder; tests check that failures leave it empty."""
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def caffe_args(pair: CaffePair) -> list[str | Path]:
    return ["--prototxt", pair.prototxt, "--caffemodel", pair.caffemodel]


# --- the happy paths -------------------------------------------------------------------------


def test_caffe2torch_safetensors_of_the_real_net(nsfw_model: CaffePair, out: Path) -> None:
    result = run(
        "caffe2torch", *caffe_args(nsfw_model), "-o", out / "nsfw.safetensors", "--outputs", "pool,fc_nsfw"
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("converted 227 layers of 'ResNet_50_1by2_nsfw', ")
    assert "outputs ['pool', 'fc_nsfw']" in lines[0]
    assert lines[1].startswith("self-check on 'pool'") and lines[1].endswith(": ok")
    opencv_error = float(lines[1].split("OpenCV (portable prototxt) vs ours ", 1)[1].split()[0])
    assert opencv_error <= 1e-4
    assert sorted(p.name for p in out.iterdir()) == ["nsfw.prototxt", "nsfw.safetensors"]
    loaded = load_converted(out / "nsfw.safetensors")
    net = load_net(nsfw_model.prototxt, nsfw_model.caffemodel)
    x = image_like((2, 3, 224, 224), seed=6)
    with torch.no_grad():
        for got, expected in zip(loaded(x), convert(net, ["pool", "fc_nsfw"])(x)):
            assert torch.equal(got, expected)


def test_caffe2torch_folded_then_torch2onnx(se_tiny: CaffePair, out: Path) -> None:
    """A folded .safetensors reloads into the folded structure and exports."""
    result = run("caffe2torch", *caffe_args(se_tiny), "--fold", "conv", "-o", out / "t.safetensors")
    assert result.exit_code == 0, result.output
    assert "OpenCV (portable prototxt) vs ours" in result.stdout
    result = run("torch2onnx", out / "t.safetensors", "-o", out / "t.onnx", "--input-shape", SHAPE)
    assert result.exit_code == 0, result.output
    difference = float(result.stdout.split("max abs difference ")[1].split()[0])
    assert difference <= 1e-5 and "on a batch of 3" in result.stdout and ": ok" in result.stdout
    assert [o.name for o in onnx.load(str(out / "t.onnx")).graph.output] == ["prob"]


def test_caffe2torch_pt2_then_torch2onnx(se_tiny: CaffePair, out: Path) -> None:
    result = run("caffe2torch", *caffe_args(se_tiny), "--outputs", "fc", "-o", out / "t.pt2")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["t.pt2"]
    result = run("torch2onnx", out / "t.pt2", "-o", out / "t.onnx", "--input-shape", SHAPE, "--opset", "18")
    assert result.exit_code == 0, result.output
    assert "(opset 18)" in result.stdout
    model = onnx.load(str(out / "t.onnx"))
    assert [i.name for i in model.graph.input] == ["data"]
    assert float(result.stdout.split("max abs difference ")[1].split()[0]) <= 1e-5


def test_caffe2onnx_names_and_fp16(se_tiny: CaffePair, out: Path) -> None:
    """The torch-free route: named outputs, checked in ONNX Runtime, PyTorch's numbers."""
    result = run("caffe2onnx", *caffe_args(se_tiny), "--outputs", "block,fc", "-o", out / "t.onnx")
    assert result.exit_code == 0, result.output
    assert "ONNX Runtime (CPUExecutionProvider) ran a batch of 1: block 1x8x8x8, fc 1x5, all finite" in (
        result.stdout
    )
    model = onnx.load(str(out / "t.onnx"))
    assert [o.name for o in model.graph.output] == ["block", "fc"]
    assert model.opset_import[0].version >= 17
    x = image_like((3, 3, 16, 16), seed=2)
    got = onnx_session(out / "t.onnx", "cpu").run(None, {"data": x.numpy()})
    with torch.no_grad():
        expected = convert(load_net(se_tiny.prototxt, se_tiny.caffemodel), ["block", "fc"])(x)
    for g, e in zip(got, expected):
        scale = float(e.abs().max())
        assert float(np.abs(g - e.numpy()).max()) <= 1e-6 * scale  # float32 round-off of a few layers
    result = run("caffe2onnx", *caffe_args(se_tiny), "--fp16", "-o", out / "t16.onnx")
    assert result.exit_code == 0, result.output
    assert "float16" in result.stdout and "all finite" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["t.onnx", "t16.onnx"]


def test_portable_prototxt(senet_prototxts: dict[str, Path], out: Path) -> None:
    source = senet_prototxts["SE-ResNet-50"]
    result = run("portable-prototxt", source, out / "portable.prototxt")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("rewrote 16 Axpy layer(s)")
    original, rewritten = parse_prototxt(source), parse_prototxt(out / "portable.prototxt")
    assert not [layer for layer in rewritten.layer if layer.type == "Axpy"]
    tops = lambda net: {top for layer in net.layer for top in layer.top}  # noqa: E731
    assert tops(original) <= tops(rewritten)
    assert (out / "portable.prototxt").read_text().startswith(f"# {source.name} with 16 Axpy")


# --- bad inputs ------------------------------------------------------------------------------


def _files(tmp_path: Path, pair: CaffePair) -> dict[str, Path]:
    """Broken and mismatched inputs, written into `tmp_path`."""
    files = {
        "truncated": tmp_path / "truncated.caffemodel",
        "syntax": tmp_path / "syntax.prototxt",
        "unsupported": tmp_path / "unsupported.prototxt",
        "axpy2": tmp_path / "axpy2.prototxt",
        "other_net": tmp_path / "other.prototxt",
        "garbage.safetensors": tmp_path / "garbage.safetensors",
        "garbage.pt2": tmp_path / "garbage.pt2",
        "garbage.pth": tmp_path / "garbage.pth",
        "mismatch.safetensors": tmp_path / "mismatch.safetensors",
    }
    files["truncated"].write_bytes(pair.caffemodel.read_bytes()[:300])
    files["syntax"].write_text(SE_TINY.replace('top: "conv2"\n', 'top: "conv2"\n  }}\n', 1))
    files["unsupported"].write_text(
        SE_TINY.replace('type: "Sigmoid"', 'type: "HardSwish"').replace('type: "ReLU"', 'type: "GELU"')
    )
    files["axpy2"].write_text(
        SE_TINY.replace('bottom: "se/up" bottom: "conv2" bottom: "conv1"', 'bottom: "se/up" bottom: "conv2"')
    )
    files["other_net"].write_text(OTHER_NET)
    files["garbage.safetensors"].write_bytes(b"not a safetensors file" * 4)
    files["garbage.pt2"].write_bytes(b"not a zip archive" * 4)
    files["garbage.pth"].write_bytes(b"\x80\x02not a pickle either" * 4)
    # tensors of SE_TINY beside the prototxt of another net
    assert run("caffe2torch", *caffe_args(pair), "-o", files["mismatch.safetensors"]).exit_code == 0
    (tmp_path / "mismatch.prototxt").write_text(OTHER_NET)
    return files


BAD_INPUTS: list[tuple[str, Callable[[dict[str, Path], CaffePair, Path], list], str]] = [
    (
        "truncated caffemodel",
        lambda f, p, o: [
            "caffe2torch",
            "--prototxt",
            p.prototxt,
            "--caffemodel",
            f["truncated"],
            "-o",
            o / "x.safetensors",
        ],
        "truncated file",
    ),
    (
        "prototxt syntax error",
        lambda f, p, o: [
            "caffe2torch",
            "--prototxt",
            f["syntax"],
            "--caffemodel",
            p.caffemodel,
            "-o",
            o / "x.safetensors",
        ],
        "syntax.prototxt:",
    ),
    (
        "weights of another net",
        lambda f, p, o: [
            "caffe2torch",
            "--prototxt",
            f["other_net"],
            "--caffemodel",
            p.caffemodel,
            "-o",
            o / "x.pt2",
        ],
        "layer 'fc'",
    ),
    (
        "unknown output blob",
        lambda f, p, o: ["caffe2torch", *caffe_args(p), "--outputs", "fc,nope", "-o", o / "x.safetensors"],
        "no blob named ['nope']",
    ),
    (
        "unsupported output suffix",
        lambda f, p, o: ["caffe2torch", *caffe_args(p), "-o", o / "x.pt"],
        "must end in .pt2 or .safetensors",
    ),
    (
        "unsupported layer types",
        lambda f, p, o: [
            "caffe2onnx",
            "--prototxt",
            f["unsupported"],
            "--caffemodel",
            p.caffemodel,
            "-o",
            o / "x.onnx",
        ],
        "GELU, HardSwish",
    ),
    ("malformed Axpy", lambda f, p, o: ["portable-prototxt", f["axpy2"], o / "x.prototxt"], "block"),
    (
        "portable-prototxt syntax error",
        lambda f, p, o: ["portable-prototxt", f["syntax"], o / "x.prototxt"],
        "syntax.prototxt:",
    ),
    (
        "garbage .safetensors",
        lambda f, p, o: ["torch2onnx", f["garbage.safetensors"], "-o", o / "x.onnx", "--input-shape", SHAPE],
        "not a safetensors file",
    ),
    (
        "garbage .pt2",
        lambda f, p, o: ["torch2onnx", f["garbage.pt2"], "-o", o / "x.onnx", "--input-shape", SHAPE],
        "not a .pt2 program",
    ),
    (
        "garbage SENet checkpoint",
        lambda f, p, o: ["torch2onnx", "--model", "se_resnet50", f["garbage.pth"], "-o", o / "x.onnx"],
        "cannot read a state_dict",
    ),
    (
        "input shape not integers",
        lambda f, p, o: [
            "torch2onnx",
            f["garbage.safetensors"],
            "-o",
            o / "x.onnx",
            "--input-shape",
            "1,3,a",
        ],
        "--input-shape",
    ),
    (
        "tensors of another net",
        lambda f, p, o: ["torch2onnx", f["mismatch.safetensors"], "-o", o / "x.onnx", "--input-shape", SHAPE],
        "do not fit mismatch.prototxt",
    ),
]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory, se_tiny: CaffePair) -> dict[str, Path]:
    return _files(tmp_path_factory.mktemp("bad"), se_tiny)


@pytest.mark.parametrize(
    "args, fragment", [pytest.param(build, fragment, id=label) for label, build, fragment in BAD_INPUTS]
)
def test_bad_input_is_one_line_exit_2_nothing_written(
    bad_files, se_tiny, out: Path, args, fragment: str
) -> None:
    assert_one_line_error(run(*args(bad_files, se_tiny, out)), fragment)
    assert list(out.iterdir()) == []


def test_input_shape_that_does_not_fit(se_tiny: CaffePair, out: Path, tmp_path: Path) -> None:
    """torch2onnx's example shape is checked before exporting, for both saved forms."""
    for suffix in (".safetensors", ".pt2"):
        saved = tmp_path / f"t{suffix}"
        assert run("caffe2torch", *caffe_args(se_tiny), "-o", saved).exit_code == 0
        for shape in ("1,4,16,16", "1,3,16"):
            result = run("torch2onnx", saved, "-o", out / "x.onnx", "--input-shape", shape)
            assert_one_line_error(result, "does not fit the net")
    assert_one_line_error(
        run("torch2onnx", tmp_path / "t.pt2", "-o", out / "x.onnx", "--fp16", "--input-shape", SHAPE),
        "--fp16 needs a .safetensors conversion",
    )
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("args", [["--opset", "x"]])  # an out-of-range opset: test_safety_io
def test_usage_errors_exit_2_without_traceback(se_tiny: CaffePair, out: Path, args) -> None:
    """Click's own usage errors (its 'Usage:' form), also exit 2 and nothing written."""
    result = run("caffe2onnx", *caffe_args(se_tiny), "-o", out / "x.onnx", *args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "Error: Invalid value for '--opset'" in result.stderr
    assert list(out.iterdir()) == []


def test_missing_file_is_a_usage_error(out: Path) -> None:
    result = run("torch2onnx", out / "absent.safetensors", "-o", out / "x.onnx")
    assert result.exit_code == 2 and "does not exist" in result.stderr
    assert list(out.iterdir()) == []


def test_two_input_net_is_refused_from_the_cli(tmp_path: Path, out: Path) -> None:
    """caffe2torch's self-check takes one image batch: a clear error, not a crash."""
    text = (
        'name: "two" layer { name: "a" type: "Input" top: "a" input_param { shape { dim: 1 '
        'dim: 2 } } } layer { name: "b" type: "Input" top: "b" input_param { shape { dim: 1 '
        'dim: 2 } } } layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "sum" }'
    )
    (tmp_path / "two.prototxt").write_text(text)
    write_caffemodel(tmp_path / "two.caffemodel", parse_prototxt(tmp_path / "two.prototxt"), {})
    files: list[str | Path] = [
        "--prototxt",
        tmp_path / "two.prototxt",
        "--caffemodel",
        tmp_path / "two.caffemodel",
    ]
    assert_one_line_error(run("caffe2torch", *files, "-o", out / "x.safetensors"), "has 2 inputs (a, b)")
    assert list(out.iterdir()) == []
    result = run("caffe2onnx", *files, "-o", out / "x.onnx")  # the torch-free route takes any inputs
    assert result.exit_code == 0 and "sum 1x2, all finite" in result.stdout, result.output
