"""Fuzzing the readers: whatever the input, only `prototxt.CaffeError` escapes.

Inputs are random, or valid files mutated (bit flips, truncations, insertions,
deletions, duplicated ranges, inserted varints, replaced numbers and names), so
that most examples get deep into the readers rather than failing on byte one.
Every example must finish quickly: hypothesis' deadline flags slow ones, and an
alarm turns a real hang into a failure instead of a stuck suite. A successful
parse is then used the way the CLI uses it, so lazy failures surface too.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prototxt import (
    CaffeError,
    CaffeModel,
    Net,
    build_net,
    load_net,
    parse_caffemodel_buffer,
    parse_prototxt_text,
)
from senet_repro.assets import CaffePair

# protobuf's text parser warns about unknown escapes in strings; that is not an error.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:google.protobuf")

# SENET_FUZZ_EXAMPLES=20000 for a long hunt; the default keeps the suite quick.
FUZZ = settings(
    max_examples=int(os.environ.get("SENET_FUZZ_EXAMPLES", "300")),
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# One net that reaches every shape rule (and the TEST-phase filter).
SEED_PROTOTXT = """\
name: "fuzz"
input: "data"
input_shape { dim: 1 dim: 4 dim: 6 dim: 6 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 1 group: 2 dilation: 1 } }
layer { name: "deconv" type: "Deconvolution" bottom: "conv" top: "deconv"
        convolution_param { num_output: 4 kernel_size: 2 stride: 2 bias_term: false } }
layer { name: "pool" type: "Pooling" bottom: "deconv" top: "pool"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "gpool" type: "Pooling" bottom: "pool" top: "gpool"
        pooling_param { pool: AVE global_pooling: true } }
layer { name: "down" type: "Convolution" bottom: "gpool" top: "down"
        convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "prelu" type: "PReLU" bottom: "down" top: "down" }
layer { name: "up" type: "Convolution" bottom: "down" top: "up"
        convolution_param { num_output: 4 kernel_h: 1 kernel_w: 1 } }
layer { name: "gate" type: "Sigmoid" bottom: "up" top: "up" }
layer { name: "axpy" type: "Axpy" bottom: "up" bottom: "pool" bottom: "pool" top: "axpy" }
layer { name: "flat" type: "Reshape" bottom: "up" top: "flat"
        reshape_param { shape { dim: 0 dim: -1 } } }
layer { name: "scale" type: "Scale" bottom: "pool" bottom: "flat" top: "scaled"
        scale_param { axis: 0 bias_term: true } }
layer { name: "sum" type: "Eltwise" bottom: "scaled" bottom: "axpy" top: "sum"
        eltwise_param { operation: SUM coeff: 1 coeff: -1 } }
layer { name: "cat" type: "Concat" bottom: "sum" bottom: "pool" top: "cat"
        concat_param { axis: 1 } }
layer { name: "slice" type: "Slice" bottom: "cat" top: "s1" top: "s2"
        slice_param { axis: 1 slice_point: 3 } }
layer { name: "split" type: "Split" bottom: "s1" top: "a" top: "b" }
layer { name: "tanh" type: "TanH" bottom: "a" top: "a" }
layer { name: "bn" type: "BatchNorm" bottom: "s2" top: "s2" }
layer { name: "bias" type: "Bias" bottom: "s2" top: "s2" bias_param { axis: 1 num_axes: 1 } }
layer { name: "lrn" type: "LRN" bottom: "s2" top: "s2" }
layer { name: "flatten" type: "Flatten" bottom: "s2" top: "f" flatten_param { axis: 1 } }
layer { name: "fc" type: "InnerProduct" bottom: "f" top: "fc"
        inner_product_param { num_output: 3 axis: 1 transpose: true } }
layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" top: "loss" include { phase: TRAIN } }
layer { name: "relu" type: "ReLU" bottom: "fc" top: "fc" exclude { phase: TEST } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""

_NUMBER = re.compile(r"(?<![\w.])-?\d+(?![\w.])")
_QUOTED = re.compile(r'"[^"]*"')
_WORD = re.compile(r"\b[A-Za-z_]\w*\b")
_NAMES = sorted(set(_QUOTED.findall(SEED_PROTOTXT)))
_VOCABULARY = sorted(
    set(_WORD.findall(SEED_PROTOTXT))
    | set(_NAMES)
    | {"{", "}", ":", '"', "#", "\\", "layer {", "layers {", "\n"}
)

# Numbers a mutation puts in: the edge cases first, then anything up to int64/uint64.
_INTEGERS = st.one_of(
    st.integers(-1, 3),
    st.integers(-3, 10),
    st.sampled_from([2**31 - 1, 2**31, 2**32, 2**63 - 1]),
    st.integers(-(2**63), 2**64),
)


# Values that still parse in every numeric field, edge cases (0, 1) first.
_SMALL = st.one_of(st.sampled_from([0, 1]), st.integers(0, 12))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


@st.composite
def mutated_bytes(draw: st.DrawFn, seed: bytes) -> bytes:
    """`seed` after 1 to 4 random edits (a truncation is always the last)."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(
            st.sampled_from(["flip", "insert", "delete", "overwrite", "duplicate", "varint", "truncate"])
        )
        pos = draw(st.integers(0, len(data)))
        if kind == "flip" and data:
            index = min(pos, len(data) - 1)
            data[index] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[pos : pos + len(chunk)] = chunk
        elif kind == "duplicate":
            end = draw(st.integers(pos, min(len(data), pos + 256)))
            data[pos:pos] = data[pos:end]
        elif kind == "varint":
            data[pos:pos] = _varint(draw(st.integers(0, 2**70)))
        elif kind == "truncate":
            del data[pos:]
            break
    return bytes(data)


_TEXT_EDITS = ("number", "number", "name", "token", "insert", "delete", "truncate")


@st.composite
def mutated_text(draw: st.DrawFn, seed: str, semantic: bool = False) -> str:
    """`seed` with numbers, names and tokens replaced, or characters edited.

    `semantic` edits only numbers (kept small, so they still parse) and quoted
    names and types, to reach the net checks rather than the parser.
    """
    text = seed
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(("number", "name") if semantic else _TEXT_EDITS))
        if kind == "number":
            spans = [m.span() for m in _NUMBER.finditer(text)]
            if spans:
                start, end = draw(st.sampled_from(spans))
                value = draw(_SMALL if semantic else _INTEGERS)
                text = f"{text[:start]}{value}{text[end:]}"
        elif kind in ("name", "token"):
            pattern = _QUOTED if kind == "name" else _WORD
            spans = [m.span() for m in pattern.finditer(text)]
            if spans:
                start, end = draw(st.sampled_from(spans))
                choices = _NAMES if semantic else _VOCABULARY
                text = f"{text[:start]}{draw(st.sampled_from(choices))}{text[end:]}"
        else:
            pos = draw(st.integers(0, len(text)))
            if kind == "insert":
                text = (
                    text[:pos]
                    + draw(st.one_of(st.sampled_from(_VOCABULARY), st.text(max_size=8)))
                    + text[pos:]
                )
            elif kind == "delete":
                text = text[:pos] + text[pos + draw(st.integers(1, 40)) :]
            else:
                text = text[:pos]
    return text


def _sum_all(arrays: list[np.ndarray]) -> None:
    """Read every value (NaN and inf are fine: the data is random)."""
    with np.errstate(all="ignore"):
        for array in arrays:
            float(np.sum(array, dtype=np.float64))


def _use_net(net: Net) -> None:
    """What `senet-convert inspect` does with a net, so lazy failures show."""
    for layer in net.layers:
        assert isinstance(layer.name, str) and isinstance(layer.type, str)
        assert all(isinstance(blob, str) for blob in layer.bottoms + layer.tops)
        _sum_all(layer.blobs)
    _ = (net.learnable_parameters, net.multiply_adds, net.outputs, net.weights(), net.to_proto())


def _use_model(model: CaffeModel) -> None:
    for arrays in model.blobs.values():
        _sum_all(arrays)
    _ = model.nbytes


@contextlib.contextmanager
def _no_hang(seconds: float = 20.0) -> Iterator[None]:
    """Raise TimeoutError in the test if the block runs longer than `seconds`."""

    def interrupt(signum: int, frame: object) -> None:
        raise TimeoutError(f"the reader hung for {seconds} s")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _check_text(text: str) -> None:
    with _no_hang():
        try:
            _use_net(build_net(parse_prototxt_text(text, source="fuzz.prototxt")))
        except CaffeError:
            pass


def _check_caffemodel(data: bytes, prototxt: Path | None = None) -> None:
    with _no_hang():
        try:
            model = parse_caffemodel_buffer(data, path="fuzz.caffemodel")
        except CaffeError:
            return
        _use_model(model)
        try:
            _use_net(load_net(prototxt, model))
        except CaffeError:
            pass


def test_seed_prototxt_is_valid() -> None:
    """The seed must build, or the text mutations would only test the parser."""
    net = build_net(parse_prototxt_text(SEED_PROTOTXT))
    assert {layer.type for layer in net.layers} >= {"Axpy", "Scale", "Slice", "Deconvolution"}
    assert "loss" not in [layer.name for layer in net.layers]
    assert net.blob_shapes["prob"] == (1, 3)


@FUZZ
@given(st.text(max_size=400))
def test_random_text(text: str) -> None:
    _check_text(text)


@FUZZ
@given(mutated_text(SEED_PROTOTXT))
def test_mutated_prototxt(text: str) -> None:
    _check_text(text)


@FUZZ
@given(mutated_text(SEED_PROTOTXT, semantic=True))
def test_semantically_mutated_prototxt(text: str) -> None:
    _check_text(text)


@FUZZ
@given(mutated_bytes(SEED_PROTOTXT.encode()))
def test_mutated_prototxt_bytes(data: bytes) -> None:
    _check_text(data.decode("utf-8", "replace"))


@FUZZ
@given(st.binary(max_size=600))
def test_random_caffemodel(data: bytes) -> None:
    _check_caffemodel(data)


@FUZZ
@given(data=st.data())
def test_mutated_caffemodel(tiny_model: CaffePair, data: st.DataObject) -> None:
    seed = tiny_model.caffemodel.read_bytes()
    _check_caffemodel(data.draw(mutated_bytes(seed)))


@FUZZ
@given(data=st.data())
def test_mutated_caffemodel_with_prototxt(tiny_model: CaffePair, data: st.DataObject) -> None:
    seed = tiny_model.caffemodel.read_bytes()
    _check_caffemodel(data.draw(mutated_bytes(seed)), tiny_model.prototxt)


@FUZZ
@given(data=st.data())
def test_mutated_v1_caffemodel(v1_model: tuple[Path, dict], data: st.DataObject) -> None:
    seed = v1_model[0].read_bytes()
    _check_caffemodel(data.draw(mutated_bytes(seed)))
