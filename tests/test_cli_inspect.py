"""`senet-convert inspect`: the layer table, --json, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from prototxt import load_net, write_caffemodel
from senet_repro.assets import CaffePair
from senet_repro.cli.convert import main
from tests.cli_assertions import assert_one_line_error

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + bytes(range(256))


def _inspect(*args: str | Path) -> Result:
    return CliRunner().invoke(main, ["inspect", *map(str, args)])


def test_table(senet_prototxts: dict[str, Path]) -> None:
    path = senet_prototxts["SE-ResNet-50"]
    result = _inspect(path)
    assert result.exit_code == 0, result.output
    net = load_net(path)
    lines = result.stdout.splitlines()
    assert lines[0] == f"net '{net.name}': {len(net.layers)} layers"
    rows = lines[3 : 3 + len(net.layers)]
    assert [row.split()[0] for row in rows] == [layer.name for layer in net.layers]
    pool = next(row for row in rows if row.startswith("pool1/3x3_s2 "))
    assert "conv1/7x7_s2 -> pool1/3x3_s2" in pool and "1x64x56x56" in pool
    total = next(line for line in lines if line.startswith("total"))
    assert total.split()[1:] == [f"{net.learnable_parameters:,}", f"{net.multiply_adds:,}"]
    assert "28,088,024" in total
    assert "outputs: {'prob': [1, 1000]}" in result.stdout


def test_json_totals_equal_the_net(senet_prototxts: dict[str, Path]) -> None:
    path = senet_prototxts["SENet-154"]
    result = _inspect(path, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    net = load_net(path)
    totals = report["totals"]
    assert totals["parameters"] == net.learnable_parameters == 115_088_984
    assert totals["multiply_adds"] == net.multiply_adds
    assert totals["layers"] == len(report["layers"]) == len(net.layers)
    assert totals["outputs"] == {"prob": [1, 1000]} and totals["weights"] is False
    assert sum(row["parameters"] for row in report["layers"]) == totals["parameters"]
    axpy = next(row for row in report["layers"] if row["type"] == "Axpy")
    assert len(axpy["bottoms"]) == 3 and axpy["parameters"] == 0


def test_prototxt_with_weights(nsfw_model: CaffePair) -> None:
    result = _inspect(nsfw_model.prototxt, "--weights", nsfw_model.caffemodel, "--json")
    assert result.exit_code == 0, result.output
    totals = json.loads(result.stdout)["totals"]
    net = load_net(nsfw_model.prototxt, nsfw_model.caffemodel)
    assert totals["weights"] is True
    assert (totals["parameters"], totals["multiply_adds"]) == (net.learnable_parameters, net.multiply_adds)
    table = _inspect(nsfw_model.prototxt, "--weights", nsfw_model.caffemodel)
    assert "weights: checked against the prototxt" in table.stdout


def test_caffemodel_alone(nsfw_model: CaffePair) -> None:
    result = _inspect(nsfw_model.caffemodel)
    assert result.exit_code == 0, result.output
    assert "note: dropped data layer 'data' (MemoryData)" in result.stdout
    assert "note: dropped training layer 'loss' (SoftmaxWithLoss)" in result.stdout


# --- bad inputs ------------------------------------------------------------------------------


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder for bad inputs; each test checks that inspect leaves nothing else in it."""
    return tmp_path


def _only(directory: Path, *names: str) -> None:
    assert sorted(p.name for p in directory.iterdir()) == sorted(names)


def test_truncated_caffemodel(nsfw_model: CaffePair, workdir: Path) -> None:
    cut = workdir / "cut.caffemodel"
    cut.write_bytes(nsfw_model.caffemodel.read_bytes()[:5_000_000])
    assert_one_line_error(_inspect(cut), str(cut), "truncated")
    assert_one_line_error(_inspect(nsfw_model.prototxt, "--weights", cut), "truncated")
    _only(workdir, "cut.caffemodel")


@pytest.mark.parametrize("content", [JPEG, b"\x00\x01garbage" * 50], ids=["jpeg", "garbage"])
def test_not_a_caffemodel(tiny_model: CaffePair, workdir: Path, content: bytes) -> None:
    bad = workdir / "photo.caffemodel"
    bad.write_bytes(content)
    assert_one_line_error(_inspect(bad), str(bad))
    assert_one_line_error(_inspect(tiny_model.prototxt, "--weights", bad), str(bad))
    _only(workdir, "photo.caffemodel")


def test_caffemodel_given_as_prototxt(tiny_model: CaffePair, workdir: Path) -> None:
    renamed = workdir / "weights.prototxt"
    renamed.write_bytes(tiny_model.caffemodel.read_bytes())
    assert_one_line_error(_inspect(renamed), "not a text prototxt")


def test_prototxt_syntax_error(workdir: Path) -> None:
    bad = workdir / "deploy.prototxt"
    bad.write_text(
        'name: "x"\nlayer {\n  name: "conv1"\n  type: "Convolution"\n'
        "  convolution_param { num_output: 8 kernel_size: 3x }\n}\n"
    )
    line = assert_one_line_error(_inspect(bad), f"{bad}:5:", "(in layer 'conv1')")
    assert "Couldn't parse integer" in line


def test_prototxt_and_caffemodel_of_different_nets(tiny_model: CaffePair, nsfw_model: CaffePair) -> None:
    assert_one_line_error(
        _inspect(tiny_model.prototxt, "--weights", nsfw_model.caffemodel), "no weights for", "conv1"
    )
    assert_one_line_error(
        _inspect(nsfw_model.prototxt, "--weights", tiny_model.caffemodel), "tiny.caffemodel has no weights"
    )


def test_shape_mismatch_names_layer_and_shapes(senet_prototxts: dict[str, Path], tmp_path: Path) -> None:
    """A caffemodel of SE-ResNet-50 checked against the SE-ResNeXt-50 prototxt."""
    resnet = load_net(senet_prototxts["SE-ResNet-50"])
    weights = {
        layer.name: [np.zeros(shape, np.float32) for shape in layer.blob_shapes]
        for layer in resnet.layers
        if layer.blob_shapes
    }
    path = tmp_path / "resnet50.caffemodel"
    write_caffemodel(path, resnet.to_proto(), weights)
    assert_one_line_error(
        _inspect(senet_prototxts["SE-ResNeXt-50"], "--weights", path),
        "layer 'conv2_1_1x1_reduce': blob 0 has shape (64, 64, 1, 1), the prototxt implies (128, 64, 1, 1)",
    )


# --- the installed console script -------------------------------------------------------------


def _script() -> Path:
    script = Path(sys.executable).with_name("senet-convert")
    if not script.exists():
        pytest.skip(f"the senet-convert console script is not installed next to {sys.executable}")
    return script


def test_console_script(tiny_model: CaffePair) -> None:
    done = subprocess.run(
        [_script(), "inspect", tiny_model.prototxt, "--weights", tiny_model.caffemodel, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    totals = json.loads(done.stdout)["totals"]
    assert totals["parameters"] == load_net(tiny_model.prototxt).learnable_parameters
    assert totals["weights"] is True


def test_console_script_error(tiny_model: CaffePair, tmp_path: Path) -> None:
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(tiny_model.caffemodel.read_bytes()[:100])
    done = subprocess.run([_script(), "inspect", cut], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"error: {cut}")
    assert "truncated" in done.stderr and "Traceback" not in done.stderr
