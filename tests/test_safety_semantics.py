"""No silently wrong results: checkpoint headers honoured, checks that fail loudly, bad inputs refused."""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from converter.onnx_export import export_onnx
from senet_repro import imagenet
from senet_repro.cli.convert import main as convert_cli
from senet_repro.cli.validate import main as validate_cli
from senet_repro.detection import fasterrcnn_se_resnext50_fpn
from senet_repro.transforms import CaffePreprocess
from senet_repro.validate import EvalOptions, TorchBackend, evaluate, open_valset
from senet_repro.validate.fake_imagenet import FakeImageNet, known_answer_net, make_fake_imagenet
from tests.cli_assertions import assert_one_line_error


def test_detector_refuses_unknown_keywords() -> None:
    """torchvision hands unknown keywords to its transform, which drops them: `weights=` would
    give a random backbone without a word. Checked before any model is built."""
    with pytest.raises(TypeError, match=r"weights.*backbone_checkpoint="):
        fasterrcnn_se_resnext50_fpn(weights="se_resnext50.pth", num_classes=3)
    with pytest.raises(TypeError, match="min_sise"):
        fasterrcnn_se_resnext50_fpn(min_sise=200)


# --- checkpoint headers: every tool applies what the checkpoint says ----------------------------

# (file name, layout, class order, folded): one SE-ResNet-50 release written four ways, both
# header carriers (.pth _metadata and .safetensors metadata) among them.
VARIANTS = (
    ("default.pth", "ours", "caffe", False),
    ("timm.pth", "timm", "caffe", False),
    ("torchvision.safetensors", "ours", "torchvision", False),
    ("folded.pth", "ours", "caffe", True),
)
SIZE = 96  # small crops keep the eight SE-ResNet-50 passes per image cheap


@pytest.fixture(scope="module")
def release(senet_prototxts, tmp_path_factory) -> dict[str, Path]:
    """The four checkpoints of one random-weight SE-ResNet-50 caffemodel, plus everything-at-once
    (`all.safetensors`: timm layout, torchvision order, folded); 'caffemodel'/'prototxt' too."""
    from senet_repro import conversion
    from senet_repro.models.checkpoint import save_state_dict
    from tests.caffe_factory import make_random_caffemodel

    prototxt, caffemodel = make_random_caffemodel(senet_prototxts["SE-ResNet-50"], seed=0)
    net, blobs = conversion.read_caffe(caffemodel, prototxt)
    out = tmp_path_factory.mktemp("release")
    paths = {"prototxt": prototxt, "caffemodel": caffemodel}
    for name, layout, order, fold in (*VARIANTS, ("all.safetensors", "timm", "torchvision", True)):
        result = conversion.convert_senet(
            net, blobs, "se_resnet50", layout=layout, class_order=order, fold=fold, check=False
        )
        paths[name] = save_state_dict(result.state_dict, out / name, result.metadata())
    return paths


@pytest.fixture(scope="module")
def images(release, tmp_path_factory) -> tuple[Path, Path]:
    """Six random-colour JPEGs in a flat folder, labelled with the default checkpoint's own top-1
    (Caffe preprocessing computed here with PIL + CaffePreprocess, not through the harness)."""
    import numpy as np
    from PIL import Image

    from senet_repro import imagenet
    from senet_repro.models import get_model
    from senet_repro.transforms import CaffePreprocess

    folder = tmp_path_factory.mktemp("val")
    rng = np.random.default_rng(0)
    model = get_model("se_resnet50", checkpoint=release["default.pth"])
    preprocess = CaffePreprocess(resize=SIZE + 16, crop=SIZE)
    lines = []
    for number in range(1, 7):
        name = imagenet.val_image_name(number)
        colour = rng.integers(0, 256, 3)[None, None, :]  # a random colour with noise on it
        pixels = np.clip(colour + rng.normal(0, 20, (SIZE + 30, SIZE + 40, 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / name, quality=95)
        with torch.no_grad():
            top1 = int(model(preprocess(Image.open(folder / name)).unsqueeze(0)).argmax())
        lines.append(f"{name} {top1}\n")
    labels = folder / imagenet.SENET_LABELS
    labels.write_text("".join(lines))
    assert len({line.split()[1] for line in lines}) > 1  # the labels depend on the image
    return folder, labels


def validate(weights: Path, data: tuple[Path, Path], *extra: str) -> dict:
    report = weights.parent / f"{weights.name}.{extra[1] if extra else 'torch'}.json"
    args = ["--weights", str(weights), "--data", str(data[0]), "--labels", str(data[1])]
    args += ["--resize", str(SIZE + 16), "--crop", str(SIZE), "--device", "cpu", "--workers", "0"]
    result = CliRunner().invoke(
        validate_cli, [*args, "--batch-size", "6", "--report", str(report), *extra], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return json.loads(report.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("name", [variant[0] for variant in VARIANTS])
def test_validate_applies_the_header(release, images, name) -> None:
    """Same top-1 on the same images for the default, timm-layout, torchvision-order and folded
    checkpoints: labels are mapped to the declared order, a folded net gets torchvision's input.
    (Folding changes the logits by ~1e-3 of their scale, the padding colour; no top-1 flips here.)"""
    report = validate(release[name], images, "--model", "se_resnet50")
    assert report["results"]["top1_correct"] == 6, report["results"]
    expected = "torchvision" if "torchvision" in name else "devkit"
    assert report["class_order"] == expected


@pytest.mark.slow
def test_onnx_export_keeps_the_header(release, images, tmp_path) -> None:
    """torch2onnx of the everything-at-once checkpoint (no --model: its header names the net):
    the ONNX carries the header, and ONNX Runtime validation applies it."""
    onnx_path = tmp_path / "all.onnx"
    result = CliRunner().invoke(
        convert_cli,
        ["torch2onnx", str(release["all.safetensors"]), "-o", str(onnx_path), "--input-shape", "1,3,96,96"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "torchvision class order, torchvision input normalisation" in result.stdout
    assert "RGB channel order" in result.stdout
    report = validate(onnx_path, images, "--backend", "onnxruntime")
    assert report["results"]["top1_correct"] == 6 and report["class_order"] == "torchvision"


@pytest.mark.slow
def test_torch2caffe_writes_the_release_or_refuses(release, tmp_path) -> None:
    """timm layout + torchvision order give the very caffemodel the default checkpoint gives (the
    rows permuted back); a folded checkpoint cannot be unfolded exactly and is refused."""
    written = {}
    for name in ("default.pth", "timm.pth", "torchvision.safetensors"):
        out = tmp_path / name
        result = CliRunner().invoke(
            convert_cli,
            ["torch2caffe", "--model", "se_resnet50", "--weights", str(release[name]), "-o", str(out)],
            catch_exceptions=False,
        )
        assert result.exit_code == 0, result.output
        written[name] = (out / "SE-ResNet-50.caffemodel").read_bytes()
    assert written["timm.pth"] == written["default.pth"] == written["torchvision.safetensors"]
    assert release["caffemodel"].stat().st_size > 0
    result = CliRunner().invoke(
        convert_cli,
        [
            "torch2caffe",
            "--model",
            "se_resnet50",
            "--weights",
            str(release["folded.pth"]),
            "-o",
            str(tmp_path / "f"),
        ],
    )
    assert_one_line_error(result, "--fold-normalisation")
    assert not (tmp_path / "f").exists()


def test_checkpoint_errors_are_one_short_line(release, images, tmp_path) -> None:
    """A timm-layout checkpoint loads (no 8 KB dump of keys); a wrong network or a file that
    fits nothing is one short line."""
    from senet_repro.models import get_model, read_checkpoint

    timm = read_checkpoint(release["timm.pth"])
    assert timm.declared and timm.header.layout == "timm" and "fc.weight" in timm.state_dict
    get_model("se_resnet50", checkpoint=release["timm.pth"])
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "foreign.pth")
    for weights, model, fragment in (
        (release["timm.pth"], "se_resnext50", "holds se_resnet50 (its header), not se_resnext50_32x4d"),
        (
            tmp_path / "foreign.pth",
            "se_resnet50",
            "not a se_resnet50 state_dict: 384 missing keys (e.g. stem.conv1.weight)",
        ),
        (tmp_path / "foreign.pth", None, "no senet-repro header naming its network: give --model"),
    ):
        args = ["--weights", str(weights), "--data", str(images[0]), "--labels", str(images[1])]
        result = CliRunner().invoke(validate_cli, [*args, *(["--model", model] if model else [])])
        line = assert_one_line_error(result, fragment)
        assert len(line) < 300, line


# --- senet-validate: bad inputs are one line, odd but valid files are counted right -------------


@pytest.fixture(scope="module")
def fake(tmp_path_factory) -> FakeImageNet:
    return make_fake_imagenet(tmp_path_factory.mktemp("imagenet"), num_classes=3, images_per_class=2)


def evaluate_all(fake: FakeImageNet, root: Path) -> tuple[int, int, list[tuple[str, str]]]:
    """(images, top-1 correct, unreadable) of the known-answer net (every image right) on `root`."""
    net = known_answer_net(fake, [0] * len(fake.images))
    options = EvalOptions(batch_size=4, workers=0, progress=False)
    result = evaluate(
        TorchBackend(net, torch.device("cpu")), open_valset(root), CaffePreprocess(), options=options
    )
    return result.images, result.top1_correct, result.unreadable


def test_validate_refuses_sizes_and_networks_that_do_not_fit(fake, tiny_model, tmp_path) -> None:
    known = export_onnx(
        known_answer_net(fake, [0] * 6),
        tmp_path / "known.onnx",
        torch.zeros(1, 3, 224, 224),
        output_names=["c"],
    )
    ten_classes = torch.nn.Sequential(
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 10)
    )
    ten = export_onnx(ten_classes.eval(), tmp_path / "ten.onnx", torch.zeros(1, 3, 224, 224))
    data = ["--data", str(fake.layouts["flat"]), "--device", "cpu", "--workers", "0"]
    onnx = [*data, "--backend", "onnxruntime", "--weights"]
    for args, fragment in (
        ([*onnx, str(known), "--resize", "1", "--crop", "1"], "fixed 224x224 input, not 1x1 crops"),
        ([*onnx, str(known), "--crop", "100000"], "crop (100000) must be positive and at most resize (256)"),
        (
            [*onnx, str(known), "--resize", "100000", "--crop", "100000"],
            "resize (100000) must be at most 1024",
        ),
        ([*onnx, str(ten)], "scores of shape (10,) per image, the label set has 1000 classes"),
        (
            [
                *data,
                "--backend",
                "graph",
                "--weights",
                str(tiny_model.caffemodel),
                "--prototxt",
                str(tiny_model.prototxt),
            ],
            "scores of shape (5,) per image, the label set has 1000 classes",
        ),
    ):
        assert_one_line_error(CliRunner().invoke(validate_cli, args), fragment)


def _jpeg_claiming(size: int) -> bytes:
    """A valid small JPEG whose frame header (SOF0) is rewritten to claim size x size pixels."""
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (120, 30, 200)).save(out, format="JPEG")
    data = bytearray(out.getvalue())
    sof = data.index(b"\xff\xc0")  # marker, length (2), precision (1), height (2), width (2)
    data[sof + 5 : sof + 9] = struct.pack(">HH", size, size)
    return bytes(data)


def test_a_decompression_bomb_is_counted_unreadable_without_decoding(fake, tmp_path) -> None:
    """~600 bytes claiming 30000 x 30000 would make the decoder allocate 2.7 GB; the header is
    read first and the image counted as unreadable. Peak memory grows far less than that."""
    root = tmp_path / "flat"
    shutil.copytree(fake.layouts["flat"], root)
    bomb = _jpeg_claiming(30000)
    assert len(bomb) < 1000
    (root / fake.images[0].name).write_bytes(bomb)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    images, correct, unreadable = evaluate_all(fake, root)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500 * 1024
    assert (images, len(unreadable)) == (6, 1) and correct == 5
    assert unreadable[0][0] == fake.images[0].name and "exceed the 89,478,485-pixel cap" in unreadable[0][1]


def test_odd_file_names_and_label_files_are_read_right(fake, tmp_path) -> None:
    """A JPEG whose name is not UTF-8 is read like any other; AppleDouble `._*` files are not
    images; a label file starting with a UTF-8 byte-order mark gives the same labels."""
    folder = tmp_path / "imagefolder"
    shutil.copytree(fake.layouts["imagefolder"], folder)
    first = next(path for path in sorted(folder.rglob("*.JPEG")))
    os.rename(os.fsencode(first), os.fsencode(first.parent) + b"/\xff\xfe-not-utf8.JPEG")
    (first.parent / "._ILSVRC2012_val_00000001.JPEG").write_bytes(b"\x00\x05\x16\x07" + bytes(80))
    assert evaluate_all(fake, folder) == (6, 6, [])

    flat = tmp_path / "flat"
    shutil.copytree(fake.layouts["flat"], flat)
    (flat / f"._{fake.images[0].name}").write_bytes(b"\x00\x05\x16\x07" + bytes(80))
    labels = flat / imagenet.SENET_LABELS
    labels.write_bytes(b"\xef\xbb\xbf" + labels.read_bytes())
    assert open_valset(flat).labels == open_valset(fake.layouts["flat"]).labels
    assert evaluate_all(fake, flat) == (6, 6, [])


# --- self-checks: bounded, non-finite fails, exit 2 and nothing written -------------------------


def _tiny_with(tiny_model, tmp_path: Path, name: str, change) -> Path:
    """The tiny net's caffemodel with `change(blobs)` applied."""
    from prototxt import load_net, parse_prototxt, write_caffemodel

    blobs = {
        key: [a.copy() for a in arrays]
        for key, arrays in load_net(tiny_model.prototxt, tiny_model.caffemodel).weights().items()
    }
    change(blobs)
    path = tmp_path / name
    write_caffemodel(path, parse_prototxt(tiny_model.prototxt), blobs)
    return path


def convert(*args: str | Path):
    return CliRunner().invoke(convert_cli, [str(arg) for arg in args])


def test_non_finite_weights_are_reported_by_layer(tiny_model, tmp_path) -> None:
    def poison(blobs):
        blobs["fc"][0][1, 2] = float("nan")

    nan = _tiny_with(tiny_model, tmp_path, "nan.caffemodel", poison)
    for command, out in (("caffe2torch", tmp_path / "n.pt2"), ("caffe2onnx", tmp_path / "n.onnx")):
        result = convert(command, "--prototxt", tiny_model.prototxt, "--caffemodel", nan, "-o", out)
        assert_one_line_error(result, "layer 'fc'", "blob 0 has 1 non-finite value(s)")
        assert not out.exists()


def test_finite_weights_whose_sum_overflows_are_not_called_non_finite(tiny_model, tmp_path) -> None:
    """The fast check sums each blob in float32; an overflowing sum must be recounted, not refused."""
    from prototxt import load_net

    def huge(blobs):
        blobs["fc"][0][...] = 3e38  # every value finite, their float32 sum is not

    path = _tiny_with(tiny_model, tmp_path, "huge.caffemodel", huge)
    net = load_net(tiny_model.prototxt, path)
    assert np.isinf(net.weights()["fc"][0].sum()) and np.isfinite(net.weights()["fc"][0]).all()


def test_a_failing_check_writes_nothing_unless_skipped(tiny_model, tmp_path, monkeypatch) -> None:
    """Finite weights whose float32 run overflows (float64 does not) fail the self-check; an
    OpenCV or ONNX Runtime that disagrees beyond the bound fails it too. --no-check writes."""
    import converter.onnx_export
    import converter.selfcheck

    def overflow(blobs):
        blobs["conv1"][0][:] = 3e38

    huge = _tiny_with(tiny_model, tmp_path, "huge.caffemodel", overflow)
    out = tmp_path / "huge.pt2"
    result = convert("caffe2torch", "--prototxt", tiny_model.prototxt, "--caffemodel", huge, "-o", out)
    assert_one_line_error(result, "float32 vs float64 inf", "FAILED; nothing written")
    assert not out.exists()

    real = converter.selfcheck.opencv_forward

    def disagreeing_opencv(*args):  # a 1e-3 disagreement: over the 1e-4 floor
        return [out + 1e-3 for out in real(*args) or []]

    monkeypatch.setattr(converter.selfcheck, "opencv_forward", disagreeing_opencv)
    args = ["caffe2torch", "--prototxt", tiny_model.prototxt, "--caffemodel", tiny_model.caffemodel]
    assert_one_line_error(convert(*args, "-o", tmp_path / "t.pt2"), "OpenCV (portable prototxt) vs ours 1.0")
    assert not (tmp_path / "t.pt2").exists()
    assert convert(*args, "-o", tmp_path / "t.pt2", "--no-check").exit_code == 0
    assert (tmp_path / "t.pt2").is_file()

    session = converter.onnx_export.onnx_session

    class Disagreeing:
        def __init__(self, *args) -> None:
            self.inner = session(*args)

        def get_inputs(self):
            return self.inner.get_inputs()

        def run(self, *args):
            return [out * 1.01 for out in self.inner.run(*args)]

    monkeypatch.setattr(converter.onnx_export, "onnx_session", Disagreeing)
    target = tmp_path / "t.onnx"
    assert convert(*args, "-o", tmp_path / "t.safetensors", "--no-check").exit_code == 0
    result = convert("torch2onnx", tmp_path / "t.safetensors", "-o", target, "--input-shape", "1,3,8,8")
    assert_one_line_error(result, "ONNX Runtime vs PyTorch", "FAILED; nothing written")
    assert not target.exists() and not list(tmp_path.glob(".*onnx*"))
