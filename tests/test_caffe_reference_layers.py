"""The rest of BVLC's layer list against BVLC Caffe itself, float64 and float32.

One small net per layer type and parameter combination, run by `assert_matches_caffe`
(bounds and their reasons in `tests/caffe_reference.py`). The inputs are image-like
(-117..138), so layers with a limited domain get theirs from a layer before them:
Exp a scaled input, Log and fractional powers an absolute value, Embed and
BatchReindex integer indices from a Threshold.
"""

from __future__ import annotations

import pytest

from tests.caffe_reference import assert_matches_caffe, single_input_net


def _layer(name: str, layer_type: str, params: str = "", bottoms: tuple[str, ...] = ("data",)) -> str:
    inputs = " ".join(f'bottom: "{b}"' for b in bottoms)
    return f'layer {{ name: "{name}" type: "{layer_type}" {inputs} top: "{name}" {params} }}\n'


SMALL = _layer("small", "Power", "power_param { scale: 0.02 }")  # inputs within about +-3
POSITIVE = _layer("abs", "AbsVal", bottoms=("small",))
BITS = _layer("bits", "Threshold", "threshold_param { threshold: 0.5 }", ("small",))  # 0/1, many ties

LAYER_CASES = [
    ("absval", (2, 3, 4, 5), _layer("a", "AbsVal")),
    ("bnll", (2, 3, 4, 5), SMALL + _layer("b", "BNLL", bottoms=("small",)) + _layer("b2", "BNLL")),
    ("clip", (2, 3, 4, 5), _layer("c", "Clip", "clip_param { min: -20.5 max: 40.25 }")),
    ("elu", (2, 3, 4, 5), SMALL + _layer("e", "ELU", "elu_param { alpha: 0.7 }", ("small",))),
    ("exp-natural", (2, 3, 4, 5), SMALL + _layer("e", "Exp", bottoms=("small",))),
    (
        "exp-base-shift",
        (2, 3, 4, 5),
        SMALL + _layer("e", "Exp", "exp_param { base: 3 scale: 0.7 shift: 0.3 }", ("small",)),
    ),
    ("log-natural", (2, 3, 4, 5), SMALL + POSITIVE + _layer("l", "Log", bottoms=("abs",))),
    (
        "log-base-shift",
        (2, 3, 4, 5),
        SMALL + POSITIVE + _layer("l", "Log", "log_param { base: 10 scale: 3 shift: 0.5 }", ("abs",)),
    ),
    (
        "power-fractional",
        (2, 3, 4, 5),
        SMALL + POSITIVE + _layer("p", "Power", "power_param { power: 1.7 scale: 2 shift: 0.1 }", ("abs",)),
    ),
    ("power-square", (2, 3, 4, 5), _layer("p", "Power", "power_param { power: 2 scale: -0.5 shift: 3 }")),
    ("power-constant", (2, 3, 4, 5), _layer("p", "Power", "power_param { power: 3 scale: 0 shift: 1.5 }")),
    ("threshold", (2, 3, 4, 5), _layer("t", "Threshold", "threshold_param { threshold: 10 }")),
    ("swish", (2, 3, 4, 5), SMALL + _layer("s", "Swish", "swish_param { beta: 1.3 }", ("small",))),
    (
        "crop-offsets",
        (2, 3, 9, 8),
        _layer("ref", "Pooling", "pooling_param { kernel_size: 3 stride: 2 }")
        + _layer("c", "Crop", "crop_param { axis: 2 offset: 3 offset: 1 }", ("data", "ref")),
    ),
    (
        "crop-axis1",
        (2, 4, 6, 6),
        _layer("ref", "Convolution", "convolution_param { num_output: 2 kernel_size: 3 }")
        + _layer("c", "Crop", "crop_param { axis: 1 offset: 1 }", ("data", "ref")),
    ),
    ("tile", (2, 3, 4, 5), _layer("t", "Tile", "tile_param { axis: 2 tiles: 3 }")),
    ("argmax-flat", (2, 3, 4, 5), _layer("a", "ArgMax", "argmax_param { top_k: 4 out_max_val: true }")),
    (
        "argmax-ties",
        (2, 3, 4, 5),
        SMALL + BITS + _layer("a", "ArgMax", "argmax_param { top_k: 5 }", ("bits",)),
    ),
    (
        "argmax-axis-ties",
        (2, 3, 4, 5),
        SMALL + BITS + _layer("a", "ArgMax", "argmax_param { axis: 1 top_k: 2 }", ("bits",)),
    ),
    (
        "argmax-axis-values",
        (2, 3, 4, 5),
        _layer("a", "ArgMax", "argmax_param { axis: -1 top_k: 2 out_max_val: true }"),
    ),
    *[
        (
            f"reduction-{op.lower()}-axis{axis}",
            (2, 3, 4, 5),
            _layer("r", "Reduction", f"reduction_param {{ operation: {op} axis: {axis} coeff: 0.7 }}"),
        )
        for op in ("SUM", "ASUM", "SUMSQ", "MEAN")
        for axis in (0, 2)
    ],
    ("mvn", (2, 3, 4, 5), _layer("m", "MVN")),
    ("mvn-across-eps", (2, 3, 4, 5), _layer("m", "MVN", "mvn_param { across_channels: true eps: 0.5 }")),
    ("mvn-mean-only", (2, 3, 4, 5), _layer("m", "MVN", "mvn_param { normalize_variance: false }")),
    ("mvn-2d", (3, 6), _layer("m", "MVN")),
    *[
        (
            f"spp-{mode.lower()}-{height}",
            (2, 3, 7, 6),
            _layer("s", "SPP", f"spp_param {{ pool: {mode} pyramid_height: {height} }}"),
        )
        for mode in ("MAX", "AVE")
        for height in (1, 3)
    ],
    ("im2col", (2, 3, 7, 6), _layer("i", "Im2col", "convolution_param { kernel_size: 3 stride: 2 pad: 1 }")),
    (
        "im2col-dilated-hw",
        (1, 2, 9, 8),
        _layer("i", "Im2col", "convolution_param { kernel_h: 3 kernel_w: 2 dilation: 2 pad_h: 2 }"),
    ),
    (
        "embed",
        (2, 3, 4, 5),
        SMALL + BITS + _layer("e", "Embed", "embed_param { input_dim: 2 num_output: 3 }", ("bits",)),
    ),
    (
        "embed-no-bias",
        (2, 3),
        SMALL
        + BITS
        + _layer("e", "Embed", "embed_param { input_dim: 2 num_output: 4 bias_term: false }", ("bits",)),
    ),
    (
        "parameter",
        (2, 3),
        _layer("p", "Parameter", "parameter_param { shape { dim: 2 dim: 5 } }", ()) + _layer("r", "ReLU"),
    ),
    (
        "batchreindex",
        (3, 2, 4),
        SMALL
        + _layer("sum", "Reduction", "reduction_param { operation: ASUM axis: 1 }", ("small",))
        + _layer("index", "Threshold", "threshold_param { threshold: 8 }", ("sum",))
        + _layer("b", "BatchReindex", bottoms=("data", "index")),
    ),
]


@pytest.mark.parametrize("case, input_shape, layers", LAYER_CASES, ids=[case[0] for case in LAYER_CASES])
def test_layer_matches_caffe(case: str, input_shape: tuple[int, ...], layers: str) -> None:
    assert_matches_caffe(single_input_net(input_shape, layers))
