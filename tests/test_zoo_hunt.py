"""Regressions found by running public model-zoo prototxts (docs/model-zoo.md) through the tools.

Each test writes the smallest net that shows the problem; the third-party files stay out of the repo.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from converter import convert
from converter.calibrate import image_like
from converter.selfcheck import check_graph
from prototxt import attach_weights, build_net, parse_prototxt_text, write_caffemodel
from prototxt.random_weights import random_blobs
from senet_repro.cli.convert import main
from tests.caffe_reference import single_input_net
from tests.cli_assertions import assert_one_line_error

cv2 = pytest.importorskip("cv2")

# DenseNet-Caffe's pool1: BVLC's round_mode FLOOR, which OpenCV's caffe.proto calls `ceil_mode: false`.
FLOOR_POOLING = single_input_net(
    (1, 2, 8, 8),
    'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
    "convolution_param { num_output: 3 kernel_size: 1 } }\n"
    'layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" '
    "pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 round_mode: FLOOR } }",
)
# A BVLC layer OpenCV cannot create ("Can't create layer ... of type Threshold").
THRESHOLD = single_input_net(
    (1, 2, 5, 5),
    'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
    "convolution_param { num_output: 3 kernel_size: 1 } }\n"
    'layer { name: "thr" type: "Threshold" bottom: "conv" top: "thr" threshold_param { threshold: 0.1 } }',
)


def _files(tmp_path: Path, text: str) -> tuple[Path, Path]:
    prototxt, caffemodel = tmp_path / "net.prototxt", tmp_path / "net.caffemodel"
    prototxt.write_text(text)
    proto = parse_prototxt_text(text)
    write_caffemodel(caffemodel, proto, random_blobs(build_net(proto), seed=0))
    return prototxt, caffemodel


def _caffe2torch(prototxt: Path, caffemodel: Path, out: Path) -> Result:
    args = ["caffe2torch", "--prototxt", prototxt, "--caffemodel", caffemodel, "-o", out]
    return CliRunner().invoke(main, [str(a) for a in args])


def test_floor_pooling_is_handed_to_opencv_in_its_own_terms(tmp_path: Path) -> None:
    """OpenCV fails on `round_mode: FLOOR` (kernel 0); as `ceil_mode: false` it computes Caffe's floor."""
    prototxt, caffemodel = _files(tmp_path, FLOOR_POOLING)
    net = build_net(parse_prototxt_text(FLOOR_POOLING))
    assert net.layer("pool").top_shapes == [(1, 3, 4, 4)]  # floor((8 + 2 - 3) / 2) + 1; ceil would give 5
    attach_weights(net, random_blobs(net, seed=0))
    check = check_graph(convert(net, net.outputs), net, caffemodel)
    assert check.opencv_failure is None and check.opencv_vs_ours is not None
    # Max pooling of the same float32 1x1 convolution (2 products): at most a few float32 ulps apart.
    assert check.opencv_vs_ours < 1e-6, check.summary()
    result = _caffe2torch(prototxt, caffemodel, tmp_path / "out.safetensors")
    assert result.exit_code == 0 and "OpenCV (portable prototxt) vs ours" in result.stdout, result.output


def test_a_net_opencv_cannot_run_is_converted_and_says_so(tmp_path: Path) -> None:
    """caffe2torch used to crash with cv2.error when its OpenCV self-check met a layer OpenCV lacks."""
    prototxt, caffemodel = _files(tmp_path, THRESHOLD)
    result = _caffe2torch(prototxt, caffemodel, tmp_path / "out.safetensors")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert "OpenCV could not run the net (" in result.stdout and "Threshold" in result.stdout
    assert (tmp_path / "out.safetensors").is_file()


def _inspect(tmp_path: Path, text: str) -> Result:
    prototxt = tmp_path / "net.prototxt"
    prototxt.write_text(text)
    return CliRunner().invoke(main, ["inspect", str(prototxt)])


@pytest.mark.parametrize(
    "layers, fragments",
    [
        # py-faster-rcnn's test.prototxt: at TEST that fork scales by 1 - ratio when scale_train is false.
        (
            'layer { name: "drop" type: "Dropout" bottom: "data" top: "data" '
            "dropout_param { dropout_ratio: 0.5 scale_train: false } }",
            ("net.prototxt:2:", "'scale_train' in DropoutParameter", "rbgirshick/caffe-fast-rcnn", "'drop'"),
        ),
        # SegNet's inference prototxt reads its images with the fork's DenseImageData layer.
        (
            'layer { name: "img" type: "DenseImageData" top: "img" '
            "dense_image_data_param { batch_size: 1 } }",
            ("net.prototxt:2:", "'dense_image_data_param'", "SegNet (alexgkendall/caffe-segnet)"),
        ),
        # SegNet's decoder: the layer's line, its name and its fork.
        (
            'layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "mask" '
            "pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n"
            'layer {\n  name: "up"\n  type: "Upsample" bottom: "pool" bottom: "mask" top: "up" }',
            (
                "net.prototxt:4: layer 'up'",
                "Upsample (a layer of the fork SegNet (alexgkendall/caffe-segnet))",
            ),
        ),
        # farmingyard's depthwise convolution has one filter per input channel; other counts are refused.
        (
            'layer { name: "dw" type: "ConvolutionDepthwise" bottom: "data" top: "dw" '
            "convolution_param { num_output: 4 kernel_size: 3 } }",
            ("net.prototxt:2: layer 'dw'", "ConvolutionDepthwise with num_output 4 on 2 input channels"),
        ),
    ],
)
def test_fork_layers_and_fields_are_refused_naming_the_fork(
    tmp_path: Path, layers: str, fragments: tuple[str, ...]
) -> None:
    assert_one_line_error(_inspect(tmp_path, single_input_net((1, 2, 4, 4), layers)), *fragments)


def test_opencv_is_asked_for_a_blob_by_the_layer_that_writes_it(tmp_path: Path) -> None:
    """OpenPose's last layer `concat_stage7` writes `net_output`: OpenCV knows it by the layer's name
    (asked for `net_output` it failed with "Layer with requested id=-1 not found")."""
    text = single_input_net(
        (1, 2, 6, 6),
        'layer { name: "a" type: "Convolution" bottom: "data" top: "a" '
        "convolution_param { num_output: 3 kernel_size: 3 pad: 1 } }\n"
        'layer { name: "relu_a" type: "ReLU" bottom: "a" top: "a" }\n'
        'layer { name: "concat_stage7" type: "Concat" bottom: "a" bottom: "data" top: "net_output" }',
    )
    prototxt, caffemodel = _files(tmp_path, text)
    net = build_net(parse_prototxt_text(text))
    attach_weights(net, random_blobs(net, seed=0))
    check = check_graph(convert(net, net.outputs), net, caffemodel)
    assert check.opencv_failure is None and check.opencv_vs_ours is not None
    # A 3x3 convolution (18 products) then a copy: a few float32 ulps apart at most.
    assert check.opencv_vs_ours < 1e-6, check.summary()


def test_convolution_depthwise_is_what_opencv_computes_from_the_original(tmp_path: Path) -> None:
    """ShuffleNet's ConvolutionDepthwise (no `group` given, as in its first unit) with ShuffleChannel:
    ours equals OpenCV running the fork's own prototxt (not our rewritten one)."""
    text = single_input_net(
        (1, 6, 7, 7),
        'layer { name: "shuffle" type: "ShuffleChannel" bottom: "data" top: "s" '
        "shuffle_channel_param { group: 3 } }\n"
        'layer { name: "dw" type: "ConvolutionDepthwise" bottom: "s" top: "dw" '
        "convolution_param { num_output: 6 kernel_size: 3 stride: 2 pad: 1 } }",
    )
    prototxt, caffemodel = _files(tmp_path, text)
    net = build_net(parse_prototxt_text(text))
    assert net.layer("dw").blob_shapes == [(6, 1, 3, 3), (6,)]
    attach_weights(net, random_blobs(net, seed=0))
    x = image_like((1, 6, 7, 7), seed=1)
    ours = convert(net, ["dw"])(x).numpy()
    reader = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    reader.setInput(x.numpy())
    theirs = reader.forward("dw")
    # Nine products per output in float32 on both sides, summed in different orders.
    assert theirs.shape == ours.shape and np.abs(theirs - ours).max() <= 1e-6 * np.abs(ours).max()
