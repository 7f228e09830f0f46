"""One converter per Caffe layer type, against numpy written from Caffe's formulas and OpenCV.

Each test builds a tiny net as prototxt text, writes its blobs with our caffemodel
writer, converts it, and compares the PyTorch result with a float64 numpy
reference of the Caffe layer (its .cpp, not torch's semantics) and, where OpenCV's
Caffe importer supports the layer with Caffe's semantics, with `cv2.dnn`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import onnxlower
from converter import CONVERTERS, UnsupportedLayerError, convert, convert_caffe
from converter.modules import CaffePool2d, running_statistics
from prototxt import (
    NetDefinitionError,
    build_net,
    load_net,
    parse_prototxt_text,
    portable_net,
    write_caffemodel,
    write_prototxt,
)

cv2 = pytest.importorskip("cv2")

Arrays = Mapping[str, np.ndarray]


# --- harness ---------------------------------------------------------------------------------


def _input_layer(shapes: Mapping[str, Sequence[int]]) -> str:
    tops = " ".join(f'top: "{name}"' for name in shapes)
    dims = " ".join("shape { " + " ".join(f"dim: {d}" for d in shape) + " }" for shape in shapes.values())
    return f'layer {{ name: "input" type: "Input" {tops} input_param {{ {dims} }} }}\n'


class TinyNet:
    """A prototxt + caffemodel pair on disk, runnable by us and by OpenCV."""

    def __init__(
        self,
        directory: Path,
        inputs: Arrays,
        layers: str,
        blobs: Mapping[str, Sequence[np.ndarray]] | None = None,
    ) -> None:
        self.inputs = {name: np.asarray(x, dtype=np.float32) for name, x in inputs.items()}
        self.text = _input_layer({n: x.shape for n, x in self.inputs.items()}) + layers
        self.prototxt, self.caffemodel = directory / "net.prototxt", directory / "net.caffemodel"
        self.prototxt.write_text(self.text)
        arrays = {
            name: [np.asarray(a, dtype=np.float32) for a in blob] for name, blob in (blobs or {}).items()
        }
        write_caffemodel(self.caffemodel, parse_prototxt_text(self.text), arrays)

    def ours(self, *outputs: str) -> list[np.ndarray]:
        module = convert_caffe(self.prototxt, self.caffemodel, outputs=list(outputs))
        with torch.no_grad():
            result = module(*(torch.from_numpy(self.inputs[name]) for name in module.caffe_inputs))
        result = result if isinstance(result, tuple) else (result,)
        return [r.numpy() for r in result]

    def onnx(self, *outputs: str) -> list[np.ndarray]:
        """The torch-free route: lowered to ONNX (checked, shapes inferred strictly), run in ONNX Runtime."""
        model = onnxlower.lower(load_net(self.prototxt, self.caffemodel), list(outputs))
        path = onnxlower.write_onnx(model, self.prototxt.with_suffix(".onnx"))[0]
        onnx.checker.check_model(str(path), full_check=True)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(list(outputs), self.inputs)

    def opencv(self, *outputs: str, prototxt: Path | None = None) -> list[np.ndarray]:
        net = cv2.dnn.readNetFromCaffe(str(prototxt or self.prototxt), str(self.caffemodel))
        for name, x in self.inputs.items():
            net.setInput(x, name)
        return [np.asarray(r) for r in net.forward(list(outputs))]


@pytest.fixture
def tiny(tmp_path: Path):
    """Factory: tiny(inputs, layers, blobs) -> TinyNet in this test's folder."""
    return lambda inputs, layers, blobs=None: TinyNet(tmp_path, inputs, layers, blobs)


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def assert_close(got: np.ndarray, expected: np.ndarray, rtol: float = 1e-5) -> None:
    """Max abs difference within `rtol` of the expected values' scale; shapes equal."""
    assert got.shape == expected.shape
    scale = max(float(np.abs(expected).max()), 1e-30)
    error = float(np.abs(got.astype(np.float64) - expected).max()) / scale
    assert error <= rtol, f"relative max abs difference {error:.3g} > {rtol:g}"


def check(net: TinyNet, top: str, expected: np.ndarray, *, opencv: bool = True, rtol: float = 1e-5) -> None:
    """Our value of `top` (PyTorch and torch-free ONNX) matches the numpy reference, and OpenCV's
    (when asked)."""
    assert_close(net.ours(top)[0], expected, rtol)
    assert_close(net.onnx(top)[0], expected, rtol)
    if opencv:
        assert_close(net.opencv(top)[0].reshape(expected.shape), expected, rtol)


# --- numpy references from Caffe's .cpp ------------------------------------------------------


def np_conv(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    stride: Sequence[int],
    pad: Sequence[int],
    dilation: Sequence[int] = (1, 1),
    group: int = 1,
) -> np.ndarray:
    """conv_layer.cpp: cross-correlation over zero-padded input, per group."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    (kh, kw), icg, ocg = w.shape[2:], w.shape[1], w.shape[0] // group
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    oh = (xp.shape[2] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (xp.shape[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((x.shape[0], w.shape[0], oh, ow))
    for g in range(group):
        xs, ws = xp[:, g * icg : (g + 1) * icg], w[g * ocg : (g + 1) * ocg]
        for i in range(kh):
            for j in range(kw):
                h0, w0 = i * dilation[0], j * dilation[1]
                patch = xs[
                    :,
                    :,
                    h0 : h0 + stride[0] * (oh - 1) + 1 : stride[0],
                    w0 : w0 + stride[1] * (ow - 1) + 1 : stride[1],
                ]
                out[:, g * ocg : (g + 1) * ocg] += np.einsum("nchw,oc->nohw", patch, ws[:, :, i, j])
    return out if b is None else out + b.reshape(1, -1, 1, 1)


def np_deconv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: int, group: int) -> np.ndarray:
    """deconv_layer.cpp: each input pixel scatters its kernel, then the border `pad` is cut."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    n, c, h, wd = x.shape
    icg, ocg, k = c // group, w.shape[1], w.shape[2]
    full = np.zeros((n, ocg * group, stride * (h - 1) + k, stride * (wd - 1) + k))
    for g in range(group):
        for i in range(k):
            for j in range(k):
                full[
                    :,
                    g * ocg : (g + 1) * ocg,
                    i : i + stride * (h - 1) + 1 : stride,
                    j : j + stride * (wd - 1) + 1 : stride,
                ] += np.einsum(
                    "nchw,co->nohw", x[:, g * icg : (g + 1) * icg], w[g * icg : (g + 1) * icg, :, i, j]
                )
    cut = full[:, :, pad : full.shape[2] - pad, pad : full.shape[3] - pad]
    return cut + b.reshape(1, -1, 1, 1)


def np_pool(
    x: np.ndarray,
    mode: str,
    kernel: Sequence[int],
    stride: Sequence[int],
    pad: Sequence[int],
    out_hw: Sequence[int],
) -> np.ndarray:
    """pooling_layer.cpp: MAX over the window inside the input; AVE sums it and divides by the
    window clipped to [-pad, size + pad), padding counted."""
    x = x.astype(np.float64)
    height, width = x.shape[2:]
    out = np.empty((*x.shape[:2], *out_hw))
    for ph in range(out_hw[0]):
        for pw in range(out_hw[1]):
            hs, ws = ph * stride[0] - pad[0], pw * stride[1] - pad[1]
            he, we = min(hs + kernel[0], height + pad[0]), min(ws + kernel[1], width + pad[1])
            divisor = (he - hs) * (we - ws)
            window = x[:, :, max(hs, 0) : min(he, height), max(ws, 0) : min(we, width)]
            pooled = window.max((2, 3)) if mode == "MAX" else window.sum((2, 3)) / divisor
            out[:, :, ph, pw] = pooled
    return out


def np_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


# --- Convolution, Deconvolution, InnerProduct ------------------------------------------------


@pytest.mark.parametrize(
    "params, stride, pad, dilation, group, bias",
    [
        ("kernel_size: 3 pad: 1 stride: 2", (2, 2), (1, 1), (1, 1), 1, True),
        ("kernel_size: 3 dilation: 2 pad: 2 group: 2 bias_term: false", (1, 1), (2, 2), (2, 2), 2, False),
        (
            "kernel_h: 3 kernel_w: 1 stride_h: 1 stride_w: 2 pad_h: 1 pad_w: 0 group: 4",
            (1, 2),
            (1, 0),
            (1, 1),
            4,
            True,
        ),
    ],
)
def test_convolution(tiny, params, stride, pad, dilation, group, bias) -> None:
    x = rand(2, 4, 7, 8)
    kh, kw = (3, 1) if "kernel_h" in params else (3, 3)
    w, b = rand(8, 4 // group, kh, kw, seed=1), rand(8, seed=2)
    net = tiny(
        {"data": x},
        f'layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv" '
        f"convolution_param {{ num_output: 8 {params} }} }}",
        {"conv": [w, b] if bias else [w]},
    )
    check(net, "conv", np_conv(x, w, b if bias else None, stride, pad, dilation, group))


def test_deconvolution(tiny) -> None:
    x, w, b = rand(2, 4, 5, 6), rand(4, 3, 4, 4, seed=1), rand(6, seed=2)
    net = tiny(
        {"data": x},
        'layer { name: "up" type: "Deconvolution" bottom: "data" top: "up" '
        "convolution_param { num_output: 6 kernel_size: 4 stride: 2 pad: 1 "
        "group: 2 } }",
        {"up": [w, b]},
    )
    expected = np_deconv(x, w, b, stride=2, pad=1, group=2)
    assert expected.shape == (2, 6, 10, 12)
    check(net, "up", expected)


def test_inner_product(tiny) -> None:
    x, w, b = rand(2, 3, 4, 5), rand(7, 60, seed=1), rand(7, seed=2)
    net = tiny(
        {"data": x},
        'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
        "inner_product_param { num_output: 7 } }",
        {"fc": [w, b]},
    )
    check(net, "fc", x.reshape(2, 60).astype(np.float64) @ w.T + b)


def test_inner_product_axis_and_transpose(tiny) -> None:
    """axis 2 keeps N x C and flattens the rest; transpose stores the weight as K x num_output."""
    x, w, b = rand(2, 3, 4, 5), rand(20, 7, seed=1), rand(7, seed=2)
    net = tiny(
        {"data": x},
        'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
        "inner_product_param { num_output: 7 axis: 2 transpose: true } }",
        {"fc": [w, b]},
    )
    # OpenCV's importer ignores `transpose`: it reads the K x num_output blob as num_output x K.
    check(net, "fc", x.reshape(2, 3, 20).astype(np.float64) @ w + b, opencv=False)


# --- BatchNorm, Scale, Bias, LRN -------------------------------------------------------------


@pytest.mark.parametrize("factor, eps", [(2.5, 1e-5), (1.0, 1e-3), (0.0, 1e-5)])
def test_batchnorm_scale_factor(tiny, factor, eps) -> None:
    """batch_norm_layer.cpp: stats divided by blob 2; a zero factor makes both stats 0."""
    x = rand(2, 3, 4, 5) * 3 + 1
    mean, var = rand(3, seed=1), np.abs(rand(3, seed=2)) + 0.5
    param = f"batch_norm_param {{ eps: {eps} }}"
    net = tiny(
        {"data": x},
        f'layer {{ name: "bn" type: "BatchNorm" bottom: "data" top: "bn" {param} }}',
        {"bn": [mean, var, np.array([factor])]},
    )
    inverse = 0.0 if factor == 0 else 1 / factor
    m, v = mean.astype(np.float64) * inverse, var.astype(np.float64) * inverse
    expected = (x - m.reshape(1, 3, 1, 1)) / np.sqrt(v.reshape(1, 3, 1, 1) + eps)
    check(net, "bn", expected)


def norm_of(module: torch.nn.Module, name: str) -> torch.nn.BatchNorm2d:
    norm = module.get_submodule(name)
    assert isinstance(norm, torch.nn.BatchNorm2d)
    return norm


@pytest.mark.parametrize("factor", [3.0, 0.7])
def test_batchnorm_statistics_in_the_net_dtype(tiny, factor) -> None:
    """As Caffe's Net<Dtype>: stats times the reciprocal of the factor, both in that dtype."""
    mean, var = rand(3, seed=1), np.abs(rand(3, seed=2)) + 0.5
    net = tiny(
        {"data": rand(1, 3, 2, 2)},
        'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" }',
        {"bn": [mean, var, np.array([factor])]},
    )
    loaded = load_net(net.prototxt, net.caffemodel)
    exact, single = convert(loaded, dtype=torch.float64), convert(loaded, dtype=torch.float32)
    assert {t.dtype for t in exact.state_dict().values() if t.is_floating_point()} == {torch.float64}
    stored = float(np.float32(factor))  # the caffemodel holds float32
    exact_var, single_var = (running_statistics(norm_of(m, "bn"))[1].numpy() for m in (exact, single))
    assert np.array_equal(exact_var, var.astype(np.float64) * (1.0 / stored))
    inverse = np.float32(1) / np.float32(factor)
    assert np.array_equal(single_var, var * inverse)
    assert not np.array_equal(exact_var, single_var)
    assert exact(torch.from_numpy(net.inputs["data"]).double()).dtype == torch.float64


@pytest.mark.parametrize(
    "params, blob_shape, view",
    [
        ("bias_term: true", (3,), (1, 3, 1, 1)),
        ("axis: 1 num_axes: 2", (3, 4), (1, 3, 4, 1)),
        ("axis: -1 bias_term: true", (5,), (1, 1, 1, 5)),
        ("axis: 0 num_axes: -1", (2, 3, 4, 5), (2, 3, 4, 5)),
    ],
)
def test_scale_learned(tiny, params, blob_shape, view) -> None:
    x, gamma, beta = rand(2, 3, 4, 5), rand(*blob_shape, seed=1), rand(*blob_shape, seed=2)
    bias = "bias_term: true" in params
    net = tiny(
        {"data": x},
        f'layer {{ name: "s" type: "Scale" bottom: "data" top: "s" scale_param {{ {params} }} }}',
        {"s": [gamma, beta] if bias else [gamma]},
    )
    expected = x.astype(np.float64) * gamma.reshape(view) + (beta.reshape(view) if bias else 0)
    # OpenCV's Scale cannot start at the last axis (it fails with 'end <= dims').
    check(net, "s", expected, opencv=params != "axis: -1 bias_term: true")


@pytest.mark.parametrize(
    "axis, operand_shape, view",
    [
        (0, (2, 3), (2, 3, 1, 1)),  # the portable Axpy: gate reshaped to N x C
        (1, (3,), (1, 3, 1, 1)),
        (1, (3, 4), (1, 3, 4, 1)),
    ],
)
def test_scale_two_bottoms(tiny, axis, operand_shape, view) -> None:
    x, y = rand(2, 3, 4, 5), rand(*operand_shape, seed=1)
    net = tiny(
        {"data": x, "gate": y},
        f'layer {{ name: "s" type: "Scale" bottom: "data" bottom: "gate" top: "s" '
        f"scale_param {{ axis: {axis} }} }}",
    )
    check(net, "s", x.astype(np.float64) * y.reshape(view))


def test_scale_two_bottoms_with_bias(tiny) -> None:
    x, y, beta = rand(2, 3, 4, 5), rand(2, 3, seed=1), rand(2, 3, seed=2)
    net = tiny(
        {"data": x, "gate": y},
        'layer { name: "s" type: "Scale" bottom: "data" bottom: "gate" top: "s" '
        "scale_param { axis: 0 bias_term: true } }",
        {"s": [beta]},
    )
    # OpenCV adds something else than the learned N x C bias here (neither x*y nor x*y+bias).
    check(net, "s", x.astype(np.float64) * y.reshape(2, 3, 1, 1) + beta.reshape(2, 3, 1, 1), opencv=False)


def test_bias(tiny) -> None:
    """bias_layer.cpp (OpenCV's importer has no Bias layer)."""
    x, beta = rand(2, 3, 4, 5), rand(3, 4, seed=1)
    net = tiny(
        {"data": x},
        'layer { name: "b" type: "Bias" bottom: "data" top: "b" bias_param { axis: 1 num_axes: 2 } }',
        {"b": [beta]},
    )
    check(net, "b", x.astype(np.float64) + beta.reshape(1, 3, 4, 1), opencv=False)


def test_bias_two_bottoms(tiny) -> None:
    x, y = rand(2, 3, 4, 5), rand(3, seed=1)
    net = tiny(
        {"data": x, "shift": y}, 'layer { name: "b" type: "Bias" bottom: "data" bottom: "shift" top: "b" }'
    )
    check(net, "b", x.astype(np.float64) + y.reshape(1, 3, 1, 1), opencv=False)


@pytest.mark.parametrize("k", [1.0, 2.0])
def test_lrn_across_channels(tiny, k) -> None:
    """lrn_layer.cpp: x * (k + alpha/n * sum of x^2 over n neighbouring channels)^-beta."""
    x = rand(2, 7, 4, 5) * 2
    net = tiny(
        {"data": x},
        f'layer {{ name: "n" type: "LRN" bottom: "data" top: "n" lrn_param '
        f"{{ local_size: 5 alpha: 0.5 beta: 0.75 k: {k} }} }}",
    )
    square = np.pad(x.astype(np.float64) ** 2, ((0, 0), (2, 2), (0, 0), (0, 0)))
    window = sum(square[:, i : i + 7] for i in range(5))
    # OpenCV's importer ignores Caffe's `k` (it reads a "bias" parameter, default 1).
    check(net, "n", x * (k + 0.5 / 5 * window) ** -0.75, opencv=k == 1.0)


def test_lrn_within_channel(tiny) -> None:
    """lrn_layer.cpp WITHIN_CHANNEL: x * (1 + alpha * AVE-pool(x^2, size, pad (size-1)/2))^-beta;
    k is not used."""
    x = rand(2, 3, 6, 5) * 2
    net = tiny(
        {"data": x},
        'layer { name: "n" type: "LRN" bottom: "data" top: "n" lrn_param '
        "{ local_size: 3 alpha: 0.5 beta: 0.75 k: 7 "
        "norm_region: WITHIN_CHANNEL } }",
    )
    mean_square = np_pool(x.astype(np.float64) ** 2, "AVE", (3, 3), (1, 1), (1, 1), (6, 5))
    check(net, "n", x * (1 + 0.5 * mean_square) ** -0.75)


# --- Pooling ---------------------------------------------------------------------------------


POOLING_CASES = [
    # (input HxW, pooling_param, kernel, stride, pad, expected output HxW)
    ((112, 112), "kernel_size: 3 stride: 2", (3, 3), (2, 2), (0, 0), (56, 56)),  # SENet pool1
    ((10, 9), "kernel_size: 3 stride: 2", (3, 3), (2, 2), (0, 0), (5, 4)),  # ceil, partial window
    ((5, 5), "kernel_size: 2 stride: 2 pad: 1", (2, 2), (2, 2), (1, 1), (3, 3)),  # last clipped
    ((6, 7), "kernel_size: 3 stride: 2 pad: 1", (3, 3), (2, 2), (1, 1), (4, 4)),  # AVE border
    ((7, 7), "kernel_size: 3 stride: 1 pad: 1", (3, 3), (1, 1), (1, 1), (7, 7)),  # Inception
    (
        (7, 6),
        "kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0",
        (3, 2),
        (2, 1),
        (1, 0),
        (4, 5),
    ),
    # pad > kernel / 2: torch's pooling refuses it, CaffePool2d does it by hand
    ((7, 7), "kernel_size: 3 stride: 2 pad: 2", (3, 3), (2, 2), (2, 2), (5, 5)),
    ((6, 8), "kernel_size: 3 stride: 2 pad: 2", (3, 3), (2, 2), (2, 2), (4, 5)),  # clipped too
    ((8, 8), "kernel_size: 2 stride: 3 pad: 1", (2, 2), (3, 3), (1, 1), (3, 3)),
]


@pytest.mark.parametrize("mode", ["MAX", "AVE"])
@pytest.mark.parametrize("size, params, kernel, stride, pad, out_hw", POOLING_CASES)
def test_pooling(tiny, mode, size, params, kernel, stride, pad, out_hw) -> None:
    x = rand(2, 3, *size)
    net = tiny(
        {"data": x},
        f'layer {{ name: "p" type: "Pooling" bottom: "data" top: "p" '
        f"pooling_param {{ pool: {mode} {params} }} }}",
    )
    assert load_net(net.prototxt).blob_shapes["p"] == (2, 3, *out_hw)
    check(net, "p", np_pool(x, mode, kernel, stride, pad, out_hw))


def test_pooling_pad_beyond_half_kernel_uses_caffe_pool(tiny) -> None:
    x = rand(1, 2, 7, 7)
    net = tiny(
        {"data": x},
        'layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
        "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 2 } }",
    )
    module = convert(load_net(net.prototxt))
    assert isinstance(module.p, CaffePool2d)


@pytest.mark.parametrize("mode", ["MAX", "AVE"])
def test_unpadded_window_starting_past_the_input_is_kept(tiny, mode) -> None:
    """Caffe drops a last window that starts past the input only when padded; torch always does.

    Size 6, kernel 2, stride 3: Caffe's output is 3 wide (windows at 0, 3, 6), the
    third window empty. The module must produce Caffe's shape; the full windows
    match numpy and OpenCV.
    """
    x = rand(1, 2, 6, 6)
    net = tiny(
        {"data": x},
        f'layer {{ name: "p" type: "Pooling" bottom: "data" top: "p" '
        f"pooling_param {{ pool: {mode} kernel_size: 2 stride: 3 }} }}",
    )
    assert load_net(net.prototxt).blob_shapes["p"] == (1, 2, 3, 3)
    expected = np_pool(x, mode, (2, 2), (3, 3), (0, 0), (2, 2))
    for got in (net.ours("p")[0], net.onnx("p")[0]):
        assert got.shape == (1, 2, 3, 3)
        assert_close(got[..., :2, :2], expected)
    assert_close(net.opencv("p")[0].reshape(got.shape)[..., :2, :2], expected)


@pytest.mark.parametrize("mode", ["MAX", "AVE"])
def test_global_pooling(tiny, mode) -> None:
    x = rand(2, 3, 5, 6)
    net = tiny(
        {"data": x},
        f'layer {{ name: "p" type: "Pooling" bottom: "data" top: "p" '
        f"pooling_param {{ pool: {mode} global_pooling: true }} }}",
    )
    reduce = np.max if mode == "MAX" else np.mean
    check(net, "p", reduce(x.astype(np.float64), axis=(2, 3), keepdims=True))


def test_stochastic_pooling_is_refused(tiny) -> None:
    net = tiny(
        {"data": rand(1, 1, 4, 4)},
        'layer { name: "p" type: "Pooling" bottom: "data" '
        'top: "p" pooling_param { pool: STOCHASTIC '
        "kernel_size: 2 stride: 2 } }",
    )
    with pytest.raises(NetDefinitionError, match="STOCHASTIC"):
        net.ours("p")


# --- Eltwise, Axpy ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params, combine",
    [
        ("", lambda a, b, c: a + b + c),
        ("coeff: 0.5 coeff: -2 coeff: 1.5", lambda a, b, c: 0.5 * a - 2 * b + 1.5 * c),
        ("operation: PROD", lambda a, b, c: a * b * c),
        ("operation: MAX", lambda a, b, c: np.maximum(np.maximum(a, b), c)),
    ],
)
def test_eltwise(tiny, params, combine) -> None:
    a, b, c = (rand(2, 3, 4, 5, seed=s).astype(np.float64) for s in range(3))
    net = tiny(
        {"a": a, "b": b, "c": c},
        f'layer {{ name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "e" '
        f"eltwise_param {{ {params} }} }}",
    )
    check(net, "e", combine(a, b, c))


AXPY = 'layer { name: "axpy" type: "Axpy" bottom: "gate" bottom: "x" bottom: "y" top: "axpy" }'


def test_axpy_is_a_times_x_plus_y(tiny, tmp_path: Path) -> None:
    """axpy_layer.cpp: top = bottom[0] * bottom[1] + bottom[2]; OpenCV gets it right only
    through the portable rewrite."""
    gate, x, y = rand(2, 3, 1, 1), rand(2, 3, 4, 5, seed=1), rand(2, 3, 4, 5, seed=2)
    net = tiny({"gate": gate, "x": x, "y": y}, AXPY)
    expected = gate.astype(np.float64) * x + y
    assert_close(net.ours("axpy")[0], expected)
    assert_close(net.onnx("axpy")[0], expected)
    portable = tmp_path / "portable.prototxt"
    write_prototxt(portable_net(parse_prototxt_text(net.text)), portable)
    assert_close(net.opencv("axpy", prototxt=portable)[0], expected)


def test_opencv_maps_axpy_with_operands_swapped(tiny) -> None:
    """The pitfall the portable prototxt exists for: OpenCV computes bottom[0]*bottom[2]+bottom[1].

    (OpenCV's own Axpy also only runs batch 1; the portable form runs any batch.)
    """
    gate, x, y = rand(1, 3, 1, 1), rand(1, 3, 4, 5, seed=1), rand(1, 3, 4, 5, seed=2)
    net = tiny({"gate": gate, "x": x, "y": y}, AXPY)
    got = net.opencv("axpy")[0]
    assert_close(got, gate.astype(np.float64) * y + x)
    assert np.abs(got - (gate * x + y)).max() > 0.1


# --- activations, Softmax, Dropout -----------------------------------------------------------


@pytest.mark.parametrize(
    "layer_type, params, function",
    [
        ("ReLU", "", lambda x: np.maximum(x, 0)),
        ("ReLU", "relu_param { negative_slope: 0.1 }", lambda x: np.where(x > 0, x, 0.1 * x)),
        ("Sigmoid", "", lambda x: 1 / (1 + np.exp(-x))),
        ("TanH", "", np.tanh),
        ("Dropout", "dropout_param { dropout_ratio: 0.5 }", lambda x: x),
    ],
)
def test_elementwise_activation(tiny, layer_type, params, function) -> None:
    x = rand(2, 3, 4, 5).astype(np.float64)
    net = tiny({"data": x}, f'layer {{ name: "f" type: "{layer_type}" bottom: "data" top: "f" {params} }}')
    check(net, "f", function(x))


@pytest.mark.parametrize("shared", [False, True])
def test_prelu(tiny, shared) -> None:
    x, slope = rand(2, 3, 4, 5).astype(np.float64), rand(1 if shared else 3, seed=1)
    net = tiny(
        {"data": x},
        f'layer {{ name: "f" type: "PReLU" bottom: "data" top: "f" '
        f"prelu_param {{ channel_shared: {str(shared).lower()} }} }}",
        {"f": [slope]},
    )
    view = slope.reshape(1, -1, 1, 1)
    check(net, "f", np.where(x > 0, x, view * x))


@pytest.mark.parametrize("axis, shape", [(1, (2, 5, 3, 4)), (-1, (2, 5, 3, 4)), (0, (3, 4))])
def test_softmax_axis(tiny, axis, shape) -> None:
    x = rand(*shape).astype(np.float64) * 3
    net = tiny(
        {"data": x},
        f'layer {{ name: "s" type: "Softmax" bottom: "data" top: "s" softmax_param {{ axis: {axis} }} }}',
    )
    check(net, "s", np_softmax(x, axis))


def test_in_place_dropout_relu_chain_is_data_flow(tiny) -> None:
    x = rand(1, 3, 4, 4).astype(np.float64)
    net = tiny(
        {"data": x},
        'layer { name: "drop" type: "Dropout" bottom: "data" top: "data" }\n'
        'layer { name: "relu" type: "ReLU" bottom: "data" top: "data" }',
    )
    assert_close(net.ours("data")[0], np.maximum(x, 0))
    with pytest.raises(NetDefinitionError, match="'data' is an input"):  # ONNX names values once
        net.onnx("data")


# --- Concat, Reshape, Flatten, Slice, Split --------------------------------------------------


@pytest.mark.parametrize("axis", [1, 2, -1])
def test_concat(tiny, axis) -> None:
    a, b = rand(2, 3, 4, 5), rand(2, 3, 4, 5, seed=1)
    net = tiny(
        {"a": a, "b": b},
        f'layer {{ name: "c" type: "Concat" bottom: "a" bottom: "b" '
        f'top: "c" concat_param {{ axis: {axis} }} }}',
    )
    check(net, "c", np.concatenate([a, b], axis).astype(np.float64))


@pytest.mark.parametrize(
    "params, shape",
    [
        ("shape { dim: 0 dim: -1 }", (2, 240)),
        ("shape { dim: 0 dim: 0 dim: -1 }", (2, 12, 20)),
        ("shape { dim: -1 dim: 0 dim: 2 }", (20, 12, 2)),  # 0 copies the axis at its own position
        ("shape { dim: 6 dim: 2 } axis: 1 num_axes: 1", (2, 6, 2, 4, 5)),
        ("shape { dim: -1 } axis: 1 num_axes: 2", (2, 48, 5)),
        ("shape { dim: 1 } axis: -1 num_axes: 0", (2, 12, 4, 5, 1)),
    ],
)
def test_reshape(tiny, params, shape) -> None:
    x = rand(2, 12, 4, 5)
    net = tiny(
        {"data": x},
        f'layer {{ name: "r" type: "Reshape" bottom: "data" top: "r" reshape_param {{ {params} }} }}',
    )
    expected = x.reshape(shape).astype(np.float64)
    assert load_net(net.prototxt).blob_shapes["r"] == shape
    assert_close(net.ours("r")[0], expected)
    assert_close(net.onnx("r")[0], expected)
    if len(shape) <= 4:  # OpenCV's blobs are at most 4-D here
        assert_close(net.opencv("r")[0].reshape(shape), expected)


def test_reshape_keeps_batch_dynamic(tiny) -> None:
    net = tiny(
        {"data": rand(1, 3, 2, 2)},
        'layer { name: "r" type: "Reshape" bottom: "data" '
        'top: "r" reshape_param { shape { dim: 0 dim: -1 } } }',
    )
    module = convert(load_net(net.prototxt))
    assert module(torch.zeros(5, 3, 2, 2)).shape == (5, 12)


@pytest.mark.parametrize(
    "params, shape",
    [("", (2, 60)), ("axis: 2 end_axis: -1", (2, 3, 20)), ("axis: 1 end_axis: 2", (2, 12, 5))],
)
def test_flatten(tiny, params, shape) -> None:
    x = rand(2, 3, 4, 5)
    net = tiny(
        {"data": x},
        f'layer {{ name: "f" type: "Flatten" bottom: "data" top: "f" flatten_param {{ {params} }} }}',
    )
    check(net, "f", x.reshape(shape).astype(np.float64))


@pytest.mark.parametrize(
    "params, sizes",
    [("slice_point: 1 slice_point: 3", (1, 2, 2)), ("axis: 1", (2, 2, 2)), ("axis: -1", None)],
)
def test_slice(tiny, params, sizes) -> None:
    x = rand(2, 5 if sizes == (1, 2, 2) else 6, 4, 6)
    net = tiny(
        {"data": x},
        f'layer {{ name: "s" type: "Slice" bottom: "data" top: "s0" top: "s1" '
        f'top: "s2" slice_param {{ {params} }} }}\n'
        'layer { name: "c" type: "Concat" bottom: "s2" bottom: "s0" '
        'bottom: "s1" '
        'top: "c" concat_param { axis: %d } }' % (3 if sizes is None else 1),
    )
    axis = 3 if sizes is None else 1
    parts = np.split(x.astype(np.float64), np.cumsum(sizes)[:-1] if sizes else 3, axis=axis)
    for got, part in zip([*net.ours("s0", "s1", "s2"), *net.onnx("s0", "s1", "s2")], parts * 2):
        assert_close(got, part)
    # OpenCV names no top but a layer's first, and needs slice points (it ignores the top count),
    # so it is compared on the reordered concatenation of the slices.
    check(net, "c", np.concatenate([parts[2], parts[0], parts[1]], axis), opencv="slice_point" in params)


def test_split(tiny) -> None:
    """Split tops are the bottom itself: no module, plain data flow."""
    x = rand(2, 3, 4, 5).astype(np.float64)
    net = tiny(
        {"data": x},
        'layer { name: "split" type: "Split" bottom: "data" top: "a" '
        'top: "b" }\n'
        'layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" '
        'top: "sum" eltwise_param { coeff: 1 coeff: 2 } }',
    )
    check(net, "sum", 3 * x)
    assert_close(net.ours("b")[0], x)
    assert_close(net.onnx("b")[0], x)
    module = convert(load_net(net.prototxt, net.caffemodel), ["sum"])
    assert "split" not in dict(module.named_children())


# --- registry --------------------------------------------------------------------------------


def test_unsupported_types_are_listed_together(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every offending layer of every type in one error, with the pointer to adding a converter."""
    x = rand(1, 3, 4, 4)
    net = tiny(
        {"data": x},
        'layer { name: "n1" type: "LRN" bottom: "data" top: "n1" }\n'
        'layer { name: "p1" type: "PReLU" bottom: "n1" top: "p1" }\n'
        'layer { name: "n2" type: "LRN" bottom: "p1" top: "n2" }\n'
        'layer { name: "ok" type: "ReLU" bottom: "n2" top: "ok" }',
        {"p1": [rand(3)]},
    )
    monkeypatch.delitem(CONVERTERS, "LRN")
    monkeypatch.delitem(CONVERTERS, "PReLU")
    with pytest.raises(UnsupportedLayerError) as info:
        convert(load_net(net.prototxt, net.caffemodel))
    message = str(info.value)
    assert "LRN: n1, n2" in message and "PReLU: p1" in message and "ok" not in message
    assert "@converter.register" in message


def test_types_without_shape_rule_are_listed_together(tmp_path: Path) -> None:
    """Types `prototxt` cannot even shape fail at load time, also all at once."""
    text = _input_layer({"data": (1, 3, 4, 4)}) + (
        'layer { name: "pw" type: "Warp" bottom: "data" top: "pw" }\n'
        'layer { name: "ex1" type: "Morph" bottom: "pw" top: "ex1" }\n'
        'layer { name: "ex2" type: "Morph" bottom: "ex1" top: "ex2" }'
    )
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    with pytest.raises(NetDefinitionError) as info:
        convert_caffe(path)
    message = str(info.value)
    assert "type(s) Morph, Warp (layers" in message and all(name in message for name in ("pw", "ex1", "ex2"))
    assert "Adding a layer type" in message


# --- the rest of BVLC's layer list: numpy written from each layer's .cpp ---------------------------


def _layer(layer_type: str, params: str = "", bottoms: Sequence[str] = ("data",), top: str = "y") -> str:
    inputs = " ".join(f'bottom: "{b}"' for b in bottoms)
    return f'layer {{ name: "{top}" type: "{layer_type}" {inputs} top: "{top}" {params} }}\n'


@pytest.mark.parametrize(
    "layer_type, params, function",
    [
        ("AbsVal", "", np.abs),
        # log(1 + e^x) in another form than bnll_layer.cpp's two branches
        ("BNLL", "", lambda x: np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))),
        ("Clip", "clip_param { min: -0.5 max: 0.75 }", lambda x: np.clip(x, -0.5, 0.75)),
        ("ELU", "elu_param { alpha: 0.5 }", lambda x: np.where(x > 0, x, 0.5 * np.expm1(x))),
        ("Exp", "", np.exp),
        ("Exp", "exp_param { base: 2 scale: 0.5 shift: 1 }", lambda x: 2.0 ** (1 + 0.5 * x)),
        ("Log", "log_param { base: 10 scale: 0.25 shift: 3 }", lambda x: np.log10(3 + 0.25 * x)),
        ("Power", "power_param { power: 3 scale: 0.5 shift: 0.25 }", lambda x: (0.25 + 0.5 * x) ** 3),
        ("Power", "power_param { power: 2 scale: 0 shift: 3 }", lambda x: np.full_like(x, 9.0)),
        ("Power", "power_param { power: 0 }", np.ones_like),
        ("Threshold", "threshold_param { threshold: 0.25 }", lambda x: (x > 0.25).astype(np.float64)),
        ("Swish", "swish_param { beta: 1.5 }", lambda x: x / (1 + np.exp(-1.5 * x))),
    ],
)
def test_neuron_layers(tiny, layer_type, params, function) -> None:
    x = rand(2, 3, 4, 5).astype(np.float64)
    net = tiny({"data": x}, _layer(layer_type, params))
    check(net, "y", function(x), opencv=False)


@pytest.mark.parametrize(
    "params, window",
    [
        ("", (slice(None), slice(None), slice(0, 4), slice(0, 3))),  # axis 2, offset 0
        ("crop_param { offset: 2 }", (slice(None), slice(None), slice(2, 6), slice(2, 5))),
        (
            "crop_param { axis: 1 offset: 1 offset: 3 offset: 0 }",
            (slice(None), slice(1, 3), slice(3, 7), slice(0, 3)),
        ),
    ],
)
def test_crop(tiny, params, window) -> None:
    x, reference = rand(2, 4, 7, 6), rand(2, 2, 4, 3, seed=1)
    net = tiny({"data": x, "ref": reference}, _layer("Crop", params, ("data", "ref")))
    check(net, "y", x[window].astype(np.float64), opencv=False)


def test_crop_out_of_bounds_is_refused(tiny) -> None:
    net = tiny(
        {"data": rand(1, 1, 5, 5), "ref": rand(1, 1, 3, 3)},
        _layer("Crop", "crop_param { offset: 3 }", ("data", "ref")),
    )
    with pytest.raises(NetDefinitionError, match="crop of axis 2"):
        load_net(net.prototxt)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_tile(tiny, axis) -> None:
    x = rand(2, 3, 4)
    net = tiny({"data": x}, _layer("Tile", f"tile_param {{ axis: {axis} tiles: 3 }}"))
    # tile_layer.cpp: for each outer index, the inner block (axis on) is copied `tiles` times
    check(net, "y", np.concatenate([x] * 3, axis=axis).astype(np.float64), opencv=False)


def np_argmax(x: np.ndarray, top_k: int, axis: int | None, out_max_val: bool) -> np.ndarray:
    """argmax_layer.cpp: (value, index) pairs sorted by std::greater, so ties put the larger index first."""
    if axis is None:
        flat = x.reshape(x.shape[0], -1)
        out = np.zeros((x.shape[0], 2 if out_max_val else 1, top_k) + (1,) * max(x.ndim - 3, 0))
        for i, row in enumerate(flat):
            best = sorted(((v, j) for j, v in enumerate(row)), reverse=True)[:top_k]
            out[i, 0, :] = np.array([j for _, j in best]).reshape(out.shape[2:])
            if out_max_val:
                out[i, 1, :] = np.array([v for v, _ in best]).reshape(out.shape[2:])
        return out
    moved = np.moveaxis(x, axis, -1)
    out = np.zeros((*moved.shape[:-1], top_k))
    for index in np.ndindex(moved.shape[:-1]):
        best = sorted(((v, j) for j, v in enumerate(moved[index])), reverse=True)[:top_k]
        out[index] = [v if out_max_val else j for v, j in best]
    return np.moveaxis(out, -1, axis)


@pytest.mark.parametrize(
    "params, top_k, axis, out_max_val",
    [
        ("top_k: 3", 3, None, False),
        ("top_k: 2 out_max_val: true", 2, None, True),
        ("axis: 1 top_k: 2", 2, 1, False),
        ("axis: -1 top_k: 3 out_max_val: true", 3, 3, True),
    ],
)
def test_argmax_with_ties(tiny, params, top_k, axis, out_max_val) -> None:
    x = np.round(rand(2, 3, 4, 5) * 2)  # few distinct values: many ties
    net = tiny({"data": x}, _layer("ArgMax", f"argmax_param {{ {params} }}"))
    check(net, "y", np_argmax(x.astype(np.float64), top_k, axis, out_max_val), opencv=False)


@pytest.mark.parametrize("operation", ["SUM", "ASUM", "SUMSQ", "MEAN"])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_reduction(tiny, operation, axis) -> None:
    x = rand(2, 3, 4).astype(np.float64)
    net = tiny(
        {"data": x},
        _layer("Reduction", f"reduction_param {{ operation: {operation} axis: {axis} coeff: -1.5 }}"),
    )
    start = axis % x.ndim
    flat = x.reshape(*x.shape[:start], -1)
    value = {"SUM": flat, "ASUM": np.abs(flat), "SUMSQ": flat**2, "MEAN": flat / flat.shape[-1]}[operation]
    check(net, "y", -1.5 * value.sum(-1), opencv=False)


@pytest.mark.parametrize("across_channels", [False, True])
@pytest.mark.parametrize("normalize_variance", [False, True])
def test_mvn(tiny, across_channels, normalize_variance) -> None:
    x = rand(2, 3, 4, 5).astype(np.float64) * 3 + 1
    net = tiny(
        {"data": x},
        _layer(
            "MVN",
            f"mvn_param {{ across_channels: {str(across_channels).lower()} "
            f"normalize_variance: {str(normalize_variance).lower()} eps: 0.01 }}",
        ),
    )
    axes = (1, 2, 3) if across_channels else (2, 3)
    centred = x - x.mean(axes, keepdims=True)
    expected = centred / (centred.std(axes, keepdims=True) + 0.01) if normalize_variance else centred
    check(net, "y", expected, opencv=False)


def test_mvn_top_has_four_axes(tiny) -> None:
    x = rand(2, 3)
    net = tiny({"data": x}, _layer("MVN", "mvn_param { normalize_variance: false }"))
    assert load_net(net.prototxt).blob_shapes["y"] == (2, 3, 1, 1)
    check(net, "y", np.zeros((2, 3, 1, 1)), opencv=False)


@pytest.mark.parametrize("mode", ["MAX", "AVE"])
@pytest.mark.parametrize("height", [1, 3])
def test_spp(tiny, mode, height) -> None:
    x = rand(2, 3, 7, 6)
    net = tiny({"data": x}, _layer("SPP", f"spp_param {{ pool: {mode} pyramid_height: {height} }}"))
    levels = []
    for level in range(height):  # spp_layer.cpp's GetPoolingParam
        bins = 2**level
        kernel = [-(-size // bins) for size in (7, 6)]
        pad = [(k * bins - size + 1) // 2 for k, size in zip(kernel, (7, 6))]
        out_hw = [-(-(size + 2 * p - k) // k) + 1 for size, p, k in zip((7, 6), pad, kernel)]
        if any(pad):  # pooling_layer.cpp: a last window starting in the padding is dropped
            out_hw = [o - ((o - 1) * k >= size + p) for o, k, size, p in zip(out_hw, kernel, (7, 6), pad)]
        levels.append(np_pool(x, mode, kernel, kernel, pad, out_hw))
    expected = levels[0] if height == 1 else np.concatenate([lv.reshape(2, -1) for lv in levels], 1)
    check(net, "y", expected, opencv=False)


def test_im2col(tiny) -> None:
    x = rand(2, 3, 6, 5)
    net = tiny(
        {"data": x}, _layer("Im2col", "convolution_param { kernel_size: 3 stride: 2 pad: 1 dilation: 1 }")
    )
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    out_h, out_w = (6 + 2 - 3) // 2 + 1, (5 + 2 - 3) // 2 + 1
    expected = np.zeros((2, 3 * 9, out_h, out_w))
    for c in range(3):  # im2col.cpp: row (c * k_h + i) * k_w + j
        for i in range(3):
            for j in range(3):
                expected[:, (c * 3 + i) * 3 + j] = padded[:, c, i : i + 2 * out_h : 2, j : j + 2 * out_w : 2]
    check(net, "y", expected, opencv=False)


@pytest.mark.parametrize("bias", [True, False])
def test_embed(tiny, bias) -> None:
    indices = np.array([[0, 3, 1], [4, 4, 2]], dtype=np.float32)
    weight, offset = rand(5, 6), rand(6, seed=1)
    net = tiny(
        {"data": indices},
        _layer("Embed", f"embed_param {{ input_dim: 5 num_output: 6 bias_term: {str(bias).lower()} }}"),
        {"y": [weight, offset] if bias else [weight]},
    )
    expected = weight.astype(np.float64)[indices.astype(int)] + (offset if bias else 0)
    check(net, "y", expected, opencv=False)


def test_parameter_outputs_its_blob(tiny) -> None:
    value = rand(2, 3)
    net = tiny(
        {"data": rand(1, 1)},
        _layer("Parameter", "parameter_param { shape { dim: 2 dim: 3 } }", bottoms=()),
        {"y": [value]},
    )
    check(net, "y", value.astype(np.float64), opencv=False)


@pytest.mark.parametrize("group", [1, 3])
def test_shuffle_channel(tiny, group) -> None:
    """farmingyard/ShuffleNet's layer (not in BVLC): its Resize_cpu loop, and OpenCV's importer."""
    x = rand(2, 6, 3, 2)
    net = tiny({"data": x}, _layer("ShuffleChannel", f"shuffle_channel_param {{ group: {group} }}"))
    expected = np.empty_like(x, dtype=np.float64)
    columns = 6 // group
    for i in range(group):
        for j in range(columns):
            expected[:, j * group + i] = x[:, i * columns + j]
    check(net, "y", expected)


def test_batch_reindex(tiny) -> None:
    x, order = rand(3, 2, 2), np.array([2, 0, 2, 1], dtype=np.float32)
    net = tiny({"data": x, "order": order}, _layer("BatchReindex", bottoms=("data", "order")))
    check(net, "y", x.astype(np.float64)[[2, 0, 2, 1]], opencv=False)


@pytest.mark.parametrize(
    "layer, message",
    [
        (
            _layer("Python", 'python_param { module: "rpn.proposal" layer: "ProposalLayer" }'),
            r"Python layers cannot be converted: .*\(module 'rpn.proposal', class 'ProposalLayer'\)",
        ),
        (
            _layer("LSTM", "recurrent_param { num_output: 4 }", ("data", "cont")),
            "LSTM layers cannot be converted: recurrent",
        ),
        (_layer("RNN", "", ("data", "cont")), "RNN layers cannot be converted: recurrent"),
        (_layer("Filter", "", ("data", "cont"), top="y"), "Filter layers cannot be converted"),
    ],
)
def test_layers_without_a_static_graph_are_refused_by_name(tiny, layer, message) -> None:
    net = tiny({"data": rand(2, 3), "cont": rand(2, 1)}, layer)
    with pytest.raises(NetDefinitionError, match=message) as info:
        load_net(net.prototxt)
    assert "layer 'y'" in str(info.value)


def test_python_layer_without_bottoms_is_a_data_layer(tmp_path: Path) -> None:
    text = (
        'layer { name: "data" type: "Python" top: "data" top: "label" '
        'python_param { module: "voc_layers" layer: "VOCSegDataLayer" } }\n'
        'input: "data" input_shape { dim: 1 dim: 3 dim: 4 dim: 4 }\n' + _layer("ReLU")
    )
    net = build_net(parse_prototxt_text(text))
    assert [layer.type for layer in net.layers] == ["ReLU"]
    assert any("dropped data layer 'data' (Python)" in note for note in net.notes)
