"""The net model: Caffe's shape rules, TEST-phase filtering, and merging weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from prototxt import (
    NetDefinitionError,
    WeightsMismatchError,
    build_net,
    caffe_pb2,
    load_net,
    parse_prototxt_text,
    read_caffemodel,
    write_caffemodel,
)
from prototxt.net import Net, upgrade_v1_layer
from senet_repro.assets import CaffePair

# Learnable parameters (convolution, Scale and InnerProduct blobs; not BatchNorm
# statistics) of the Caffe releases, equal to timm's legacy SENet models.
PARAMETERS = {"SE-ResNet-50": 28_088_024, "SE-ResNeXt-50": 27_559_896, "SENet-154": 115_088_984}
# GFLOPs (multiply-adds) in Table 2 of the SENet paper (Hu et al., TPAMI 2019).
PAPER_GMACS = {"SE-ResNet-50": 3.87, "SE-ResNeXt-50": 4.25, "SENet-154": 20.7}


def _net(
    layers: str, *shapes: tuple[int, ...], phase: caffe_pb2.Phase = caffe_pb2.TEST, state: str = ""
) -> Net:
    """Build a net whose inputs "x0", "x1", ... have `shapes`, then `layers`."""
    inputs = "".join(
        f'input: "x{i}" input_shape {{ {" ".join(f"dim: {d}" for d in shape)} }}\n'
        for i, shape in enumerate(shapes)
    )
    return build_net(parse_prototxt_text(state + inputs + layers), phase=phase)


def _top(layers: str, *shapes: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of the last layer's first top."""
    return _net(layers, *shapes).layers[-1].top_shapes[0]


def _pool(params: str, shape: tuple[int, ...] = (1, 1, 112, 112)) -> tuple[int, ...]:
    return _top(
        f'layer {{ name: "p" type: "Pooling" bottom: "x0" top: "p" pooling_param {{ {params} }} }}', shape
    )


# --- the SENet releases ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def senet(senet_prototxts: dict[str, Path]) -> dict[str, Net]:
    return {name: load_net(path) for name, path in senet_prototxts.items()}


def test_every_senet_ends_in_1x1000(senet: dict[str, Net]) -> None:
    assert len(senet) == 7
    for net in senet.values():
        assert net.inputs == {"data": (1, 3, 224, 224)}
        assert net.outputs == ["prob"] and net.blob_shapes["prob"] == (1, 1000)


def test_se_resnet50_pool1_is_56x56(senet: dict[str, Net]) -> None:
    layer = senet["SE-ResNet-50"].layer("pool1/3x3_s2")
    assert layer.bottom_shapes == [(1, 64, 112, 112)]
    assert layer.top_shapes == [(1, 64, 56, 56)]


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_learnable_parameters(senet: dict[str, Net], name: str) -> None:
    assert senet[name].learnable_parameters == PARAMETERS[name]
    assert senet[name].multiply_adds / 1e9 == pytest.approx(PAPER_GMACS[name], rel=0.01)


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_learnable_parameters_equal_timm(senet: dict[str, Net], name: str) -> None:
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from senet_repro.models import SENetWeights

    release = next(m.value for m in SENetWeights if m.value.prototxt == f"{name}.prototxt")
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = timm.create_model(release.timm_name, pretrained=False)
    assert sum(p.numel() for p in model.parameters()) == senet[name].learnable_parameters


def test_se_bn_inception_gates_with_a_two_bottom_scale(senet: dict[str, Net]) -> None:
    gates = [
        layer
        for layer in senet["SE-BN-Inception"].layers
        if layer.type == "Scale" and len(layer.bottoms) == 2
    ]
    assert len(gates) == 10
    for layer in gates:
        feature, gate = layer.bottom_shapes
        assert gate == feature[:2] and layer.top_shapes == [feature]
        assert layer.blob_shapes == [] and layer.learnable_parameters == 0


def test_senet154_axpy_and_dropout(senet: dict[str, Net]) -> None:
    net = senet["SENet-154"]
    axpys = [layer for layer in net.layers if layer.type == "Axpy"]
    assert len(axpys) == 50
    for layer in axpys:
        gate, x, y = layer.bottom_shapes
        assert gate == (*x[:2], 1, 1) and x == y and layer.top_shapes == [x]
    assert [layer.type for layer in net.layers[-3:]] == ["Dropout", "InnerProduct", "Softmax"]


# --- shape rules -----------------------------------------------------------------------------


def test_pooling_rounds_up() -> None:
    assert _pool("pool: MAX kernel_size: 3 stride: 2") == (1, 1, 56, 56)
    assert _pool("pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR") == (1, 1, 55, 55)


def test_fork_ceil_mode_is_caffes_rounding() -> None:
    """`ceil_mode` (BVLC PR #3057, DenseNet/ResNeXt/DPN releases): false rounds down."""
    assert _pool("pool: MAX kernel_size: 3 stride: 2 ceil_mode: false") == (1, 1, 55, 55)
    assert _pool("pool: MAX kernel_size: 3 stride: 2 ceil_mode: true") == (1, 1, 56, 56)
    assert _pool("pool: MAX kernel_size: 3 stride: 2 ceil_mode: false round_mode: FLOOR") == (1, 1, 55, 55)
    with pytest.raises(NetDefinitionError, match="ceil_mode: false contradicts round_mode: CEIL"):
        _pool("pool: MAX kernel_size: 3 stride: 2 ceil_mode: false round_mode: CEIL")


def test_a_caffemodel_alone_with_pooling_field_13_is_refused(tmp_path: Path) -> None:
    """Field 13 is round_mode to BVLC and ceil_mode (opposite meaning) to forks: the prototxt decides."""
    text = (
        'input: "x0" input_shape { dim: 1 dim: 1 dim: 8 dim: 8 }\n'
        'layer { name: "p" type: "Pooling" bottom: "x0" top: "p" '
        "pooling_param { pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR } }"
    )
    caffemodel, prototxt = tmp_path / "net.caffemodel", tmp_path / "net.prototxt"
    write_caffemodel(caffemodel, parse_prototxt_text(text), {})
    prototxt.write_text(text)
    with pytest.raises(
        NetDefinitionError, match="layer 'p': the caffemodel stores PoolingParameter field 13"
    ):
        load_net(caffemodel=caffemodel)
    assert load_net(prototxt, caffemodel).blob_shapes["p"] == (1, 1, 3, 3)


def test_pooling_clips_a_last_window_that_starts_in_the_padding() -> None:
    # ceil((5 + 2 - 2) / 2) + 1 = 4, but the 4th window would start at 6 >= 5 + 1.
    assert _pool("pool: MAX kernel_size: 2 stride: 2 pad: 1", (1, 1, 5, 5)) == (1, 1, 3, 3)
    # The 3x3/s1/p1 pooling of SE-BN-Inception keeps the size.
    assert _pool("pool: AVE kernel_size: 3 stride: 1 pad: 1", (1, 1, 28, 28)) == (1, 1, 28, 28)


def test_pooling_clips_every_axis_once_any_axis_is_padded() -> None:
    """Caffe checks `pad_h_ || pad_w_`: an unpadded axis is clipped too."""
    params = "pool: MAX kernel_h: 2 kernel_w: 1 stride_h: 2 stride_w: 3 pad_h: {} pad_w: 0"
    assert _pool(params.format(1), (1, 1, 5, 5)) == (1, 1, 3, 2)
    assert _pool(params.format(0), (1, 1, 5, 5)) == (1, 1, 3, 3)


def test_global_pooling() -> None:
    assert _pool("pool: AVE global_pooling: true", (2, 8, 7, 5)) == (2, 8, 1, 1)
    with pytest.raises(NetDefinitionError, match="no kernel size"):
        _pool("pool: AVE global_pooling: true kernel_size: 7", (2, 8, 7, 7))
    with pytest.raises(NetDefinitionError, match="only pad 0 and stride 1"):
        _pool("pool: AVE global_pooling: true pad: 1", (2, 8, 7, 7))


def test_pooling_pad_must_be_smaller_than_kernel() -> None:
    with pytest.raises(NetDefinitionError, match="smaller than kernel"):
        _pool("pool: MAX kernel_size: 2 pad: 2")


def test_convolution_geometry_and_blobs() -> None:
    net = _net(
        'layer { name: "c" type: "Convolution" bottom: "x0" top: "c" convolution_param {'
        " num_output: 64 kernel_size: 3 pad: 2 stride: 2 dilation: 2 group: 32 } }"
        'layer { name: "r" type: "Convolution" bottom: "c" top: "r" convolution_param {'
        " num_output: 10 kernel_h: 1 kernel_w: 3 pad_w: 1 bias_term: false } }",
        (1, 32, 56, 56),
    )
    conv, rect = net.layers
    assert conv.top_shapes == [(1, 64, 28, 28)]
    assert conv.blob_shapes == [(64, 1, 3, 3), (64,)]
    assert rect.top_shapes == [(1, 10, 28, 28)] and rect.blob_shapes == [(10, 64, 1, 3)]
    assert conv.multiply_adds == 64 * 28 * 28 * 9


def test_deconvolution() -> None:
    layer = _net(
        'layer { name: "d" type: "Deconvolution" bottom: "x0" top: "d"'
        " convolution_param { num_output: 4 kernel_size: 4 stride: 2 pad: 1 group: 2 } }",
        (1, 6, 7, 7),
    ).layers[0]
    assert layer.top_shapes == [(1, 4, 14, 14)]
    assert layer.blob_shapes == [(6, 2, 4, 4), (4,)]


def test_reshape_zero_and_minus_one() -> None:
    def reshape(params: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        return _top(
            f'layer {{ name: "r" type: "Reshape" bottom: "x0" top: "r" reshape_param {{ {params} }} }}', shape
        )

    assert reshape("shape { dim: 0 dim: 0 }", (1, 64, 1, 1)) == (1, 64)
    assert reshape("shape { dim: 0 dim: -1 }", (2, 64, 3, 3)) == (2, 576)
    assert reshape("shape { dim: -1 dim: 0 }", (2, 64, 3, 3)) == (18, 64)  # 0 copies axis 1
    assert reshape("shape { dim: 2 dim: -1 } axis: 1 num_axes: 1", (2, 64, 3, 3)) == (2, 2, 32, 3, 3)
    assert reshape("shape { dim: -1 } axis: -2", (2, 3, 4)) == (2, 3, 4)
    with pytest.raises(NetDefinitionError, match="at most one -1"):
        reshape("shape { dim: -1 dim: -1 }", (2, 3))
    with pytest.raises(NetDefinitionError, match="cannot reshape"):
        reshape("shape { dim: 5 dim: -1 }", (2, 3))
    with pytest.raises(NetDefinitionError, match="no axis 2"):
        reshape("shape { dim: 0 dim: 0 dim: 0 }", (2, 3))


def test_concat() -> None:
    concat = 'layer {{ name: "c" type: "Concat" bottom: "x0" bottom: "x1" top: "c" {} }}'
    assert _top(concat.format(""), (1, 64, 28, 28), (1, 32, 28, 28)) == (1, 96, 28, 28)
    assert _top(concat.format("concat_param { axis: -1 }"), (2, 3), (2, 5)) == (2, 8)
    assert _top(concat.format("concat_param { concat_dim: 0 }"), (2, 3), (4, 3)) == (6, 3)
    with pytest.raises(NetDefinitionError, match="differ outside axis 1"):
        _top(concat.format(""), (1, 64, 28, 28), (1, 32, 14, 14))


def test_eltwise() -> None:
    eltwise = 'layer {{ name: "e" type: "Eltwise" bottom: "x0" bottom: "x1" top: "e" {} }}'
    assert _top(eltwise.format("eltwise_param { operation: PROD }"), (1, 8, 4, 4), (1, 8, 4, 4)) == (
        1,
        8,
        4,
        4,
    )
    with pytest.raises(NetDefinitionError, match="equal shapes"):
        _top(eltwise.format(""), (1, 8, 4, 4), (1, 8, 2, 2))
    with pytest.raises(NetDefinitionError, match="3 coefficients for 2 bottoms"):
        _top(eltwise.format("eltwise_param { coeff: 1 coeff: 1 coeff: 1 }"), (1, 2), (1, 2))


def test_scale_with_two_bottoms() -> None:
    scale = 'layer {{ name: "s" type: "Scale" bottom: "x0" bottom: "x1" top: "s" scale_param {{ {} }} }}'
    layer = _net(scale.format("axis: 0"), (1, 64, 28, 28), (1, 64)).layers[0]
    assert layer.top_shapes == [(1, 64, 28, 28)] and layer.blob_shapes == []
    layer = _net(scale.format("axis: 1 bias_term: true"), (1, 64, 28, 28), (64, 28)).layers[0]
    assert layer.blob_shapes == [(64, 28)]
    with pytest.raises(NetDefinitionError, match="does not match axes 1"):
        _net(scale.format(""), (1, 64, 28, 28), (1, 64))


def test_scale_with_one_bottom() -> None:
    scale = 'layer {{ name: "s" type: "Scale" bottom: "x0" top: "s" scale_param {{ {} }} }}'
    assert _net(scale.format("bias_term: true"), (1, 8, 4, 4)).layers[0].blob_shapes == [(8,), (8,)]
    assert _net(scale.format("axis: 1 num_axes: -1"), (1, 8, 4, 4)).layers[0].blob_shapes == [(8, 4, 4)]
    assert _net(scale.format("axis: 0 num_axes: 0"), (1, 8)).layers[0].blob_shapes == [()]


def test_axpy() -> None:
    axpy = 'layer { name: "a" type: "Axpy" bottom: "x0" bottom: "x1" bottom: "x2" top: "a" }'
    assert _top(axpy, (2, 16, 1, 1), (2, 16, 7, 7), (2, 16, 7, 7)) == (2, 16, 7, 7)
    with pytest.raises(NetDefinitionError, match="N x C x 1 x 1"):
        _top(axpy, (2, 16, 7, 7), (2, 16, 7, 7), (2, 16, 7, 7))
    with pytest.raises(NetDefinitionError, match="N x C x 1 x 1"):
        _top(axpy, (2, 8, 1, 1), (2, 16, 7, 7), (2, 16, 7, 7))
    with pytest.raises(NetDefinitionError, match="equal shapes"):
        _top(axpy, (2, 16, 1, 1), (2, 16, 7, 7), (2, 16, 6, 6))
    with pytest.raises(NetDefinitionError, match="takes 3 bottom"):
        _top(
            'layer { name: "a" type: "Axpy" bottom: "x0" bottom: "x1" top: "a" }',
            (2, 16, 1, 1),
            (2, 16, 7, 7),
        )


@pytest.mark.parametrize(
    "params, top, weight, macs",
    [
        # input 2x3x4x5, 10 outputs: MACs = rows x fan-in x 10
        ("", (2, 10), (10, 60), 2 * 60 * 10),
        ("axis: 2", (2, 3, 10), (10, 20), 6 * 20 * 10),
        ("axis: -1", (2, 3, 4, 10), (10, 5), 24 * 5 * 10),
        ("axis: 1 transpose: true", (2, 10), (60, 10), 2 * 60 * 10),
    ],
)
def test_inner_product_axis(params: str, top: tuple[int, ...], weight: tuple[int, ...], macs: int) -> None:
    layer = _net(
        f'layer {{ name: "fc" type: "InnerProduct" bottom: "x0" top: "fc"'
        f" inner_product_param {{ num_output: 10 {params} }} }}",
        (2, 3, 4, 5),
    ).layers[0]
    assert layer.top_shapes == [top]
    assert layer.blob_shapes == [weight, (10,)]
    assert layer.multiply_adds == macs


def test_flatten_and_slice() -> None:
    net = _net(
        'layer { name: "f" type: "Flatten" bottom: "x0" top: "f" }'
        'layer { name: "s" type: "Slice" bottom: "f" top: "a" top: "b" top: "c"'
        " slice_param { slice_point: 10 slice_point: 50 } }",
        (2, 3, 4, 5),
    )
    assert net.layers[0].top_shapes == [(2, 60)]
    assert net.layers[1].top_shapes == [(2, 10), (2, 40), (2, 10)]


# --- inputs and phases -----------------------------------------------------------------------


def test_v1_layers_keep_every_shared_parameter() -> None:
    proto = parse_prototxt_text('layers { name: "pow" type: POWER power_param { power: 2 shift: 1 } }')
    layer = upgrade_v1_layer(proto.layers[0])
    assert layer.type == "Power" and (layer.power_param.power, layer.power_param.shift) == (2, 1)


def test_v0_layers_are_refused_with_the_upgrade_tool_named() -> None:
    with pytest.raises(NetDefinitionError, match="V0 layer definition.*upgrade_net_proto_text"):
        _net('layers { layer { name: "c" type: "conv" num_output: 2 } bottom: "x0" top: "y" }', (1, 2, 3, 3))


def test_legacy_inputs() -> None:
    relu = 'layer { name: "r" type: "ReLU" bottom: "data" top: "data" }'
    net = build_net(
        parse_prototxt_text('input: "data" input_dim: 1 input_dim: 3 input_dim: 224 input_dim: 224 ' + relu)
    )
    assert net.inputs == {"data": (1, 3, 224, 224)}
    net = build_net(
        parse_prototxt_text('input: "data" input_shape { dim: 10 dim: 3 dim: 32 dim: 32 } ' + relu)
    )
    assert net.inputs == {"data": (10, 3, 32, 32)}
    net = build_net(
        parse_prototxt_text(
            'input: "data" input: "im_info" input_dim: 1 input_dim: 3'
            " input_dim: 8 input_dim: 8 input_dim: 1 input_dim: 3"
            " input_dim: 1 input_dim: 1 " + relu
        )
    )
    assert net.inputs == {"data": (1, 3, 8, 8), "im_info": (1, 3, 1, 1)}
    with pytest.raises(NetDefinitionError, match="need 8 input_dim"):
        build_net(
            parse_prototxt_text(
                'input: "a" input: "b" input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 4 ' + relu
            )
        )
    with pytest.raises(NetDefinitionError, match="without a shape"):
        build_net(parse_prototxt_text('input: "data" ' + relu))


def test_input_shape_override() -> None:
    net = build_net(
        parse_prototxt_text(
            'input: "data" input_dim: 1 input_dim: 3 input_dim: 224 input_dim: 224 '
            'layer { name: "p" type: "Pooling" bottom: "data" top: "p"'
            " pooling_param { pool: AVE global_pooling: true } }"
        ),
        input_shape={"data": (4, 3, 32, 32)},
    )
    assert net.blob_shapes["p"] == (4, 3, 1, 1)


def test_no_input_is_an_error() -> None:
    with pytest.raises(NetDefinitionError, match="no input"):
        build_net(parse_prototxt_text('layer { name: "r" type: "ReLU" bottom: "x" top: "x" }'))


def test_test_phase_filtering() -> None:
    layers = """
        layer { name: "train_only" type: "ReLU" bottom: "x0" top: "t" include { phase: TRAIN } }
        layer { name: "test_only" type: "ReLU" bottom: "x0" top: "t" include { phase: TEST } }
        layer { name: "not_in_test" type: "Sigmoid" bottom: "t" top: "t" exclude { phase: TEST } }
        layer { name: "not_in_train" type: "TanH" bottom: "t" top: "t" exclude { phase: TRAIN } }
        layer { name: "either" type: "Dropout" bottom: "t" top: "t"
                include { phase: TRAIN } include { phase: TEST } }
        layer { name: "staged" type: "ReLU" bottom: "t" top: "t" include { stage: "deploy" } }
        layer { name: "unstaged" type: "ReLU" bottom: "t" top: "t" exclude { stage: "deploy" } }
        layer { name: "leveled" type: "ReLU" bottom: "t" top: "t" include { min_level: 1 } }
        layer { name: "not_stage" type: "ReLU" bottom: "t" top: "t"
                include { not_stage: "deploy" } }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "t" top: "loss" }
    """
    test = _net(layers, (1, 4))
    assert [layer.name for layer in test.layers] == [
        "test_only",
        "not_in_train",
        "either",
        "unstaged",
        "not_stage",
    ]
    assert test.notes == ["dropped training layer 'loss' (SoftmaxWithLoss)"]
    train = _net(layers, (1, 4), phase=caffe_pb2.TRAIN)
    assert [layer.name for layer in train.layers] == [
        "train_only",
        "not_in_test",
        "either",
        "unstaged",
        "not_stage",
    ]


def test_data_layer_becomes_the_input() -> None:
    net = build_net(
        parse_prototxt_text("""
        layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
                transform_param { crop_size: 227 } }
        layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
                transform_param { crop_size: 224 } }
        layer { name: "relu" type: "ReLU" bottom: "data" top: "data" }
        layer { name: "acc" type: "Accuracy" bottom: "data" bottom: "label" top: "acc"
                include { phase: TEST } }
    """)
    )
    assert net.inputs == {"data": (1, 3, 224, 224)}
    assert [layer.name for layer in net.layers] == ["relu"]
    assert net.notes == [
        "dropped data layer 'data' (Data)",
        "dropped data layer 'data' (Data)",
        "dropped training layer 'acc' (Accuracy)",
    ]


# --- invalid nets ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layer, shape, message",
    [
        (
            'type: "Convolution" bottom: "x0" top: "y" convolution_param { num_output: 4 kernel_size: 1'
            " group: 0 }",
            (1, 4, 2, 2),
            "group must be positive",
        ),
        (
            'type: "Convolution" bottom: "x0" top: "y" convolution_param { num_output: 4 kernel_size: 1'
            " group: 3 }",
            (1, 4, 2, 2),
            "must both divide by group 3",
        ),
        (
            'type: "Convolution" bottom: "x0" top: "y" convolution_param { kernel_size: 1 }',
            (1, 4, 2, 2),
            "num_output must be given",
        ),
        (
            'type: "Convolution" convolution_param { num_output: 1 kernel_size: 1 }',
            (1, 4, 2, 2),
            "needs at least one bottom",
        ),
        (
            'type: "Convolution" bottom: "x0" top: "y" convolution_param { num_output: 1 kernel_size: 5 }',
            (1, 4, 2, 2),
            "too small for the kernel",
        ),
        ('type: "Slice" bottom: "x0"', (1, 4), "at least one top"),
        (
            'type: "Slice" bottom: "x0" top: "a" top: "b" top: "c" slice_param { slice_point: 2'
            " slice_point: 2 }",
            (1, 4),
            "do not cut axis",
        ),
        (
            'type: "Flatten" bottom: "x0" top: "y" flatten_param { axis: 2 end_axis: 1 }',
            (1, 4, 2),
            "end_axis 1 comes before axis 2",
        ),
        ('type: "PReLU" bottom: "x0" top: "y"', (4,), "needs a channel axis"),
        (
            'type: "InnerProduct" bottom: "x0" top: "y" inner_product_param { num_output: 2 axis: 3 }',
            (1, 4),
            "axis 3 out of range",
        ),
        ('type: "ReLU" bottom: "x0" top: "y"', (1, -4), "dimension of 0 or below"),
        ('type: "ReLU" bottom: "x0" top: "y"', (0, 4), "dimension of 0 or below"),
        ('type: "ReLU" bottom: "nope" top: "y"', (1, 4), "unknown bottom blob"),
        ('type: "HardSwish" bottom: "x0" top: "y"', (1, 4), "no shape rule for layer type(s) HardSwish"),
        ('type: "Split" bottom: "x0" bottom: "x0" top: "y"', (1, 4), "takes 1 bottom(s), got 2"),
    ],
)
def test_invalid_layers(layer: str, shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(NetDefinitionError) as caught:
        _net(f'layer {{ name: "bad" {layer} }}', shape)
    assert message in str(caught.value)
    assert caught.value.layer in ("bad", None)


# --- weights ---------------------------------------------------------------------------------


def test_nsfw_blobs_match_the_prototxt(nsfw_model: CaffePair) -> None:
    net = load_net(nsfw_model.prototxt, nsfw_model.caffemodel)
    assert net.outputs == ["prob"] and net.blob_shapes["prob"] == (1, 2)
    with_blobs = [layer for layer in net.layers if layer.blob_shapes]
    assert len(with_blobs) == len(net.weights()) > 100
    for layer in with_blobs:
        assert [tuple(blob.shape) for blob in layer.blobs] == layer.blob_shapes, layer.name
        assert all(blob.dtype == np.float32 for blob in layer.blobs)
    assert net.learnable_parameters == sum(
        blob.size for layer in with_blobs for blob in layer.blobs if layer.type != "BatchNorm"
    )
    assert not net.notes


def test_nsfw_caffemodel_alone(nsfw_model: CaffePair) -> None:
    deploy = load_net(nsfw_model.prototxt, nsfw_model.caffemodel)
    alone = load_net(caffemodel=nsfw_model.caffemodel)
    assert alone.inputs == {"data": (1, 3, 224, 224)}
    assert {
        "dropped data layer 'data' (MemoryData)",
        "dropped training layer 'loss' (SoftmaxWithLoss)",
    } <= set(alone.notes)
    assert {layer.type for layer in alone.layers}.isdisjoint({"MemoryData", "SoftmaxWithLoss"})
    assert alone.outputs == ["fc_nsfw"] and alone.blob_shapes["fc_nsfw"] == (1, 2)
    assert alone.learnable_parameters == deploy.learnable_parameters
    assert list(alone.weights()) == list(deploy.weights())
    for name, blobs in deploy.weights().items():
        assert all(np.array_equal(a, b) for a, b in zip(blobs, alone.weights()[name], strict=True))


def test_nets_of_different_models_do_not_merge(tiny_model: CaffePair, nsfw_model: CaffePair) -> None:
    with pytest.raises(WeightsMismatchError, match=r"no weights for 4 layer\(s\).*conv1"):
        load_net(tiny_model.prototxt, nsfw_model.caffemodel)
    with pytest.raises(WeightsMismatchError, match="no weights for"):
        load_net(nsfw_model.prototxt, tiny_model.caffemodel)


def _write_with(tiny_model: CaffePair, path: Path, change: dict[str, list[np.ndarray]]) -> Path:
    model = read_caffemodel(tiny_model.caffemodel)
    write_caffemodel(path, model.net, {**model.blobs, **change})
    return path


def test_blob_shape_mismatch_names_layer_and_shapes(tiny_model: CaffePair, tmp_path: Path) -> None:
    bad = _write_with(
        tiny_model,
        tmp_path / "bad.caffemodel",
        {"conv1": [np.zeros((4, 3, 5, 5), np.float32), np.zeros(4, np.float32)]},
    )
    with pytest.raises(WeightsMismatchError) as caught:
        load_net(tiny_model.prototxt, bad)
    assert str(caught.value) == (
        "layer 'conv1': blob 0 has shape (4, 3, 5, 5), the prototxt implies (4, 3, 3, 3)"
    )


def test_blob_count_mismatch(tiny_model: CaffePair, tmp_path: Path) -> None:
    bad = _write_with(tiny_model, tmp_path / "bad.caffemodel", {"fc": [np.zeros((5, 4), np.float32)]})
    with pytest.raises(WeightsMismatchError, match=r"layer 'fc': bad.caffemodel has 1 blob\(s\)"):
        load_net(tiny_model.prototxt, bad)


def test_extra_layers_in_the_caffemodel_are_noted(tiny_model: CaffePair, tmp_path: Path) -> None:
    model = read_caffemodel(tiny_model.caffemodel)
    model.net.layer.add(name="fc_train_head", type="InnerProduct", bottom=["pool1"], top=["aux"])
    path = tmp_path / "extra.caffemodel"
    write_caffemodel(path, model.net, {**model.blobs, "fc_train_head": [np.ones((2, 4))]})
    net = load_net(tiny_model.prototxt, path)
    assert net.notes == ["ignored blobs of 1 layer(s) not in the net: fc_train_head"]
