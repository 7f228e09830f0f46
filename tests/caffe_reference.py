"""BVLC Caffe as the test reference: run it and our converted graph, compare layer by layer.

`../shared/caffe-reference/build.sh` (`make caffe-reference`) builds BVLC Caffe with the
SENet Axpy layer and `reference_forward`, which runs a prototxt + caffemodel on an input
`.npy` in `Net<float>` or `Net<double>` and saves every layer's tops right after that
layer ran. Caffe's source defines what each layer computes, so it is the arbiter.

    agreement = assert_matches_caffe(PROTOTXT_TEXT, input_shape=(1, 3, 9, 9))

Both nets run on the same seeded image-like input. The two bounds, on every layer output
(differences are max |ours - Caffe| over the output, relative to max |Caffe float64|):

* float64: ours in float64 vs Caffe's `Net<double>` within FLOAT64_BOUND (1e-12), widened only
  where Caffe's own float32 error shows the output amplifies round-off (`float64_bound(e)`);
* float32: ours in float32 vs Caffe's `Net<float>` within `float32_bound(e)`, where `e` is
  Caffe's own float32-vs-float64 error on that output.

A failure names the first layer output (in execution order) outside its bound. Without a
built reference the tests skip, saying how to build it; under CI=true they fail instead.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import fx

import onnxlower
from converter import CaffeGraphModule, convert
from converter.calibrate import image_like, random_calibrated_blobs
from prototxt import (
    CaffeError,
    Net,
    attach_weights,
    build_net,
    caffe_pb2,
    load_net,
    parse_prototxt_text,
    write_caffemodel,
    write_prototxt,
)
from tests.conftest import unavailable

REPO_ROOT = Path(__file__).resolve().parent.parent
REFERENCE_HOME = Path(os.environ.get("CAFFE_REFERENCE_HOME", Path.home() / ".cache" / "caffe-reference"))
REFERENCE_BINARY = REFERENCE_HOME / "reference_forward"

# float64 against float64: both sides round only in float64 (unit round-off 1.1e-16); with the
# same arithmetic up to summation order, measured differences are 1e-16..1e-13 of the output's
# scale on nets up to SENet-154. 1e-12 leaves room for deeper nets yet is 1e8 times smaller than
# any float32 effect, so a float32 constant or a wrong formula anywhere cannot pass.
FLOAT64_BOUND = 1e-12

# float32 against float32: |ours - Caffe| <= |ours - exact| + |Caffe - exact|. Caffe float64 stands
# in for exact, so |Caffe - exact| is Caffe's own float32 error e; ours sums in other orders
# (oneDNN/MKL convolution vs Caffe's im2col + OpenBLAS GEMM) and is allowed up to three times
# e. Total: FLOAT32_FACTOR * e. Each side's final rounding of an output (half a float32 ulp of
# the output's scale each, 2**-24) is added, for outputs Caffe happens to compute exactly.
FLOAT32_FACTOR = 8.0
FLOAT32_ROUNDING = 2.0**-23


# Some outputs of deep random-weight nets amplify round-off (Caffe's own float32 error reaches
# 1e-3 on Inception-v3's last blocks, a 1e4-fold amplification of float32's 2^-24). Float64
# round-off is amplified alike, so there each side's float64 error is about e * 2^-29 (the ratio
# of the unit round-offs), taken twice for the scatter of a maximum over one output; the bound
# is FLOAT32_FACTOR times that, as above, and never below FLOAT64_BOUND.
PRECISION_RATIO = 2.0**-29


def float32_bound(caffe_float32_error: float) -> float:
    """The float32 bound for an output on which Caffe's float32 is `caffe_float32_error` off."""
    return FLOAT32_FACTOR * caffe_float32_error + FLOAT32_ROUNDING


def float64_bound(caffe_float32_error: float) -> float:
    """The float64 bound: FLOAT64_BOUND, or more on an output whose float32 error shows amplification."""
    return max(FLOAT64_BOUND, FLOAT32_FACTOR * 2 * PRECISION_RATIO * caffe_float32_error)


def reference_available() -> bool:
    return REFERENCE_BINARY.is_file() and os.access(REFERENCE_BINARY, os.X_OK)


def require_reference() -> None:
    """Skip (fail under CI=true) unless the BVLC Caffe reference is built."""
    if reference_available():
        return
    reason = (
        f"the BVLC Caffe reference is not built ({REFERENCE_BINARY} missing); "
        "build it with `make caffe-reference` (about 6 minutes)"
    )
    unavailable(reason)


class CaffeLacksLayerError(RuntimeError):
    """The net uses a layer type or parameter BVLC Caffe does not have (SSD's PriorBox, say)."""


def caffe_forward(
    prototxt: Path,
    caffemodel: Path,
    x: np.ndarray,
    workdir: Path,
    *,
    double: bool,
    blobs: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Run Caffe on `x`: each layer's tops right after it ran ("L:<layer>:<k>"), or the named
    `blobs` after the whole forward; memory-mapped arrays from `workdir`."""
    outdir = Path(tempfile.mkdtemp(prefix="float64-" if double else "float32-", dir=workdir))
    source = outdir / "input.npy"
    np.save(source, np.ascontiguousarray(x, dtype=np.float32))
    command = [str(REFERENCE_BINARY), "--prototxt", str(prototxt), "--weights", str(caffemodel)]
    command += ["--input", str(source), "--outdir", str(outdir)] + (["--double"] if double else [])
    command += ["--blobs", ",".join(blobs)] if blobs else ["--per-layer"]
    run = subprocess.run(command, capture_output=True, text=True)
    missing = re.search(r"Unknown layer type: (\S+)|has no field named \"(\w+)\"", run.stderr)
    if run.returncode != 0 and missing:
        what = f"layer type {missing.group(1)}" if missing.group(1) else f"field {missing.group(2)}"
        raise CaffeLacksLayerError(f"BVLC Caffe has no {what} (a fork's)")
    if run.returncode != 0:
        raise RuntimeError(
            f"reference_forward failed ({run.returncode}) on {prototxt}:\n{run.stderr[-3000:]}"
        )
    outputs = {}
    for line in (outdir / "manifest.tsv").read_text().splitlines():
        filename, name, _shape = line.split("\t")
        outputs[name] = np.load(outdir / filename, mmap_mode="r")
    return outputs


class _LayerRecorder(fx.Interpreter):
    """Runs a converted graph, handing each Caffe layer's outputs to `sink` as they are computed."""

    def __init__(self, module: CaffeGraphModule, sink: Callable[[str, torch.Tensor], None]) -> None:
        super().__init__(module)
        self.layer_of = {target: layer for layer, target in module.caffe_layer_modules.items()}
        self.sink = sink

    def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
        result = super().call_module(target, args, kwargs)
        layer = self.layer_of.get(target)
        if layer is not None:
            for index, top in enumerate(result if isinstance(result, tuple) else (result,)):
                self.sink(f"L:{layer}:{index}", top)
        return result


@torch.no_grad()
def our_forward(
    net: Net, x: torch.Tensor, dtype: torch.dtype, sink: Callable[[str, torch.Tensor], None]
) -> None:
    """Run `convert(net, dtype=dtype)` on `x`, every layer's outputs to `sink` in execution order."""
    module = convert(net, net.outputs, dtype=dtype)
    _LayerRecorder(module, sink).run(x.to(dtype))


def onnx_forward(net: Net, x: torch.Tensor) -> dict[str, np.ndarray]:
    """The torch-free export of `net` (onnxlower) in ONNX Runtime on `x`: every layer's tops
    ("L:<layer>:<k>"), as the graph holds them right after that layer."""
    # DetectionOutput is refused by onnxlower by design (a data-dependent number of boxes)
    outputs = [top for layer in net.layers if layer.type != "DetectionOutput" for top in layer.tops]
    model = onnxlower.lower(net, list(dict.fromkeys(outputs)))
    computed = {name for node in model.graph.node for name in node.output} | set(net.inputs)
    keys = {
        f"L:{layer}:{index}": tensor
        for layer, tensors in model.layer_tops.items()
        for index, tensor in enumerate(tensors)
        if tensor in computed
    }
    present = {o.name for o in model.graph.output}
    for tensor in dict.fromkeys(keys.values()):
        if tensor not in present and tensor not in net.inputs:
            model.graph.output.append(
                onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None)
            )
    with tempfile.TemporaryDirectory(prefix="onnxlower-") as directory:
        path = onnxlower.write_onnx(model, Path(directory) / "lowered.onnx")[0]
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(names, {next(iter(net.inputs)): x.numpy()})))
    values[next(iter(net.inputs))] = x.numpy()
    return {key: values[tensor] for key, tensor in keys.items()}


def output_scale(reference: np.ndarray) -> float:
    """max |reference| over its finite values: what differences are relative to."""
    finite = np.abs(reference[np.isfinite(reference)])
    return float(np.max(finite, initial=0.0))


def relative_difference(ours: np.ndarray, reference: np.ndarray, scale: float) -> float:
    """max |ours - reference| / scale. Equal values (NaN where both are NaN, as Caffe's AVE
    pooling gives for an empty window) differ by 0, even where the scale is 0."""
    if ours.shape != reference.shape:
        return float("inf")
    ours, reference = ours.astype(np.float64), np.asarray(reference, dtype=np.float64)
    same = (ours == reference) | (np.isnan(ours) & np.isnan(reference))
    difference = float(np.max(np.where(same, 0.0, np.abs(ours - reference)), initial=0.0))
    if difference == 0.0:
        return 0.0
    if np.isnan(difference) or scale == 0:
        return float("inf")
    return difference / scale


@dataclass(frozen=True)
class OutputAgreement:
    """One layer output: ours vs Caffe in float64 and float32, and Caffe's own float32 error."""

    name: str  # "L:<layer>:<top index>"
    float64: float
    float32: float
    caffe_float32: float
    onnx: float | None = None  # the torch-free export (onnxlower) in ONNX Runtime, float32

    @property
    def float32_bound(self) -> float:
        return float32_bound(self.caffe_float32)

    @property
    def float64_bound(self) -> float:
        return float64_bound(self.caffe_float32)

    @property
    def failures(self) -> list[str]:
        found = []
        if not self.float64 <= self.float64_bound:
            found.append(f"float64 {self.float64:.3g} > {self.float64_bound:.3g}")
        if not self.float32 <= self.float32_bound:
            found.append(
                f"float32 {self.float32:.3g} > {self.float32_bound:.3g} "
                f"({FLOAT32_FACTOR:g} x Caffe's own float32 error {self.caffe_float32:.3g} + 2^-23)"
            )
        if self.onnx is not None and not self.onnx <= self.float32_bound:
            found.append(f"ONNX Runtime (onnxlower) {self.onnx:.3g} > {self.float32_bound:.3g}")
        return found


@dataclass
class Agreement:
    """Every layer output of a net, in execution order."""

    net: str
    input_shape: tuple[int, ...]
    outputs: list[OutputAgreement] = field(default_factory=list)

    @property
    def worst_float64(self) -> float:
        return max(row.float64 for row in self.outputs)

    @property
    def worst_float32_ratio(self) -> float:
        """max over outputs of (ours vs Caffe, float32) / (Caffe float32 vs float64), where the latter > 0."""
        return max(
            (row.float32 / row.caffe_float32 for row in self.outputs if row.caffe_float32 > 0), default=0.0
        )

    def first_failure(self) -> str | None:
        for row in self.outputs:
            if row.failures:
                return f"{self.net}: first diverging layer output {row.name}: {'; '.join(row.failures)}"
        return None


def run_caffe(
    net: Net, caffemodel: Path, x: torch.Tensor, workdir: Path
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Caffe's `Net<double>` and `Net<float>` outputs of every layer on `x` (see `caffe_forward`).

    `net` carries the weights; Caffe runs its deploy form (`net.to_proto()`) with `caffemodel`.
    """
    prototxt = workdir / "deploy.prototxt"
    write_prototxt(net.to_proto(), prototxt)
    exact = caffe_forward(prototxt, caffemodel, x.numpy(), workdir, double=True)
    return exact, caffe_forward(prototxt, caffemodel, x.numpy(), workdir, double=False)


def compare_with_caffe(net: Net, caffemodel: Path, x: torch.Tensor, workdir: Path) -> Agreement:
    """Ours (float64, float32) vs Caffe (`Net<double>`, `Net<float>`) on `x`, every layer output."""
    return compare_outputs(net, x, *run_caffe(net, caffemodel, x, workdir))


def compare_outputs(
    net: Net, x: torch.Tensor, caffe64: Mapping[str, np.ndarray], caffe32: Mapping[str, np.ndarray]
) -> Agreement:
    """Ours (float64, float32) on `x` vs Caffe's outputs of every layer (from `run_caffe`)."""
    ours64: dict[str, float] = {}
    scales: dict[str, float] = {}

    def check_float64(name: str, value: torch.Tensor) -> None:
        if name not in caffe64:
            raise AssertionError(f"{net.name}: Caffe saved no output {name} (it ran {len(caffe64)} tops)")
        reference = np.asarray(caffe64[name])
        scales[name] = output_scale(reference)
        ours64[name] = relative_difference(value.numpy(), reference, scales[name])

    our_forward(net, x, torch.float64, check_float64)
    agreement = Agreement(net.name, tuple(x.shape))

    lowered = onnx_forward(net, x)

    def check_float32(name: str, value: torch.Tensor) -> None:
        reference, exact = np.asarray(caffe32[name]), np.asarray(caffe64[name])
        agreement.outputs.append(
            OutputAgreement(
                name,
                ours64[name],
                relative_difference(value.numpy(), reference, scales[name]),
                relative_difference(reference, exact, scales[name]),
                # absent: a layer only whose shape is used (Crop's reference) is not computed in ONNX
                relative_difference(lowered[name], reference, scales[name]) if name in lowered else None,
            )
        )

    our_forward(net, x, torch.float32, check_float32)
    if not agreement.outputs:
        raise AssertionError(f"{net.name}: no layer output was compared")
    return agreement


def single_input_net(input_shape: Sequence[int], layers: str) -> str:
    """Prototxt text: an Input layer "data" of `input_shape`, then `layers`."""
    dims = " ".join(f"dim: {d}" for d in input_shape)
    return (
        f'name: "case" layer {{ name: "data" type: "Input" top: "data" '
        f"input_param {{ shape {{ {dims} }} }} }}\n{layers}"
    )


def deploy_net(proto: caffe_pb2.NetParameter, input_shape: Sequence[int] | None = None) -> Net:
    """Our deploy form of `proto`, its only input reshaped to `input_shape` when given."""
    net = build_net(proto)
    if len(net.inputs) != 1:
        raise ValueError(f"the reference harness runs single-input nets; {net.name} has {list(net.inputs)}")
    if input_shape is not None:
        net = build_net(proto, input_shape={next(iter(net.inputs)): tuple(input_shape)})
    return net


def small_deploy_net(proto: caffe_pb2.NetParameter, divisors: Sequence[int] = (4, 2)) -> Net:
    """`deploy_net` at batch 1 and the smallest of H/d x W/d (d in `divisors`) the net accepts,
    else at its own size: every layer is still exercised, in a fraction of the time."""
    native = deploy_net(proto)
    shape = next(iter(native.inputs.values()))
    for divisor in divisors:
        small = (1, *shape[1:-2], *(max(size // divisor, 1) for size in shape[-2:]))
        try:
            return deploy_net(proto, small)
        except CaffeError:
            continue
    return deploy_net(proto, (1, *shape[1:]))


def random_weights_agreement(
    net: Net, blobs: Mapping[str, Sequence[np.ndarray]] | None = None, seed: int = 0
) -> Agreement:
    """`compare_with_caffe` for `net` with `blobs`, by default seeded random calibrated ones."""
    if blobs is None:
        blobs = random_calibrated_blobs(net, seed)
    attach_weights(net, blobs)
    with tempfile.TemporaryDirectory(prefix="caffe-reference-") as directory:
        workdir = Path(directory)
        caffemodel = workdir / "weights.caffemodel"
        write_caffemodel(caffemodel, net.to_proto(), blobs)
        return compare_with_caffe(net, caffemodel, image_like(next(iter(net.inputs.values())), seed), workdir)


def pair_agreement(prototxt: Path, caffemodel: Path) -> Agreement:
    """`compare_with_caffe` for a prototxt + caffemodel on disk, at the net's input shape."""
    net = load_net(prototxt, caffemodel)
    with tempfile.TemporaryDirectory(prefix="caffe-reference-") as directory:
        return compare_with_caffe(
            net, caffemodel, image_like(next(iter(net.inputs.values()))), Path(directory)
        )


def assert_matches_caffe(
    prototxt: str | caffe_pb2.NetParameter,
    blobs: Mapping[str, Sequence[np.ndarray]] | None = None,
    input_shape: Sequence[int] | None = None,
    *,
    seed: int = 0,
) -> Agreement:
    """Fail unless our graph agrees with BVLC Caffe on every layer output, in float64 and float32.

    `prototxt` is text or a NetParameter; `blobs` (layer name -> arrays) default to seeded
    random weights with BatchNorm calibrated on image-like inputs; `input_shape` overrides the
    net's input shape. The input is `image_like(input_shape, seed)`.
    """
    require_reference()
    proto = parse_prototxt_text(prototxt) if isinstance(prototxt, str) else prototxt
    agreement = random_weights_agreement(deploy_net(proto, input_shape), blobs, seed)
    failure = agreement.first_failure()
    if failure:
        pytest.fail(failure, pytrace=False)
    return agreement


@dataclass(frozen=True)
class LogitsAgreement:
    """A SENet's logits from the user-facing paths vs Caffe's, relative to Caffe's float64 logits."""

    caffe_float32: float  # Caffe's own float32 error
    float64: dict[str, float]  # path -> difference from Net<double>
    float32: dict[str, float]  # path -> difference from Net<float>

    def failures(self) -> list[str]:
        found = [
            f"{path} float64 {value:.3g} > {float64_bound(self.caffe_float32):.3g}"
            for path, value in self.float64.items()
            if not value <= float64_bound(self.caffe_float32)
        ]
        return found + [
            f"{path} float32 {value:.3g} > {float32_bound(self.caffe_float32):.3g}"
            for path, value in self.float32.items()
            if not value <= float32_bound(self.caffe_float32)
        ]


@torch.no_grad()
def senet_logits_agreement(
    net: Net, x: torch.Tensor, exact: np.ndarray, single: np.ndarray, workdir: Path
) -> LogitsAgreement:
    """The clean SE model (converted checkpoint loaded by `get_model`; float64 from
    `caffe_to_state_dict(dtype=float64)`) and both ONNX exports (generic graph, clean model)
    in ONNX Runtime on `x`, against Caffe's logits in float64 (`exact`) and float32 (`single`)."""
    from converter.onnx_export import export_onnx, onnx_session
    from senet_repro.conversion import LOGITS_BLOB, convert_senet
    from senet_repro.models import caffe_to_state_dict, get_model
    from senet_repro.models.checkpoint import save_state_dict

    scale = output_scale(exact)
    conversion = convert_senet(net, check=False)
    checkpoint = save_state_dict(conversion.state_dict, workdir / "clean.safetensors")
    clean = get_model(conversion.model, checkpoint=checkpoint)
    clean64 = get_model(conversion.model).double().eval()
    clean64.load_state_dict(caffe_to_state_dict(conversion.model, net.weights(), torch.float64))
    float32 = {"clean model": relative_difference(clean(x).numpy(), single, scale)}
    for label, module in (("graph", convert(net, [LOGITS_BLOB])), ("clean", clean)):
        path = export_onnx(module, workdir / f"{label}.onnx", x, output_names=[LOGITS_BLOB])
        session = onnx_session(path, "cpu")
        logits = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        float32[f"ONNX Runtime, {label}"] = relative_difference(logits, single, scale)
    return LogitsAgreement(
        relative_difference(single, exact, scale),
        {"clean model": relative_difference(clean64(x.double()).numpy(), exact, scale)},
        float32,
    )


def senet_agreement(prototxt: Path, caffemodel: Path, workdir: Path) -> tuple[Agreement, LogitsAgreement]:
    """A released SENet prototxt with `caffemodel`: every layer output of the generic graph, and
    the logits of the clean model and the ONNX exports, against one pair of Caffe runs."""
    from senet_repro.conversion import LOGITS_BLOB

    net = load_net(prototxt, caffemodel)
    x = image_like(next(iter(net.inputs.values())))
    caffe64, caffe32 = run_caffe(net, caffemodel, x, workdir)
    logits = f"L:{net.layer(LOGITS_BLOB).name}:0"
    return compare_outputs(net, x, caffe64, caffe32), senet_logits_agreement(
        net, x, np.asarray(caffe64[logits]), np.asarray(caffe32[logits]), workdir
    )
