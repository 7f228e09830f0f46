"""Caffe layer names <-> state_dict keys for the seven SENet prototxts.

The Caffe side always comes from the released deploy prototxts in
../shared/senet-caffe/ (parsed by the project's `prototxt` package, which also
infers the blob shapes Caffe would allocate), never from our models.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prototxt import Net, load_net, parse_prototxt
from senet_repro.models import (
    CaffeMappingError,
    SENetWeights,
    caffe_layer_map,
    caffe_to_state_dict,
    get_model,
    list_models,
    recognise_model,
    state_dict_to_caffe,
)
from tests.conftest import unavailable

PROTOTXT_OF = {member.value.name: member.value.prototxt for member in SENetWeights}


@pytest.fixture(scope="module")
def caffe_nets(senet_prototxts) -> dict[str, Net]:
    """model name -> the parsed deploy net, with the blob shapes Caffe would allocate."""
    nets = {}
    for model, filename in PROTOTXT_OF.items():
        stem = filename.removesuffix(".prototxt")
        if stem not in senet_prototxts:
            unavailable(f"{filename} is missing from {senet_prototxts[next(iter(senet_prototxts))].parent}")
        nets[model] = load_net(senet_prototxts[stem])
    return nets


def random_blobs(net: Net, seed: int = 0, scale_factor: float | None = 1.0) -> dict[str, list[np.ndarray]]:
    """Random float32 blobs of the shapes Caffe allocates, read-only like a mapped caffemodel.

    BatchNorm variances are positive; the scale factor is `scale_factor`, or
    random in [0.5, 2) when None.
    """
    rng = np.random.default_rng(seed)
    blobs = {}
    for layer in net.layers:
        if not layer.blob_shapes:
            continue
        arrays = [rng.standard_normal(shape, dtype=np.float32) for shape in layer.blob_shapes]
        if layer.type == "BatchNorm":
            arrays[1] = np.abs(arrays[1]) + np.float32(0.5)
            factor = rng.uniform(0.5, 2.0) if scale_factor is None else scale_factor
            arrays[2] = np.full(layer.blob_shapes[2], factor, dtype=np.float32)
        for array in arrays:
            array.flags.writeable = False
        blobs[layer.name] = arrays
    return blobs


def meta_model(model: str) -> torch.nn.Module:
    with torch.device("meta"):
        return get_model(model)


@pytest.mark.parametrize("model", list_models())
def test_mapping_covers_every_layer_with_blobs(caffe_nets, model):
    net = caffe_nets[model]
    with_blobs = {layer.name: layer.type for layer in net.layers if layer.blob_shapes}
    mapping = caffe_layer_map(model)
    assert set(mapping) == set(with_blobs)
    assert {name: kind for name, (kind, _) in mapping.items()} == with_blobs
    # Every module the mapping names exists (that every key is reached is checked
    # by caffe_to_state_dict itself, in the round-trip test).
    modules = dict(meta_model(model).named_modules())
    assert all(module in modules for _, module in mapping.values())


# The deeper SE-ResNet/ResNeXt variants only repeat blocks of their 50-layer versions.
@pytest.mark.parametrize(
    "model",
    [
        "se_bn_inception",
        "se_resnet50",
        "se_resnext50_32x4d",
        "senet154",
        pytest.param("se_resnet101", marks=pytest.mark.slow),
        pytest.param("se_resnet152", marks=pytest.mark.slow),
        pytest.param("se_resnext101_32x4d", marks=pytest.mark.slow),
    ],
)
def test_random_blobs_load_strictly_and_round_trip_bit_exact(caffe_nets, model):
    blobs = random_blobs(caffe_nets[model])
    state_dict = caffe_to_state_dict(model, blobs)
    meta_model(model).load_state_dict(state_dict, strict=True, assign=True)
    assert all(
        value.dtype == torch.float32
        for key, value in state_dict.items()
        if not key.endswith("num_batches_tracked")
    )

    back = state_dict_to_caffe(model, state_dict)
    assert back.keys() == blobs.keys()
    for layer, arrays in blobs.items():
        assert len(back[layer]) == len(arrays), layer
        for ours, theirs in zip(back[layer], arrays):
            assert ours.dtype == np.float32 and ours.shape == theirs.shape, layer
            assert ours.tobytes() == theirs.tobytes(), layer


def test_values_land_where_the_names_say(caffe_nets):
    blobs = random_blobs(caffe_nets["se_resnet50"])
    state_dict = caffe_to_state_dict("se_resnet50", blobs)
    pairs = {
        "conv1/7x7_s2": ["stem.conv1.weight"],
        "conv3_1_1x1_reduce": ["layer2.0.conv1.weight"],
        "conv3_1_1x1_reduce/bn/scale": ["layer2.0.bn1.weight", "layer2.0.bn1.bias"],
        "conv4_3_1x1_down": ["layer3.2.se.fc1.weight", "layer3.2.se.fc1.bias"],
        "conv5_1_1x1_proj": ["layer4.0.downsample.conv.weight"],
        "conv5_1_1x1_proj/bn": ["layer4.0.downsample.bn.running_mean", "layer4.0.downsample.bn.running_var"],
        "classifier": ["fc.weight", "fc.bias"],
    }
    for layer, keys in pairs.items():
        for array, key in zip(blobs[layer], keys):
            assert np.array_equal(state_dict[key].numpy(), array), key
    assert state_dict["layer1.0.bn1.num_batches_tracked"].item() == 0


def test_batchnorm_scale_factor_follows_caffe_arithmetic(caffe_nets):
    """Caffe: stats * (sf == 0 ? 0 : 1/sf), in float32 (not stats / sf)."""
    blobs = random_blobs(caffe_nets["se_bn_inception"], scale_factor=None)
    blobs["conv2/3x3/bn"][2] = np.zeros(1, dtype=np.float32)
    state_dict = caffe_to_state_dict("se_bn_inception", blobs)
    mean, var, factor = blobs["inception_4a/1x1/bn"]
    scale = np.float32(1) / factor[0]
    assert np.array_equal(state_dict["inception4a.branch1x1.bn.running_mean"].numpy(), mean * scale)
    assert np.array_equal(state_dict["inception4a.branch1x1.bn.running_var"].numpy(), var * scale)
    assert not state_dict["stem.conv2.bn.running_mean"].any()
    assert not state_dict["stem.conv2.bn.running_var"].any()
    assert all(
        np.array_equal(arrays[2], np.ones(1, np.float32))
        for layer, arrays in state_dict_to_caffe("se_bn_inception", state_dict).items()
        if layer.endswith("/bn")
    )


def test_batchnorm_in_float64_follows_net_double(caffe_nets):
    """dtype=float64: every tensor float64 and the division done in float64, as Net<double>."""
    blobs = random_blobs(caffe_nets["se_bn_inception"], scale_factor=None)
    state_dict = caffe_to_state_dict("se_bn_inception", blobs, torch.float64)
    assert {v.dtype for v in state_dict.values() if v.is_floating_point()} == {torch.float64}
    mean, _, factor = blobs["inception_4a/1x1/bn"]
    exact = mean.astype(np.float64) * (1.0 / np.float64(factor[0]))
    assert np.array_equal(state_dict["inception4a.branch1x1.bn.running_mean"].numpy(), exact)


def test_legacy_4d_and_float64_blobs(caffe_nets):
    """Old caffemodels store N x C x H x W blobs (bias as 1x1x1xC) or double_data."""
    blobs = random_blobs(caffe_nets["se_resnext50_32x4d"])
    expected = caffe_to_state_dict("se_resnext50_32x4d", blobs)
    legacy = dict(blobs)
    legacy["classifier"] = [
        blobs["classifier"][0].reshape(1, 1, 1000, 2048),
        blobs["classifier"][1].reshape(1, 1, 1, 1000),
    ]
    legacy["conv2_1_1x1_down"] = [
        blobs["conv2_1_1x1_down"][0].astype(np.float64),
        blobs["conv2_1_1x1_down"][1].reshape(1, 1, 1, 16),
    ]
    legacy["conv2_1_1x1_reduce/bn"] = [array.reshape(1, 1, 1, -1) for array in blobs["conv2_1_1x1_reduce/bn"]]
    converted = caffe_to_state_dict("se_resnext50_32x4d", legacy)
    assert all(torch.equal(converted[key], value) for key, value in expected.items())


def test_mismatches_are_listed(caffe_nets):
    blobs = dict(random_blobs(caffe_nets["se_resnet50"]))
    blobs["extra_conv"] = [np.zeros((4, 4, 1, 1), np.float32)]
    blobs["relu_without_blobs"] = []
    del blobs["conv2_2_3x3/bn/scale"]
    blobs["conv3_1_1x1_up"] = blobs["conv3_1_1x1_up"][:1]
    blobs["conv1/7x7_s2"] = [np.zeros((64, 3, 3, 3), np.float32)]
    with pytest.raises(CaffeMappingError) as info:
        caffe_to_state_dict("se_resnet50", blobs)
    error = info.value
    assert error.unused_layers == ["extra_conv (1 blobs)"]
    assert set(error.missing_keys) == {
        "layer1.1.bn2.weight",
        "layer1.1.bn2.bias",
        "layer2.0.se.fc2.weight",
        "layer2.0.se.fc2.bias",
        "stem.conv1.weight",
    }
    assert len(error.mismatched) == 2
    message = str(error)
    for text in (
        "extra_conv",
        "layer1.1.bn2.weight",
        "conv3_1_1x1_up: 1 blobs, expected 2",
        "conv1/7x7_s2 blob 0: shape (64, 3, 3, 3), expected (64, 3, 7, 7)",
    ):
        assert text in message


def test_reverse_rejects_foreign_state_dicts():
    state_dict = meta_model("se_bn_inception").state_dict()
    del state_dict["fc.bias"]
    state_dict["head.weight"] = torch.zeros(3)
    with pytest.raises(CaffeMappingError) as info:
        state_dict_to_caffe("se_bn_inception", state_dict)
    assert info.value.missing_keys == ["fc.bias"]
    assert info.value.unexpected_keys == ["head.weight"]


def test_wrong_network_is_reported_not_loaded(caffe_nets):
    """SE-ResNeXt blobs under SE-ResNet names: same layer names, other shapes."""
    with pytest.raises(CaffeMappingError, match="blobs that do not fit"):
        caffe_to_state_dict("se_resnet50", random_blobs(caffe_nets["se_resnext50_32x4d"]))


@pytest.mark.parametrize("model", list_models())
def test_recognise_model(caffe_nets, senet_prototxts, model):
    net = caffe_nets[model]
    proto = parse_prototxt(senet_prototxts[PROTOTXT_OF[model].removesuffix(".prototxt")])
    assert recognise_model(net) == model
    assert recognise_model(proto) == model
    assert recognise_model(list(proto.layer)) == model
    shapes_only = {
        layer.name: [np.empty(layer.blob_shapes[0], np.float32)] for layer in net.layers if layer.blob_shapes
    }
    assert recognise_model(shapes_only) == model
    names = [layer.name for layer in net.layers]
    if model.startswith(("se_resnet5", "se_resnet10", "se_resnext")):
        # SE-ResNet-50/101 and SE-ResNeXt-50/101 share every layer name.
        with pytest.raises(ValueError, match="ambiguous"):
            recognise_model(names)
    else:
        assert recognise_model(names) == model
        assert recognise_model([(layer.name, layer.type) for layer in net.layers]) == model


def test_recognise_model_rejects_other_nets():
    with pytest.raises(ValueError, match="not one of the SENet Caffe networks"):
        recognise_model(["data", "conv1", "conv1/bn", "fc"])
