"""torch2caffe: the generated deploy nets are the released ones, blobs survive bit for bit,
the portable form runs in OpenCV, and the CLI fails in one line without leaving files.

The released prototxts are read from ../shared/senet-caffe/ (the `senet_prototxts`
fixture skips when they are absent); the generator never sees them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from google.protobuf import text_format

from converter.calibrate import image_like
from prototxt import caffe_pb2, load_net, parse_prototxt, portable_net, read_caffemodel, write_caffemodel
from senet_repro import export_caffe as export_module
from senet_repro.cli.convert import main
from senet_repro.export_caffe import caffe_net, export_caffe, random_state_dict
from senet_repro.models import caffe_to_state_dict, get_model, list_models, state_dict_to_caffe, weights_for
from tests.cli_assertions import assert_one_line_error
from tests.conftest import unavailable

SMALL = ["se_bn_inception", "se_resnet50", "se_resnext50_32x4d"]
LARGE = ["se_resnet101", "se_resnet152", "se_resnext101_32x4d", "senet154"]
LARGE_SLOW = SMALL + [pytest.param(model, marks=pytest.mark.slow) for model in LARGE]


def _release(senet_prototxts: dict[str, Path], model: str) -> Path:
    stem = weights_for(model).prototxt.removesuffix(".prototxt")
    if stem not in senet_prototxts:
        unavailable(f"{stem}.prototxt is not in ../shared/senet-caffe/")
    return senet_prototxts[stem]


def _one_line(message: caffe_pb2.NetParameter | caffe_pb2.LayerParameter) -> str:
    return text_format.MessageToString(message, as_one_line=True)


def _field_text(layer: caffe_pb2.LayerParameter, name: str) -> str:
    """One field of `layer` as prototxt text ('' when unset)."""
    partial = caffe_pb2.LayerParameter()
    partial.CopyFrom(layer)
    for field in partial.DESCRIPTOR.fields:
        if field.name != name:
            partial.ClearField(field.name)
    return _one_line(partial)


def _field_diff(ours: caffe_pb2.LayerParameter, original: caffe_pb2.LayerParameter) -> list[str]:
    """Per-field differences of two layers, fields named as in the prototxt."""
    fields = {d.name for d, _ in ours.ListFields()} | {d.name for d, _ in original.ListFields()}
    return [
        f"  {name}: ours {_field_text(ours, name)!r}, release {_field_text(original, name)!r}"
        for name in sorted(fields)
        if _field_text(ours, name) != _field_text(original, name)
    ]


def _net_differences(ours: caffe_pb2.NetParameter, original: caffe_pb2.NetParameter) -> list[str]:
    """Readable differences: net fields, layer order, then layer by layer, field by field."""
    problems = []
    head_ours, head_original = caffe_pb2.NetParameter(), caffe_pb2.NetParameter()
    head_ours.CopyFrom(ours)
    head_original.CopyFrom(original)
    del head_ours.layer[:], head_original.layer[:]
    if head_ours != head_original:
        problems.append(f"net fields: ours {_one_line(head_ours)!r}, release {_one_line(head_original)!r}")
    names_ours = [layer.name for layer in ours.layer]
    names_original = [layer.name for layer in original.layer]
    if names_ours != names_original:
        first = next(
            (i for i, (a, b) in enumerate(zip(names_ours, names_original)) if a != b),
            min(len(names_ours), len(names_original)),
        )
        problems.append(
            f"layer order differs first at index {first}: ours "
            f"{names_ours[first : first + 3]}, release {names_original[first : first + 3]} "
            f"({len(names_ours)} vs {len(names_original)} layers)"
        )
        return problems
    for mine, theirs in zip(ours.layer, original.layer):
        if mine != theirs:
            problems.append(f"layer {mine.name!r}:\n" + "\n".join(_field_diff(mine, theirs)))
    return problems


@pytest.mark.parametrize("model", list_models())
def test_prototxt_equals_the_release(senet_prototxts: dict[str, Path], model: str) -> None:
    """Names, types, bottoms, tops and every parameter, as protobuf messages.

    No unavoidable difference exists for any of the seven networks, so nothing is
    exempt: explicit defaults (`stride: 1`, `engine: CAFFE`) count as parameters.
    """
    original = parse_prototxt(_release(senet_prototxts, model))
    ours = caffe_net(model)
    problems = _net_differences(ours, original)
    assert not problems, f"{model} differs from the release:\n" + "\n".join(problems[:10])
    assert ours == original


@pytest.mark.parametrize("model", list_models())
def test_portable_prototxt_equals_the_rewritten_release(senet_prototxts: dict[str, Path], model: str) -> None:
    original = portable_net(parse_prototxt(_release(senet_prototxts, model)))
    ours = caffe_net(model, portable=True)
    assert not _net_differences(ours, original)
    assert not any(layer.type == "Axpy" for layer in ours.layer)


def test_the_comparison_names_a_difference(senet_prototxts: dict[str, Path]) -> None:
    """The diff message points at the layer and the field, not just 'not equal'."""
    original = parse_prototxt(_release(senet_prototxts, "se_resnet50"))
    changed = caffe_net("se_resnet50")
    changed.layer[1].convolution_param.stride[0] = 1
    changed.layer[2].batch_norm_param.ClearField("use_global_stats")
    problems = _net_differences(changed, original)
    assert len(problems) == 2
    assert "'conv1/7x7_s2'" in problems[0] and "convolution_param" in problems[0]
    assert "stride: 2" in problems[0]
    assert "'conv1/7x7_s2/bn'" in problems[1] and "batch_norm_param" in problems[1]
    changed.layer[3].name = "renamed"
    assert "layer order differs first at index 3" in _net_differences(changed, original)[0]


def _release_blobs(path: Path, seed: int) -> dict[str, list[np.ndarray]]:
    """Random float32 blobs in the shapes the release prototxt implies, BN scale factor 1."""
    rng = np.random.default_rng(seed)
    blobs = {}
    for layer in load_net(path).layers:
        arrays = [rng.standard_normal(shape, dtype=np.float32) for shape in layer.blob_shapes]
        if layer.type == "BatchNorm":
            arrays[1] = np.abs(arrays[1]) + np.float32(0.5)
            arrays[2] = np.ones(layer.blob_shapes[2], dtype=np.float32)
        if arrays:
            blobs[layer.name] = arrays
    return blobs


@pytest.mark.parametrize("model", LARGE_SLOW)
def test_round_trip_is_byte_identical(senet_prototxts: dict[str, Path], tmp_path: Path, model: str) -> None:
    """Original-layout caffemodel -> state_dict -> caffemodel: the same bytes in every blob."""
    prototxt = _release(senet_prototxts, model)
    source = tmp_path / "release.caffemodel"
    write_caffemodel(source, parse_prototxt(prototxt), _release_blobs(prototxt, seed=3))
    before = read_caffemodel(source)
    state_dict = caffe_to_state_dict(model, before.blobs)
    _, written = export_caffe(model, state_dict, tmp_path / "out")
    after = read_caffemodel(written)
    assert list(after.blobs) == list(before.blobs)
    for layer, arrays in before.blobs.items():
        assert len(after.blobs[layer]) == len(arrays), layer
        for index, (old, new) in enumerate(zip(arrays, after.blobs[layer])):
            assert new.dtype == old.dtype == np.float32 and new.shape == old.shape, (layer, index)
            assert new.tobytes() == old.tobytes(), f"{layer} blob {index} changed"
    assert after.net == parse_prototxt(prototxt)  # the caffemodel embeds the release net


def _invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(main, ["torch2caffe", *map(str, args)])


@torch.no_grad()
@pytest.mark.parametrize("model", LARGE_SLOW)
def test_portable_prototxt_runs_in_opencv(tmp_path: Path, model: str) -> None:
    """OpenCV on `torch2caffe --portable` output agrees with our model (relative 1e-4)."""
    cv2 = pytest.importorskip("cv2")
    result = _invoke("--model", model, "--random-weights", "-o", tmp_path, "--portable")
    assert result.exit_code == 0, result.output
    info = weights_for(model)
    prototxt = tmp_path / info.prototxt.replace(".prototxt", ".portable.prototxt")
    caffemodel = tmp_path / info.caffemodel
    assert f"wrote {prototxt}" in result.stdout and f"wrote {caffemodel}" in result.stdout
    assert sorted(tmp_path.iterdir()) == sorted([prototxt, caffemodel])
    assert prototxt.read_text().startswith("# mean_value: 104, 117, 123\n")

    network = get_model(model)
    network.load_state_dict(caffe_to_state_dict(model, read_caffemodel(caffemodel).blobs))
    network.eval()
    x = image_like((1, 3, 224, 224), seed=1)
    ours = network(x).numpy()
    assert np.isfinite(ours).all() and ours.std() > 0.1  # well-conditioned, not saturated

    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    net.enableWinograd(False)  # its Winograd 3x3 path triples the error (SE-BN-Inception 3e-5)
    net.setInput(x.numpy())
    reference = net.forward("classifier").reshape(ours.shape)
    relative = np.abs(reference - ours).max() / np.abs(ours).max()
    assert relative < 1e-4, f"{model}: OpenCV vs PyTorch relative difference {relative:.2e}"


def test_random_weights_are_seeded() -> None:
    first = random_state_dict("se_bn_inception", seed=0)
    again = random_state_dict("se_bn_inception", seed=0)
    other = random_state_dict("se_bn_inception", seed=1)
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["fc.weight"], other["fc.weight"])


@pytest.fixture(scope="module")
def inception_state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return get_model("se_bn_inception").state_dict()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_cli_writes_given_weights(
    tmp_path: Path, inception_state_dict: dict[str, torch.Tensor], suffix: str
) -> None:
    weights = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(inception_state_dict, str(weights))
    else:
        torch.save(inception_state_dict, weights)
    out = tmp_path / "out"
    result = _invoke("--model", "se_bn_inception", "--weights", weights, "-o", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"se_bn_inception (weights from {weights})",
        f"wrote {out / 'SE-BN-Inception.prototxt'}",
        f"wrote {out / 'SE-BN-Inception.caffemodel'} "
        f"({(out / 'SE-BN-Inception.caffemodel').stat().st_size / 1e6:.1f} MB)",
    ]
    assert sorted(path.name for path in out.iterdir()) == [
        "SE-BN-Inception.caffemodel",
        "SE-BN-Inception.prototxt",
    ]
    written = read_caffemodel(out / "SE-BN-Inception.caffemodel").blobs
    expected = state_dict_to_caffe("se_bn_inception", inception_state_dict)
    assert list(written) == list(expected)
    for layer, arrays in expected.items():
        assert all(a.tobytes() == b.tobytes() for a, b in zip(arrays, written[layer])), layer
    assert all(written[name][2].tolist() == [1.0] for name in written if name.endswith("/bn"))
    assert parse_prototxt(out / "SE-BN-Inception.prototxt") == caffe_net("se_bn_inception")
    assert (out / "SE-BN-Inception.prototxt").read_text().startswith("# mean_value: 104, 117, 123\n")


def _bad_weights(tmp_path: Path, kind: str) -> Path:
    path = (
        tmp_path
        / {
            "garbage-pth": "w.pth",
            "garbage-safetensors": "w.safetensors",
            "empty": "w.pth",
            "missing": "absent.pth",
            "directory": "weights",
            "not-a-state-dict": "w.pth",
            "other-model": "w.pth",
        }[kind]
    )
    if kind.startswith("garbage"):
        path.write_bytes(b"this is not a weights file")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        path.mkdir()
    elif kind == "not-a-state-dict":
        torch.save({"epoch": 3}, path)
    elif kind == "other-model":
        with torch.device("meta"):
            keys = get_model("se_resnet50").state_dict()
        torch.save(
            {
                key: torch.zeros(value.shape)
                for key, value in keys.items()
                if key.startswith("stem.") or key.startswith("fc.")
            },
            path,
        )
    return path


@pytest.mark.parametrize(
    "kind",
    [
        "garbage-pth",
        "garbage-safetensors",
        "empty",
        "missing",
        "directory",
        "not-a-state-dict",
        "other-model",
    ],
)
@pytest.mark.parametrize("out_exists", [False, True])
def test_cli_bad_weights(tmp_path: Path, kind: str, out_exists: bool) -> None:
    weights = _bad_weights(tmp_path, kind)
    out = tmp_path / "out"
    if out_exists:
        out.mkdir()
    result = _invoke("--model", "se_resnet50", "--weights", weights, "-o", out)
    assert_one_line_error(result, str(weights))
    assert (sorted(out.iterdir()) == []) if out_exists else not out.exists()


def test_cli_bad_model(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert_one_line_error(
        _invoke("--model", "se_resnet51", "--random-weights", "-o", out),
        "unknown model 'se_resnet51'",
        "se_resnext50_32x4d",
    )
    assert not out.exists()


def test_cli_bad_output_and_seed(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("keep me")
    assert_one_line_error(
        _invoke("--model", "se_resnet50", "--random-weights", "-o", a_file), "not a directory"
    )
    assert a_file.read_text() == "keep me"
    out = tmp_path / "out"
    assert_one_line_error(
        _invoke("--model", "se_resnet50", "--random-weights", "-o", out, "--seed", "-1"), "non-negative"
    )
    assert not out.exists()


@pytest.mark.parametrize("out_exists", [False, True])
def test_failed_write_leaves_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    inception_state_dict: dict[str, torch.Tensor],
    out_exists: bool,
) -> None:
    """A write that fails half-way (disk full, say) removes what it staged."""

    def failing_write(path: Path, *args: object) -> None:
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export_module, "write_caffemodel", failing_write)
    out = tmp_path / "out"
    if out_exists:
        out.mkdir()
    with pytest.raises(OSError, match="No space left"):
        export_caffe("se_bn_inception", inception_state_dict, out)
    assert (sorted(out.iterdir()) == []) if out_exists else not out.exists()
