"""Our converted graph against BVLC Caffe itself, layer output by layer output, float64 and float32.

The bounds and their reasons are in `tests/caffe_reference.py`. Without the built reference
these tests skip (`make caffe-reference` builds it); under CI=true they fail instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from torch import nn

from converter.registry import CONVERTERS, check_supported
from prototxt import CaffeError, parse_prototxt
from senet_repro.assets import CaffePair
from tests import caffe_reference
from tests.caffe_factory import make_random_caffemodel
from tests.caffe_reference import (
    Agreement,
    CaffeLacksLayerError,
    assert_matches_caffe,
    pair_agreement,
    random_weights_agreement,
    require_reference,
    senet_agreement,
    single_input_net,
    small_deploy_net,
)
from tests.conftest import CAFFE_ZOO_DIR, SENET_CAFFE_DIR, require_shared


def _conv(name: str, bottom: str, params: str, top: str | None = None) -> str:
    return (
        f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{top or name}" '
        f"convolution_param {{ {params} }} }}\n"
    )


def _pool(params: str, bottom: str = "data") -> str:
    return f'layer {{ name: "p" type: "Pooling" bottom: "{bottom}" top: "p" pooling_param {{ {params} }} }}\n'


# The two-bottom layers need a second operand of the right shape: a per-channel gate.
GATE = (
    _pool("pool: AVE global_pooling: true").replace('"p"', '"gate"')
    + 'layer { name: "gate_flat" type: "Reshape" bottom: "gate" top: "gate_flat" '
    "reshape_param { shape { dim: 0 dim: 0 } } }\n"
)
BRANCHES = _conv("a", "data", "num_output: 4 kernel_size: 3 pad: 1") + _conv(
    "b", "data", "num_output: 4 kernel_size: 3 pad: 1"
)

# (id, input shape, layers after the Input): one small net per layer type and parameter combination.
LAYER_CASES = [
    (
        "conv-odd-stride-pad",
        (2, 3, 11, 9),
        _conv("c", "data", "num_output: 5 kernel_size: 3 stride: 2 pad: 1"),
    ),
    ("conv-groups", (1, 6, 7, 8), _conv("c", "data", "num_output: 9 kernel_size: 3 group: 3")),
    ("conv-depthwise", (1, 6, 7, 7), _conv("c", "data", "num_output: 6 kernel_size: 3 pad: 1 group: 6")),
    ("conv-dilation", (1, 3, 13, 12), _conv("c", "data", "num_output: 4 kernel_size: 3 dilation: 2 pad: 1")),
    ("conv-no-bias", (1, 3, 6, 6), _conv("c", "data", "num_output: 4 kernel_size: 1 bias_term: false")),
    (
        "conv-hw",
        (1, 3, 9, 10),
        _conv("c", "data", "num_output: 4 kernel_h: 3 kernel_w: 1 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0"),
    ),
    (
        "deconv-groups-no-bias",
        (1, 4, 5, 6),
        'layer { name: "d" type: "Deconvolution" bottom: "data" top: "d" convolution_param { '
        "num_output: 6 kernel_size: 4 stride: 2 pad: 1 group: 2 bias_term: false } }",
    ),
    (
        "deconv-bias",
        (1, 3, 5, 5),
        'layer { name: "d" type: "Deconvolution" bottom: "data" top: "d" convolution_param { '
        "num_output: 2 kernel_size: 3 stride: 3 } }",
    ),
    (
        "innerproduct-axis1",
        (2, 3, 4, 5),
        'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
        "inner_product_param { num_output: 7 } }",
    ),
    (
        "innerproduct-axis2",
        (2, 3, 4, 5),
        'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
        "inner_product_param { num_output: 6 axis: 2 } }",
    ),
    (
        "innerproduct-transpose",
        (2, 3, 2, 2),
        'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
        "inner_product_param { num_output: 5 transpose: true } }",
    ),
    (
        "batchnorm-scale-relu-in-place",
        (2, 4, 5, 7),
        _conv("c", "data", "num_output: 4 kernel_size: 3 pad: 1")
        + 'layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" batch_norm_param { eps: 1e-3 } }\n'
        + 'layer { name: "sc" type: "Scale" bottom: "c" top: "c" scale_param { bias_term: true } }\n'
        + 'layer { name: "r" type: "ReLU" bottom: "c" top: "c" }\n'
        + 'layer { name: "drop" type: "Dropout" bottom: "c" top: "c" '
        + "dropout_param { dropout_ratio: 0.3 } }\n",
    ),
    (
        "batchnorm-2d",
        (3, 5),
        'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" }',
    ),
    (
        "scale-axis2-numaxes2",
        (2, 3, 4, 5),
        'layer { name: "s" type: "Scale" bottom: "data" top: "s" '
        "scale_param { axis: 2 num_axes: 2 bias_term: true } }",
    ),
    (
        "scale-axis0-all",
        (4, 3, 4, 5),  # the batch axis is learned: the calibration batch (4) must fit
        'layer { name: "s" type: "Scale" bottom: "data" top: "s" scale_param { axis: 0 num_axes: -1 } }',
    ),
    (
        "scale-scalar",
        (2, 3, 4, 5),
        'layer { name: "s" type: "Scale" bottom: "data" top: "s" '
        "scale_param { num_axes: 0 bias_term: true } }",
    ),
    (
        "scale-negative-axis",
        (2, 3, 4, 5),
        'layer { name: "s" type: "Scale" bottom: "data" top: "s" scale_param { axis: -1 num_axes: 1 } }',
    ),
    (
        "bias-learned",
        (2, 3, 4, 5),
        'layer { name: "b" type: "Bias" bottom: "data" top: "b" bias_param { axis: 1 } }',
    ),
    (
        "scale-two-bottoms-axis0",
        (2, 3, 4, 5),
        GATE + 'layer { name: "s" type: "Scale" bottom: "data" bottom: "gate_flat" top: "s" '
        "scale_param { axis: 0 } }",
    ),
    (
        "bias-two-bottoms",
        (2, 3, 4, 5),
        GATE
        + 'layer { name: "b" type: "Bias" bottom: "data" bottom: "gate_flat" top: "b" '
        + "bias_param { axis: 0 } }",
    ),
    (
        "axpy",
        (2, 3, 4, 5),
        _pool("pool: AVE global_pooling: true").replace('"p"', '"gate"')
        + 'layer { name: "sig" type: "Sigmoid" bottom: "gate" top: "gate" }\n'
        + _conv("res", "data", "num_output: 3 kernel_size: 3 pad: 1")
        + 'layer { name: "ax" type: "Axpy" bottom: "gate" bottom: "res" bottom: "data" top: "ax" }',
    ),
    *[
        (f"pool-{mode.lower()}-{label}", (1, 2, *size), _pool(f"pool: {mode} {params}"))
        for mode in ("MAX", "AVE")
        for label, size, params in [
            ("ceil-partial", (10, 9), "kernel_size: 3 stride: 2"),
            ("ceil-clipped-padded", (5, 5), "kernel_size: 2 stride: 2 pad: 1"),
            ("border", (6, 7), "kernel_size: 3 stride: 2 pad: 1"),
            ("hw", (7, 6), "kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0"),
            ("pad-beyond-half", (7, 7), "kernel_size: 3 stride: 2 pad: 2"),
            ("pad-beyond-half-clipped", (6, 8), "kernel_size: 3 stride: 2 pad: 2"),
            ("stride-over-kernel", (8, 8), "kernel_size: 2 stride: 3 pad: 1"),
            ("window-past-unpadded-input", (6, 6), "kernel_size: 2 stride: 3"),
            ("floor", (10, 9), "kernel_size: 3 stride: 2 round_mode: FLOOR"),
            ("global", (5, 6), "global_pooling: true"),
        ]
    ],
    (
        "lrn-across",
        (1, 7, 5, 6),
        'layer { name: "n" type: "LRN" bottom: "data" top: "n" '
        "lrn_param { local_size: 5 alpha: 0.01 beta: 0.75 } }",
    ),
    (
        "lrn-across-k2",
        (1, 4, 3, 3),
        'layer { name: "n" type: "LRN" bottom: "data" top: "n" '
        "lrn_param { local_size: 3 alpha: 0.002 beta: 0.5 k: 2 } }",
    ),
    (
        "lrn-within",
        (1, 2, 6, 5),
        'layer { name: "n" type: "LRN" bottom: "data" top: "n" '
        "lrn_param { local_size: 3 alpha: 0.001 beta: 0.75 norm_region: WITHIN_CHANNEL } }",
    ),
    *[
        (
            f"eltwise-{label}",
            (1, 3, 5, 4),
            BRANCHES
            + 'layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "e" '
            + f"eltwise_param {{ {params} }} }}",
        )
        for label, params in [
            ("sum", "operation: SUM"),
            ("sum-coeff", "operation: SUM coeff: 0.5 coeff: -1.5"),
            ("prod", "operation: PROD"),
            ("max", "operation: MAX"),
        ]
    ],
    *[
        (
            f"activation-{label}",
            (1, 3, 4, 5),
            f'layer {{ name: "f" type: "{kind}" bottom: "data" top: "f" {params} }}',
        )
        for label, kind, params in [
            ("relu", "ReLU", ""),
            ("leaky-relu", "ReLU", "relu_param { negative_slope: 0.1 }"),
            ("prelu", "PReLU", ""),
            ("prelu-shared", "PReLU", "prelu_param { channel_shared: true }"),
            ("sigmoid", "Sigmoid", ""),
            ("tanh", "TanH", ""),
        ]
    ],
    *[
        (
            f"softmax-axis{axis}",
            shape,
            f'layer {{ name: "s" type: "Softmax" bottom: "data" top: "s" softmax_param {{ axis: {axis} }} }}',
        )
        for axis, shape in [(1, (2, 5, 3, 4)), (-1, (2, 5, 3, 4)), (0, (3, 4)), (2, (2, 3, 4, 5))]
    ],
    *[
        (
            f"concat-axis{axis}",
            (1, 3, 5, 4),
            BRANCHES
            + 'layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "cat" '
            + f"concat_param {{ axis: {axis} }} }}",
        )
        for axis in (1, 2, -1)
    ],
    *[
        (
            f"reshape-{label}",
            (2, 3, 4, 6),
            f'layer {{ name: "r" type: "Reshape" bottom: "data" top: "r" '
            f"reshape_param {{ {params} }} }}\n" + 'layer { name: "t" type: "TanH" bottom: "r" top: "t" }',
        )
        for label, params in [
            ("copy-infer", "shape { dim: 0 dim: -1 dim: 8 }"),
            ("axis1-numaxes1", "shape { dim: 3 dim: 1 } axis: 1 num_axes: 1"),
            ("negative-axis", "shape { dim: 2 dim: 3 } axis: -2 num_axes: 1"),
            ("flatten-tail", "shape { dim: -1 } axis: 1"),
            ("insert-axis", "shape { dim: 1 } axis: 1 num_axes: 0"),
        ]
    ],
    *[
        (
            f"flatten-{label}",
            (2, 3, 4, 5),
            f'layer {{ name: "f" type: "Flatten" bottom: "data" top: "f" {params} }}\n'
            + 'layer { name: "t" type: "TanH" bottom: "f" top: "t" }',
        )
        for label, params in [
            ("default", ""),
            ("axis2", "flatten_param { axis: 2 }"),
            ("end-axis2", "flatten_param { axis: 1 end_axis: 2 }"),
        ]
    ],
    *[
        (
            f"slice-{label}",
            (2, 6, 4, 5),
            f'layer {{ name: "s" type: "Slice" bottom: "data" top: "s1" top: "s2" '
            f'top: "s3" slice_param {{ {params} }} }}\n'
            + 'layer { name: "e" type: "Eltwise" bottom: "s1" bottom: "s3" top: "e" '
            "eltwise_param { operation: PROD } }",
        )
        for label, params in [
            ("even-channels", "axis: 1"),
            ("points", "axis: 1 slice_point: 2 slice_point: 4"),
        ]
    ],
    (
        "split-in-place-chain",
        (1, 3, 6, 6),
        'layer { name: "sp" type: "Split" bottom: "data" top: "x1" top: "x2" }\n'
        + _conv("c", "x1", "num_output: 3 kernel_size: 3 pad: 1")
        + 'layer { name: "r" type: "ReLU" bottom: "c" top: "c" }\n'
        + 'layer { name: "s" type: "Sigmoid" bottom: "c" top: "c" }\n'
        + 'layer { name: "e" type: "Eltwise" bottom: "c" bottom: "x2" top: "e" }',
    ),
]


@pytest.mark.parametrize("case, input_shape, layers", LAYER_CASES, ids=[case[0] for case in LAYER_CASES])
def test_layer_matches_caffe(case: str, input_shape: tuple[int, ...], layers: str) -> None:
    assert_matches_caffe(single_input_net(input_shape, layers))


def test_batchnorm_zero_scale_factor_matches_caffe() -> None:
    """batch_norm_layer.cpp: a zero moving-average factor makes mean and variance 0."""
    text = single_input_net((1, 3, 4, 4), 'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" }')
    rng = np.random.default_rng(0)
    blobs = {"bn": [rng.normal(size=3), rng.uniform(1, 2, 3), np.zeros(1)]}
    assert_matches_caffe(
        text, {name: [a.astype(np.float32) for a in arrays] for name, arrays in blobs.items()}
    )


def _assert_agrees(agreement: Agreement) -> None:
    failure = agreement.first_failure()
    assert failure is None, failure


@pytest.mark.slow
def test_real_nsfw_model_matches_caffe(nsfw_model: CaffePair) -> None:
    """The real trained ResNet-50-1by2, every layer output, float64 and float32."""
    require_reference()
    _assert_agrees(pair_agreement(nsfw_model.prototxt, nsfw_model.caffemodel))


SENETS = sorted(path.stem for path in SENET_CAFFE_DIR.glob("*.prototxt")) if SENET_CAFFE_DIR.is_dir() else []


@pytest.mark.slow
@pytest.mark.parametrize("name", SENETS)
def test_senet_release_matches_caffe(name: str, tmp_path: Path) -> None:
    """The seven released prototxts with seeded random, calibrated weights, at their 224 input
    (the last pooling is a fixed 7 x 7 window: no smaller input is legal): every layer output of
    the generic graph, then the logits of the clean SE model (converted checkpoint, `get_model`)
    in float64 and float32 and of both ONNX exports (generic graph, clean model) in ONNX Runtime."""
    require_reference()
    layers, logits = senet_agreement(*make_random_caffemodel(SENET_CAFFE_DIR / f"{name}.prototxt"), tmp_path)
    _assert_agrees(layers)
    assert not logits.failures(), logits.failures()


def test_the_seven_senets_are_found() -> None:
    require_shared(SENET_CAFFE_DIR, "the SENet deploy prototxts (../shared/senet-caffe)")
    assert len(SENETS) == 7, SENETS


ZOO_NETS = sorted(CAFFE_ZOO_DIR.rglob("*.prototxt")) if CAFFE_ZOO_DIR.is_dir() else []


@pytest.mark.slow
@pytest.mark.parametrize("path", ZOO_NETS, ids=[str(p.relative_to(CAFFE_ZOO_DIR)) for p in ZOO_NETS])
def test_zoo_net_matches_caffe(path: Path, tmp_path: Path) -> None:
    """Every net in ../shared/caffe-zoo that our reader and BVLC Caffe both run, with seeded random
    calibrated weights at a reduced input size. Nets join as the schema grows; a net that uses a
    layer type Caffe or our converter lacks is skipped, naming the type."""
    require_reference()
    try:
        net = small_deploy_net(parse_prototxt(path))
        check_supported([layer for layer in net.layers if layer.type != "Input"])
    except CaffeError as exc:
        pytest.skip(f"{path.name}: not read or converted yet: {exc}")
    try:
        agreement = random_weights_agreement(net)
    except CaffeLacksLayerError as exc:
        pytest.skip(f"{path.name}: {exc}")
    _assert_agrees(agreement)


def test_zoo_is_found() -> None:
    require_shared(CAFFE_ZOO_DIR, "the Caffe model zoo prototxts (../shared/caffe-zoo)")
    assert ZOO_NETS


def test_a_wrong_layer_is_named_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness can fail, and names the first diverging layer output, not a later one."""
    require_reference()
    monkeypatch.setitem(CONVERTERS, "TanH", lambda layer: nn.Sigmoid())
    text = single_input_net(
        (1, 3, 5, 5),
        _conv("c1", "data", "num_output: 4 kernel_size: 3 pad: 1")
        + 'layer { name: "t" type: "TanH" bottom: "c1" top: "c1" }\n'
        + _conv("c2", "c1", "num_output: 2 kernel_size: 1"),
    )
    with pytest.raises(pytest.fail.Exception, match="first diverging layer output L:t:0: float64"):
        assert_matches_caffe(text)


def test_missing_reference_skips_but_fails_under_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(caffe_reference, "REFERENCE_BINARY", tmp_path / "absent")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="make caffe-reference"):
        require_reference()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_reference()
