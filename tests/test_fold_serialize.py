"""BatchNorm folding changes nothing but float32 round-off; saved nets load back, without pickle.

The folding bound. In exact arithmetic a folded net computes the same function; two
things differ in floating point: (1) the folded parameters (gamma / sqrt(var + eps) times
the convolution weights, and the new biases) are computed in float64 and rounded to
float32 once, and (2) a float32 evaluation rounds differently when the operations are
merged. So, with e the float64 evaluation of the unfolded net and err32 = |unfolded32 - e|
(max over the logits, relative to their scale), we require
  * |folded64 - e| <= err32: the parameter rounding alone perturbs the result less than a
    float32 evaluation does (it is one rounding per parameter instead of one per operation);
  * |folded32 - e| <= 3 err32: the folded net in float32 is as accurate as the unfolded one
    (the factor 3, as for the OpenCV comparison, absorbs which rounding errors happen to cancel).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from converter import CaffeGraphModule, convert
from converter.calibrate import image_like
from converter.fold import fast_eval, fold_batchnorm
from converter.modules import Affine
from converter.serialize import load_converted, save_converted
from prototxt import Net, load_net
from tests.caffe_factory import make_random_caffemodel
from tests.conftest import unavailable

FLOAT32_FACTOR = 3.0


def load_model(request: pytest.FixtureRequest, name: str) -> tuple[Net, list[str]]:
    """The trained nsfw net or a random calibrated SENet, with its pre-softmax blob."""
    if name == "nsfw":
        pair = request.getfixturevalue("nsfw_model")
        return load_net(pair.prototxt, pair.caffemodel), ["fc_nsfw"]
    prototxts = request.getfixturevalue("senet_prototxts")
    if name not in prototxts:
        unavailable(f"{name}.prototxt is not in ../shared/senet-caffe/")
    return load_net(*make_random_caffemodel(prototxts[name])), ["classifier"]


# --- folding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["nsfw", "SE-ResNeXt-50", "SE-BN-Inception"])
@torch.no_grad()
def test_folding_changes_only_round_off(request: pytest.FixtureRequest, name: str) -> None:
    net, outputs = load_model(request, name)
    if name == "nsfw":
        # Its 2 logits make the max-abs error a max over 4 numbers, too noisy to stand for
        # the net's float32 error level (folded/unfolded ratio measured 0.6-3.7 over six
        # seeds); the 1024 pooled features before them give a stable 1.2-1.9.
        outputs = ["pool"]
    x = image_like((2, 3, 224, 224), seed=5)
    unfolded = convert(net, outputs)
    ours32 = unfolded(x).double()
    exact = unfolded.double()(x.double())
    scale = float(exact.abs().max())
    err32 = float((ours32 - exact).abs().max()) / scale
    for into in ("bn", "conv"):
        folded = fold_batchnorm(convert(net, outputs), into)
        assert folded.caffe_fold == into
        modules = list(folded.modules())
        assert not any(isinstance(m, Affine) for m in modules)  # every Scale merged
        norms = [m for m in modules if isinstance(m, nn.BatchNorm2d)]
        assert all(m.affine for m in norms) and (into == "bn") == bool(norms)
        folded32 = float((folded(x).double() - exact).abs().max()) / scale
        folded64 = float((folded.double()(x.double()) - exact).abs().max()) / scale
        print(
            f"{name} fold '{into}': |folded64 - e| {folded64:.2e}, |folded32 - e| "
            f"{folded32:.2e}, |unfolded32 - e| {err32:.2e} (relative to {scale:.3g})"
        )
        assert folded64 <= err32
        assert folded32 <= FLOAT32_FACTOR * err32


def test_fold_into_conv_after_bn_is_conv(tiny_model) -> None:
    module = convert(load_net(tiny_model.prototxt, tiny_model.caffemodel))
    fold_batchnorm(fold_batchnorm(module, "conv"), "bn")
    assert module.caffe_fold == "conv"
    with pytest.raises(ValueError, match="'bn' or 'conv'"):
        fold_batchnorm(module, "scale")


# --- saving and loading ----------------------------------------------------------------------


@pytest.fixture
def no_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if loading unpickles: torch.load only with weights_only, no pickle.load."""
    real_load = torch.load

    def guarded_load(*args, **kwargs):
        if kwargs.get("weights_only", True) is not True:
            raise AssertionError(f"torch.load called with weights_only={kwargs['weights_only']}")
        return real_load(*args, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle used while loading a converted net")

    monkeypatch.setattr(torch, "load", guarded_load)
    monkeypatch.setattr(torch.serialization, "load", guarded_load)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)


@pytest.fixture(scope="module")
def nsfw_net(nsfw_model) -> Net:
    return load_net(nsfw_model.prototxt, nsfw_model.caffemodel)


@pytest.mark.parametrize("fold", [None, "bn", "conv"])
@torch.no_grad()
def test_safetensors_round_trip(nsfw_net: Net, tmp_path: Path, no_pickle, fold) -> None:
    """state_dict + prototxt; a folded net reloads into the folded structure."""
    module = convert(nsfw_net, ["fc_nsfw", "prob"])
    if fold:
        fold_batchnorm(module, fold)
    x = image_like((2, 3, 224, 224), seed=4)
    written = save_converted(module, nsfw_net, tmp_path / "nsfw.safetensors", x[:1])
    assert written == [tmp_path / "nsfw.safetensors", tmp_path / "nsfw.prototxt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nsfw.prototxt", "nsfw.safetensors"]
    loaded = load_converted(tmp_path / "nsfw.safetensors")
    assert isinstance(loaded, CaffeGraphModule)
    assert loaded.caffe_outputs == ["fc_nsfw", "prob"]
    assert loaded.caffe_fold == (fold or "none")
    for got, expected in zip(loaded(x), module(x)):
        assert torch.equal(got, expected)


@torch.no_grad()
def test_pt2_round_trip_keeps_batch_dynamic(nsfw_net: Net, tmp_path: Path, no_pickle) -> None:
    module = convert(nsfw_net, ["fc_nsfw"])
    x = image_like((3, 3, 224, 224), seed=4)
    assert save_converted(module, nsfw_net, tmp_path / "nsfw.pt2", x[:1]) == [tmp_path / "nsfw.pt2"]
    assert [p.name for p in tmp_path.iterdir()] == ["nsfw.pt2"]
    program = load_converted(tmp_path / "nsfw.pt2")
    assert isinstance(program, torch.export.ExportedProgram)
    assert torch.equal(program.module()(x), module(x))


def test_unknown_suffix_writes_nothing(tiny_model, tmp_path: Path) -> None:
    net = load_net(tiny_model.prototxt, tiny_model.caffemodel)
    with pytest.raises(ValueError, match=r"\.pt2 or \.safetensors"):
        save_converted(convert(net), net, tmp_path / "tiny.pt", torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\.pt2 or \.safetensors"):
        load_converted(tmp_path / "tiny.pth")
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nsfw", "SE-ResNeXt-50"])
@torch.no_grad()
def test_fast_eval_stays_within_the_folding_bound(request: pytest.FixtureRequest, name: str) -> None:
    """`fast_eval`, what senet-validate runs by default: the generic graph (nsfw's 1024 pooled
    features, see above) and the clean model (SE-ResNeXt-50 logits), folded and channels_last,
    within the folding bound of the module docstring."""
    from senet_repro.models import caffe_to_state_dict, get_model

    net, outputs = load_model(request, name)

    def make() -> nn.Module:
        if name == "nsfw":
            return convert(net, ["pool"])
        model = get_model("se_resnext50")
        model.load_state_dict(caffe_to_state_dict("se_resnext50", net.weights()))
        return model.eval()

    x = image_like((2, 3, 224, 224), seed=5)
    unfolded = make()
    exact = unfolded.double()(x.double())
    unfolded.float()
    scale = float(exact.abs().max())
    err32 = float((unfolded(x).double() - exact).abs().max()) / scale
    fast = fast_eval(make())
    assert not any(isinstance(m, (nn.BatchNorm2d, Affine)) for m in fast.modules())
    convolutions = [m for m in fast.modules() if isinstance(m, nn.Conv2d)]
    assert convolutions and all(
        m.weight.is_contiguous(memory_format=torch.channels_last)
        for m in convolutions
        if m.kernel_size != (1, 1)
    )
    folded32 = (
        float((fast(x.contiguous(memory_format=torch.channels_last)).double() - exact).abs().max()) / scale
    )
    folded64 = float((fast.double()(x.double()) - exact).abs().max()) / scale
    print(
        f"{name} fast_eval: |folded64 - e| {folded64:.2e}, |folded32 - e| {folded32:.2e}, "
        f"|unfolded32 - e| {err32:.2e}"
    )
    assert folded64 <= err32
    assert folded32 <= FLOAT32_FACTOR * err32
