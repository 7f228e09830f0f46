"""No file the tools read can run code: every load site, fed a payload that would create a marker file.

The payload is a pickle whose unpickling calls `open(marker, "w")`. Each test
checks that the input is refused (one line, exit 2, for the commands) and that
the marker does not exist afterwards. For the `.pt2` archives the same crafted
file is then given to `torch.export.load` itself, which does create the marker:
proof that the file is a real attack and that our check, not luck, stopped it.

Load sites (audited with grep for torch.load, torch.export.load, np.load, pickle,
loadmat, safetensors, onnx, json): `.pt2` (converter.serialize, checked before
torch reads it), `.pth` (torch.load weights_only=True), `.safetensors` (no code by
format), torchvision's `meta.bin` (weights_only=True), the devkit's `meta.mat`
(scipy.io.loadmat: MATLAB data only), `.onnx` (protobuf), `.caffemodel` (our own
wire-format reader) and `.prototxt` (protobuf text). np.load is never used.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from converter.serialize import check_pt2_archive
from senet_repro import class_order, imagenet
from senet_repro.assets import CaffePair
from senet_repro.cli.convert import main as convert_main
from senet_repro.cli.validate import main as validate_main
from senet_repro.validate import ValidateError, open_valset
from tests.cli_assertions import assert_one_line_error


class _CreatesFile:
    """Unpickling this calls open(path, "w"): the file appears iff the pickle was executed."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str, str]]:
        return open, (self.path, "w")


def evil_pickle(marker: Path) -> bytes:
    return pickle.dumps(_CreatesFile(marker), protocol=2)


# ----------------------------------------------------------------------------- .pt2


class _Tiny(torch.nn.Module):
    """A parameter, a buffer and a tensor constant: every payload kind a .pt2 holds."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)
        self.register_buffer("offset", torch.ones(2))
        self.constant = torch.tensor([1.0, 2.0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.offset + self.constant


@pytest.fixture(scope="module")
def clean_pt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pt2") / "clean.pt2"
    torch.export.save(torch.export.export(_Tiny(), (torch.randn(2, 3),)), path)
    return path


def _rewrite(source: Path, target: Path, change: Callable[[str, bytes], dict[str, bytes]]) -> None:
    """Copy the archive, replacing each entry by what `change(inner name, bytes)` returns."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as rewritten:
        root = original.namelist()[0].split("/", 1)[0] + "/"
        for name in original.namelist():
            for inner, data in change(name[len(root) :], original.read(name)).items():
                rewritten.writestr(root + inner, data)


def _pickle_first_entry(kind: str, payload: bytes) -> Callable[[str, bytes], dict[str, bytes]]:
    """Mark the first entry of the weights/constants config use_pickle, its file the payload."""

    def change(inner: str, data: bytes) -> dict[str, bytes]:
        if inner.endswith(f"_{kind}_config.json"):
            config = json.loads(data)
            first = next(iter(config["config"].values()))
            first["use_pickle"] = True
            return {inner: json.dumps(config).encode(), f"data/{kind}/{first['path_name']}": payload}
        if re.fullmatch(rf"data/{kind}/(weight|tensor)_0", inner):
            return {}  # replaced above
        return {inner: data}

    return change


def _opaque_constant(payload: bytes) -> Callable[[str, bytes], dict[str, bytes]]:
    def change(inner: str, data: bytes) -> dict[str, bytes]:
        if inner.endswith("_constants_config.json"):
            config = json.loads(data)
            entry = next(iter(config["config"].values()))
            entry.update(path_name="opaque_obj_0", use_pickle=True, tensor_meta=None)  # as torch writes it
            return {inner: json.dumps(config).encode(), "data/constants/opaque_obj_0": payload}
        return {inner: data}

    return change


def _crafted(kind: str, payload: bytes) -> Callable[[str, bytes], dict[str, bytes]]:
    if kind in ("weights", "constants"):
        return _pickle_first_entry(kind, payload)
    if kind == "opaque-constant":
        return _opaque_constant(payload)
    if kind == "sample-inputs":
        return lambda inner, data: {inner: payload if inner.startswith("data/sample_inputs/") else data}
    if kind == "legacy-weights":
        return lambda inner, data: {
            inner: data,
            **({"data/weights/model.pt": payload} if inner == "byteorder" else {}),
        }
    assert kind == "aotinductor"
    return lambda inner, data: {
        inner: data,
        **({"data/aotinductor/model/model.so": b"\x7fELF"} if inner == "byteorder" else {}),
    }


PT2_ATTACKS = ["weights", "constants", "opaque-constant", "sample-inputs", "legacy-weights"]


def test_a_clean_pt2_passes_the_check(clean_pt2: Path) -> None:
    check_pt2_archive(clean_pt2)


@pytest.mark.parametrize("kind", [*PT2_ATTACKS, "aotinductor"])
def test_crafted_pt2_is_refused_before_torch_reads_it(clean_pt2: Path, tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt2"
    _rewrite(clean_pt2, evil, _crafted(kind, evil_pickle(marker)))
    result = CliRunner().invoke(convert_main, ["torch2onnx", str(evil), "-o", str(tmp_path / "x.onnx")])
    assert_one_line_error(result, "evil.pt2", "refusing it")
    assert not marker.exists() and not (tmp_path / "x.onnx").exists()
    if kind in PT2_ATTACKS:  # the control: torch itself runs the payload
        try:
            torch.export.load(evil)
        except Exception:
            pass
        assert marker.exists(), "the crafted archive no longer attacks this torch version: update it"


# ----------------------------------------------------------------------------- every other load site


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "marker"


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_files_never_unpickle(tmp_path: Path, marker: Path, suffix: str) -> None:
    """state_dicts: torch2onnx --model, torch2caffe --weights, senet-validate --weights."""
    evil = tmp_path / f"evil{suffix}"
    evil.write_bytes(evil_pickle(marker))
    data = tmp_path / "data"
    data.mkdir()
    runs = [
        CliRunner().invoke(
            convert_main, ["torch2onnx", "--model", "se_resnet50", str(evil), "-o", str(tmp_path / "x.onnx")]
        ),
        CliRunner().invoke(
            convert_main,
            ["torch2caffe", "--model", "se_resnet50", "--weights", str(evil), "-o", str(tmp_path / "caffe")],
        ),
    ]
    if suffix == ".safetensors":  # a generic converted net
        runs.append(
            CliRunner().invoke(convert_main, ["torch2onnx", str(evil), "-o", str(tmp_path / "y.onnx")])
        )
    for result in runs:
        assert_one_line_error(result, str(evil))
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["data", evil.name])


@pytest.mark.parametrize("backend", ["torch", "graph", "onnxruntime"])
def test_validate_weights_never_unpickle(
    tmp_path: Path, marker: Path, fake_root: Path, tiny_model: CaffePair, backend: str
) -> None:
    suffix = {"torch": ".pth", "graph": ".caffemodel", "onnxruntime": ".onnx"}[backend]
    evil = tmp_path / f"evil{suffix}"
    evil.write_bytes(evil_pickle(marker))
    args = ["--weights", str(evil), "--data", str(fake_root), "--backend", backend, "--workers", "0"]
    if backend == "graph":
        args += ["--prototxt", str(tiny_model.prototxt)]
    result = CliRunner().invoke(validate_main, ["--model", "se_resnet50", *args])
    assert_one_line_error(result, "evil")
    assert not marker.exists()


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from senet_repro.validate.fake_imagenet import make_fake_imagenet

    return make_fake_imagenet(tmp_path_factory.mktemp("imagenet"), num_classes=2, images_per_class=1).layouts[
        "flat"
    ]


def test_caffe_files_never_unpickle(tmp_path: Path, marker: Path, tiny_model: CaffePair) -> None:
    evil_model = tmp_path / "evil.caffemodel"
    evil_model.write_bytes(evil_pickle(marker))
    evil_text = tmp_path / "evil.prototxt"
    evil_text.write_bytes(evil_pickle(marker))
    for args in (
        ["inspect", str(evil_model)],
        ["inspect", str(evil_text)],
        ["caffe2torch", "--caffemodel", str(evil_model), "-o", str(tmp_path / "x.pt2")],
        [
            "caffe2torch",
            "--prototxt",
            str(evil_text),
            "--caffemodel",
            str(tiny_model.caffemodel),
            "-o",
            str(tmp_path / "y.pt2"),
        ],
    ):
        assert_one_line_error(CliRunner().invoke(convert_main, args), "evil")
    assert not marker.exists()


def test_torchvision_meta_bin_never_unpickles(tmp_path: Path, marker: Path) -> None:
    root = tmp_path / "imagenet"
    (root / "val" / "n01440764").mkdir(parents=True)
    (root / "val" / "n01440764" / "ILSVRC2012_val_00000293.JPEG").write_bytes(b"")
    (root / "meta.bin").write_bytes(evil_pickle(marker))
    with pytest.raises(ValidateError, match="meta.bin") as raised:
        open_valset(root)
    assert "\n" not in str(raised.value)
    assert not marker.exists()


@pytest.mark.parametrize("content", ["pickle", "empty"])
def test_devkit_meta_mat_is_data_only(tmp_path: Path, marker: Path, content: str) -> None:
    """scipy's loadmat reads MATLAB data and cannot run code; a foreign file is a one-line error."""
    meta = tmp_path / "meta.mat"
    meta.write_bytes(evil_pickle(marker) if content == "pickle" else b"")
    with pytest.raises(ValueError, match="meta.mat") as raised:
        class_order.class_permutation(devkit=meta)
    assert "\n" not in str(raised.value)
    with pytest.raises(imagenet.LabelError):
        imagenet.read_meta_mat(meta)
    assert not marker.exists()
