"""The PyTorch SE networks against the Caffe deploy prototxts, timm, and their own API.

The strongest checks are `test_features_match_caffe_semantics` and
`test_logits_match_caffe`: a small interpreter of
the released prototxt with Caffe's layer semantics (its own pooling, written
from Caffe's formulas) runs random Caffe weights, and our network with the same
weights must give the same feature map and logits.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from prototxt import Net, load_net
from prototxt.caffe_pb2 import PoolingParameter
from prototxt.shapes import conv_geometry, pool_geometry
from senet_repro.models import (
    ALIASES,
    SEBNInception,
    SENet,
    SENetWeights,
    UnknownModelError,
    caffe_to_state_dict,
    from_timm_state_dict,
    get_model,
    list_models,
    timm_model_name,
    to_timm_state_dict,
    weights_for,
)
from senet_repro.models.blocks import SEBottleneck, caffe_avg_pool, caffe_max_pool
from tests.conftest import unavailable

PROTOTXT_OF = {member.value.name: member.value.prototxt for member in SENetWeights}


# --- Caffe reference semantics --------------------------------------------------------------


def caffe_pooled_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Caffe PoolingLayer::Reshape: ceil, then drop a last window starting in the padding."""
    out = math.ceil((size + 2 * pad - kernel) / stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def caffe_pool_axis(
    x: torch.Tensor, axis: int, kernel: int, stride: int, pad: int, mode: str
) -> tuple[torch.Tensor, list[int]]:
    """Pool along one axis as Caffe's loops do; also return Caffe's divisor per output."""
    size = x.shape[axis]
    outputs, divisors = [], []
    for index in range(caffe_pooled_size(size, kernel, stride, pad)):
        start = index * stride - pad
        end = min(start + kernel, size + pad)
        divisors.append(end - start)  # AVE divides by the window clipped to the padded input
        start, end = max(start, 0), min(end, size)
        window = x.narrow(axis, start, end - start)
        outputs.append(window.amax(axis, keepdim=True) if mode == "MAX" else window.sum(axis, keepdim=True))
    return torch.cat(outputs, axis), divisors


def caffe_pool(
    x: torch.Tensor, kernel: list[int], stride: list[int], pad: list[int], mode: str
) -> torch.Tensor:
    """Caffe MAX / AVE pooling (both separable over the two spatial axes)."""
    y, rows = caffe_pool_axis(x, 2, kernel[0], stride[0], pad[0], mode)
    y, cols = caffe_pool_axis(y, 3, kernel[1], stride[1], pad[1], mode)
    if mode == "AVE":
        y = y / (torch.tensor(rows, dtype=y.dtype)[:, None] * torch.tensor(cols, dtype=y.dtype)[None, :])
    return y


def run_caffe(
    net: Net, blobs: dict[str, list[np.ndarray]], data: torch.Tensor, until: str | None = None
) -> dict[str, torch.Tensor]:
    """Forward a deploy net with Caffe's layer semantics in `data`'s dtype; returns every top.

    Stops before layer `until` if given (e.g. to skip the fixed 7x7 pool5 on small inputs).
    """
    values = {"data": data}
    for layer in net.layers:
        if layer.name == until:
            break
        param, bottoms = layer.param, [values[name] for name in layer.bottoms]
        weights = [torch.from_numpy(array).to(data.dtype) for array in blobs.get(layer.name, [])]
        kind = layer.type
        if kind == "Input":
            continue
        if kind == "Convolution":
            geometry = conv_geometry(param)
            out = F.conv2d(
                bottoms[0],
                weights[0],
                weights[1] if len(weights) > 1 else None,
                geometry["stride"],
                geometry["pad"],
                geometry["dilation"],
                param.convolution_param.group,
            )
        elif kind == "BatchNorm":
            mean, var, factor = blobs[layer.name]
            scale = np.float32(0) if factor[0] == 0 else np.float32(1) / factor[0]  # float32, as Caffe
            mean_t, var_t = (torch.from_numpy(s * scale).to(data.dtype)[:, None, None] for s in (mean, var))
            out = (bottoms[0] - mean_t) / torch.sqrt(var_t + param.batch_norm_param.eps)
        elif kind == "Scale" and len(bottoms) == 2:  # axis 0: bottom[1] is N x C
            out = bottoms[0] * bottoms[1][:, :, None, None]
        elif kind == "Scale":
            out = bottoms[0] * weights[0][:, None, None] + weights[1][:, None, None]
        elif kind == "ReLU":
            out = bottoms[0].clamp_min(0)
        elif kind == "Sigmoid":
            out = torch.sigmoid(bottoms[0])
        elif kind == "Pooling":
            geometry = pool_geometry(param, tuple(bottoms[0].shape))
            mode = PoolingParameter.PoolMethod.Name(param.pooling_param.pool)
            out = caffe_pool(bottoms[0], geometry["kernel"], geometry["stride"], geometry["pad"], mode)
        elif kind == "Axpy":
            gate, x, y = bottoms
            out = gate * x + y
        elif kind == "Concat":
            out = torch.cat(bottoms, dim=1)
        elif kind == "Reshape":
            dims = list(param.reshape_param.shape.dim)
            assert dims == [0, 0], dims  # the only Reshape in the release: keep N, C
            out = bottoms[0].reshape(bottoms[0].shape[:2])
        elif kind == "InnerProduct":
            out = bottoms[0].flatten(1) @ weights[0].T + weights[1]
        elif kind == "Dropout":  # TEST phase
            out = bottoms[0]
        elif kind == "Softmax":
            out = torch.softmax(bottoms[0], dim=1)
        else:
            raise NotImplementedError(kind)
        values[layer.tops[0]] = out
    return values


def scaled_random_blobs(net: Net, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Random float32 Caffe weights that keep activations in range over 150+ layers.

    BatchNorm scale factors are random too (Caffe divides the statistics by them).
    """
    rng = np.random.default_rng(seed)

    def normal(shape, std: float) -> np.ndarray:
        array = rng.standard_normal(shape, dtype=np.float32)
        array *= np.float32(std)
        return array

    def uniform(shape, low: float, high: float) -> np.ndarray:
        array = rng.random(shape, dtype=np.float32)
        array *= np.float32(high - low)
        array += np.float32(low)
        return array

    blobs = {}
    for layer in net.layers:
        shapes = layer.blob_shapes
        if not shapes:
            continue
        if layer.type in ("Convolution", "InnerProduct"):
            arrays = [normal(shapes[0], 1 / math.sqrt(math.prod(shapes[0][1:])))]
            arrays += [normal(shape, 0.1) for shape in shapes[1:]]
        elif layer.type == "BatchNorm":
            factor = np.float32(rng.uniform(0.5, 2.0))
            arrays = [
                normal(shapes[0], 0.1) * factor,
                uniform(shapes[1], 0.5, 1.5) * factor,
                np.full(shapes[2], factor),
            ]
        else:  # Scale: gamma, beta
            arrays = [uniform(shapes[0], 0.5, 1.0), normal(shapes[1], 0.1)]
        blobs[layer.name] = arrays
    return blobs


@pytest.fixture(scope="module")
def caffe_net(senet_prototxts):
    """model name -> parsed deploy net (loaded on first use)."""
    cache: dict[str, Net] = {}

    def load(model: str) -> Net:
        if model not in cache:
            cache[model] = load_net(senet_prototxts[PROTOTXT_OF[model].removesuffix(".prototxt")])
        return cache[model]

    return load


# --- pooling ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [7, 8, 13, 14, 28, 112])
@pytest.mark.parametrize(
    "mode, kernel, stride, pad",
    [
        ("MAX", 3, 2, 0),  # pool1, pool2, grid-reduction pools
        ("AVE", 3, 1, 1),  # Inception pool branches
        ("MAX", 3, 1, 1),  # inception_5b/pool
        ("AVE", 3, 2, 1),  # not in the release: padding at a ceil-clipped border
        ("MAX", 3, 2, 1),
    ],
)
def test_pooling_matches_caffe(size, mode, kernel, stride, pad):
    x = torch.randn(2, 3, size, size + 1, dtype=torch.float64)
    module = (caffe_max_pool if mode == "MAX" else caffe_avg_pool)(kernel, stride, pad)
    expected = caffe_pool(x, [kernel] * 2, [stride] * 2, [pad] * 2, mode)
    torch.testing.assert_close(module(x), expected, rtol=1e-12, atol=1e-12)


def test_stem_pool_rounds_up_like_caffe():
    assert caffe_max_pool()(torch.zeros(1, 1, 112, 112)).shape[-2:] == (56, 56)
    assert caffe_max_pool()(torch.zeros(1, 1, 28, 28)).shape[-2:] == (14, 14)  # floor: 13


# --- whole networks against the prototxts ----------------------------------------------------


def caffe_weighted(model: str, net: Net) -> tuple[dict[str, list[np.ndarray]], SENet | SEBNInception]:
    """Random Caffe blobs for `net` and our `model` (eval mode) loaded with them."""
    blobs = scaled_random_blobs(net)
    with torch.device("meta"):  # skip the random initialisation; every tensor is replaced
        ours = get_model(model)
    ours.load_state_dict(caffe_to_state_dict(model, blobs), assign=True)
    return blobs, ours.eval()


# The deeper SE-ResNet/ResNeXt variants only repeat blocks of their 50-layer versions.
DEEPER = ("se_resnet101", "se_resnet152", "se_resnext101_32x4d")


@pytest.mark.parametrize(
    "model",
    [pytest.param(model, marks=pytest.mark.slow) if model in DEEPER else model for model in list_models()],
)
def test_features_match_caffe_semantics(caffe_net, model):
    """Random Caffe weights: our feature map == the prototxt run with Caffe semantics.

    96x96 input (Caffe's fixed 7x7 pool5 is left out; `test_logits_match_caffe`
    covers the head at 224x224). float32 on both sides: the observed relative
    difference is ~1e-7 (~1e-12 in float64), so any wiring difference (stride
    placement, concat order, shortcut, SE) shows up as an O(1) error.
    """
    net = caffe_net(model)
    blobs, ours = caffe_weighted(model, net)
    data = 50.0 * torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = run_caffe(net, blobs, data, until="pool5/7x7_s1")
        features = ours.forward_features(data)
    last = expected[net.layer("pool5/7x7_s1").bottoms[0]]
    assert features.shape[-2:] == (3, 3)
    torch.testing.assert_close(features, last, rtol=1e-4, atol=1e-4 * last.abs().max().item())


@pytest.mark.parametrize("model", ["se_bn_inception", pytest.param("senet154", marks=pytest.mark.slow)])
def test_logits_match_caffe(caffe_net, model):
    """The whole deploy net at its 224x224 input: pool5 (7x7 AVE), dropout (TEST), classifier."""
    net = caffe_net(model)
    blobs, ours = caffe_weighted(model, net)
    data = 50.0 * torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, logits = run_caffe(net, blobs, data)["classifier"], ours(data)
    scale = expected.abs().max().item()
    assert scale > 1e-3  # the check is not vacuous
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("model", list_models())
def test_parameter_count_equals_caffe(caffe_net, model):
    """Learnable values (conv, BN gamma/beta, FC) == Caffe's blobs minus BatchNorm statistics."""
    with torch.device("meta"):
        ours = get_model(model)
    assert sum(p.numel() for p in ours.parameters()) == caffe_net(model).learnable_parameters


@pytest.mark.parametrize(
    "model, count",
    [
        ("se_resnet50", 28_088_024),
        ("se_resnext50_32x4d", 27_559_896),
        ("senet154", 115_088_984),
    ],
)
def test_parameter_count_equals_timm(model, count):
    with torch.device("meta"):
        ours = get_model(model)
    assert sum(p.numel() for p in ours.parameters()) == count


@pytest.mark.parametrize("model", ["se_bn_inception", "se_resnet50", "se_resnext50_32x4d"])
def test_small_input_shapes(model):
    ours = get_model(model, num_classes=10).eval()
    with torch.no_grad():
        features = ours.forward_features(torch.zeros(2, 3, 64, 64))
        logits = ours(torch.zeros(2, 3, 64, 64))
    assert features.shape == (2, ours.num_features, 2, 2)
    assert logits.shape == (2, 10)


def test_senet154_dropout_before_classifier():
    with torch.device("meta"):
        senet, resnet = get_model("senet154"), get_model("se_resnet50")
    assert isinstance(senet.dropout, torch.nn.Dropout) and senet.dropout.p == 0.2
    assert isinstance(resnet.dropout, torch.nn.Identity)


# --- timm ------------------------------------------------------------------------------------


def randomise_batchnorm(model: torch.nn.Module) -> None:
    """Non-trivial running statistics, so BN conversion mistakes show up in the logits."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=generator))
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.bias.data.copy_(0.1 * torch.randn(module.num_features, generator=generator))


@pytest.mark.parametrize(
    "model, size",
    [
        ("se_resnet50", 64),
        ("se_resnext50_32x4d", 224),
        pytest.param("senet154", 64, marks=pytest.mark.slow),
    ],
)
def test_timm_layout_loads_strictly_and_gives_our_logits(model, size):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    theirs = timm.create_model(timm_model_name(model), pretrained=False).eval()
    with torch.no_grad():
        randomise_batchnorm(theirs)
    with torch.device("meta"):
        ours = get_model(model)
    ours.load_state_dict(from_timm_state_dict(model, theirs.state_dict()), strict=True, assign=True)
    ours.eval()
    theirs.load_state_dict(to_timm_state_dict(model, ours.state_dict()), strict=True)
    assert theirs.pool0.ceil_mode  # timm's legacy stem pool rounds up as Caffe does
    x = 50.0 * torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected, actual = theirs(x), ours(x)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_timm_names_are_timm_models():
    timm = pytest.importorskip("timm")
    for name in list_models():
        timm_name = weights_for(name).timm_name
        if timm_name is None:
            with pytest.raises(ValueError, match=f"{name} has no timm counterpart"):
                timm_model_name(name)
        else:
            assert timm_model_name(name) == timm_name and timm.is_model(timm_name)


# --- registry and weights descriptions -------------------------------------------------------


def test_list_models_and_aliases():
    assert list_models() == [
        "se_bn_inception",
        "se_resnet50",
        "se_resnet101",
        "se_resnet152",
        "se_resnext50_32x4d",
        "se_resnext101_32x4d",
        "senet154",
    ]
    assert ALIASES == {"se_resnext50": "se_resnext50_32x4d", "se_resnext101": "se_resnext101_32x4d"}
    with torch.device("meta"):
        alias = get_model("se_resnext50")
    assert isinstance(alias, SENet) and isinstance(alias.layer1[0], SEBottleneck)
    assert alias.layer1[0].conv2.groups == 32


def test_unknown_model_lists_valid_names():
    with pytest.raises(UnknownModelError) as info:
        get_model("se_resnet34")
    for name in list_models() + list(ALIASES):
        assert name in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_get_model_loads_weights(tmp_path, suffix):
    source = get_model("se_bn_inception", num_classes=7)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pth":
        torch.save(source.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file(source.state_dict(), str(path))
    loaded = get_model("se_bn_inception", checkpoint=path, num_classes=7)
    assert not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), source.state_dict().values()))
    with pytest.raises(
        ValueError, match=r"not a se_bn_inception state_dict: 2 shapes differ \(e\.g\. fc\.weight"
    ):
        get_model("se_bn_inception", checkpoint=path)  # 1000 classes


@pytest.mark.parametrize("name", list_models())
def test_each_record_fits_the_network_registered_beside_it(name):
    """The record's module paths name the modules they describe in the built network."""
    weights = weights_for(name)
    with torch.device("meta"):
        network = get_model(name)
    first = next(module for module in network.modules() if isinstance(module, torch.nn.Conv2d))
    assert network.get_submodule(weights.first_conv) is first and first.in_channels == 3
    norm = network.get_submodule(weights.first_norm)
    assert isinstance(norm, torch.nn.BatchNorm2d) and norm.num_features == first.out_channels
    classifier = network.get_submodule(weights.classifier)
    assert isinstance(classifier, torch.nn.Linear) and classifier.out_features == weights.num_classes
    assert weights.transforms().mean_bgr == weights.mean_bgr
    assert SENetWeights[name.upper()].value is weights  # the enum member is the record


def test_records_name_the_release_files(senet_prototxts):
    """File names and net names as in the release (its deploy prototxts, read in place)."""
    for member in SENetWeights:
        weights = member.value
        path = senet_prototxts.get(weights.prototxt.removesuffix(".prototxt"))
        if path is None:
            unavailable(f"{weights.prototxt} is not in ../shared/senet-caffe/")
        assert load_net(path).name == weights.net_name
        assert weights.caffemodel.removesuffix(".caffemodel") in (weights.net_name, path.stem)
