"""PyTorch -> ONNX for converted nets: dynamic batch, Caffe blob names, checked.

The TorchScript-based exporter is the default: on a SE-ResNet-50 it takes ~5 s
where the dynamo exporter takes ~60 s on two CPU cores, and both produce the same
numbers for these graphs. `exporter="dynamo"` selects the newer one.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import onnx
import torch
from torch import nn

from prototxt import ConversionError, InputError
from prototxt.atomic import atomic_path

from .graph import require_traceable
from .selfcheck import agreement_bound, float32_error, relative_difference

if TYPE_CHECKING:
    import onnxruntime

MIN_OPSET = 17
# The newest opset both the installed onnx and torch's default (TorchScript) exporter support.
MAX_OPSET = min(
    onnx.defs.onnx_opset_version(),
    getattr(torch.onnx._constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", MIN_OPSET),
)


def check_opset(opset: int) -> None:
    """One-line InputError for an opset outside MIN_OPSET..MAX_OPSET."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise InputError(
            f"--opset {opset}: supported are {MIN_OPSET}..{MAX_OPSET} "
            f"(onnx {onnx.__version__}, torch {torch.__version__.split('+')[0]})"
        )


# An output dimension as ONNX declares it: a size, a symbol ("batch"), or None (unknown).
Dim = int | str | None


def _shapes(output: torch.Tensor | tuple[torch.Tensor, ...]) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in (output if isinstance(output, tuple) else (output,))]


@torch.no_grad()
def _output_dims(module: nn.Module | torch.export.ExportedProgram, example: torch.Tensor) -> list[list[Dim]]:
    """Each output's shape as the ONNX file must declare it, found by running the net.

    torch's exporter declares what its own shape inference guesses, which is wrong where
    Caffe's rounding differs from torch's (a ceil pooling window dropped in the padding)
    and where shapes are computed on the fly (CaffePool2d's explicit padding). So the net
    runs on the example's batch n and on n + 1: a size that does not change is declared as
    is, one that is n then n + 1 is "batch", any other is left unknown. A net that runs
    only its example's batch declares that batch. A one-line ConversionError when `example`
    does not fit the net at all.
    """
    runnable = module.module() if isinstance(module, torch.export.ExportedProgram) else module
    try:
        first = _shapes(runnable(example))
    except (RuntimeError, AssertionError, ValueError, IndexError) as exc:  # IndexError: .pt2 guards
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(
            f"an example input of shape {tuple(example.shape)} does not fit the net ({reason})"
        ) from exc
    batch = example.shape[0]
    try:
        second = _shapes(runnable(torch.cat([example, example[:1]])))
    except (RuntimeError, AssertionError, ValueError, IndexError):
        return [list(shape) for shape in first]
    return [
        [a if a == b else "batch" if (a, b) == (batch, batch + 1) else None for a, b in zip(one, two)]
        for one, two in zip(first, second)
    ]


def _declare_outputs(model: onnx.ModelProto, dims: list[list[Dim]]) -> None:
    """Replace the exporter's declared output shapes by `dims`; drop its inferred intermediate
    shapes, which share the same guesses (they are optional in ONNX)."""
    del model.graph.value_info[:]
    for output, shape in zip(model.graph.output, dims):
        declared = output.type.tensor_type.shape
        del declared.dim[:]
        for size in shape:
            dim = declared.dim.add()
            if isinstance(size, int):
                dim.dim_value = size
            elif size is not None:
                dim.dim_param = size


def export_onnx(
    module: nn.Module | torch.export.ExportedProgram,
    path: str | os.PathLike[str],
    example: torch.Tensor,
    *,
    input_name: str = "data",
    output_names: Sequence[str] | None = None,
    opset: int = MIN_OPSET,
    fp16: bool = False,
    exporter: Literal["torchscript", "dynamo"] = "torchscript",
    metadata: Mapping[str, str] | None = None,
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Export `module` (in eval mode) to `path` atomically, with a dynamic batch axis.

    `output_names` defaults to the module's `caffe_outputs` (Caffe blob names).
    With `fp16`, weights and activations are float16 (input and outputs too).
    An ExportedProgram (a loaded `.pt2`) always goes through the dynamo exporter.
    `metadata` is stored as the model's metadata_props (what the input and outputs mean).
    `check` runs on the finished file before it is moved into place; when it raises,
    nothing is written.
    """
    if isinstance(module, torch.export.ExportedProgram):
        if fp16:
            raise ConversionError("--fp16 needs a .safetensors conversion, not a .pt2 program")
        exporter = "dynamo"
    check_opset(opset)
    names = list(output_names or getattr(module, "caffe_outputs", None) or ["output"])
    if not isinstance(module, torch.export.ExportedProgram):
        require_traceable(module, "ONNX")
    dims = _output_dims(module, example)
    halved = module if fp16 and isinstance(module, nn.Module) else None
    if halved is not None:
        halved.half()
        example = example.half()
    target = Path(path)
    try:
        with atomic_path(target) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            # The two exporters name dynamic batch sizes differently; an ExportedProgram has its own.
            options: dict[str, Any] = (
                {
                    "dynamo": True,
                    "dynamic_shapes": None
                    if isinstance(module, torch.export.ExportedProgram)
                    else {input_name: {0: torch.export.Dim("batch")}},
                    "external_data": False,
                    "verbose": False,
                }
                if exporter == "dynamo"
                else {"dynamo": False, "dynamic_axes": {name: {0: "batch"} for name in [input_name, *names]}}
            )
            torch.onnx.export(
                module,
                (example,),
                tmp,
                input_names=[input_name],
                output_names=names,
                opset_version=opset,
                **options,
            )
            model = onnx.load(tmp)
            _declare_outputs(model, dims)
            if metadata:
                onnx.helper.set_model_props(model, dict(metadata))
            onnx.save(model, tmp)
            onnx.checker.check_model(model, full_check=True)
            if check is not None:
                if halved is not None:
                    halved.float()
                check(Path(tmp))
    finally:
        if halved is not None:
            halved.float()
    return target


def onnx_session(path: str | os.PathLike[str], device: str | None = None) -> onnxruntime.InferenceSession:
    """An ONNX Runtime session on CUDA when available (or asked), else on the CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    providers: list[str | tuple[str, dict[str, int]]] = ["CPUExecutionProvider"]
    if device != "cpu" and "CUDAExecutionProvider" in available:
        # TF32 off: sessions here check agreement, and TF32 convolutions would break its bounds.
        providers.insert(0, ("CUDAExecutionProvider", {"use_tf32": 0}))
    elif device == "cuda":
        raise RuntimeError(
            "CUDA requested but onnxruntime has no CUDA execution provider (install senet-repro[gpu])"
        )
    return ort.InferenceSession(str(path), providers=providers)


@torch.no_grad()
def compare_onnx(
    path: str | os.PathLike[str],
    module: nn.Module | torch.export.ExportedProgram,
    inputs: torch.Tensor,
    device: str | None = None,
) -> float:
    """Max abs difference between ONNX Runtime and `module` on `inputs`, over all outputs."""
    if isinstance(module, torch.export.ExportedProgram):
        module = module.module()
    session = onnx_session(path, device)
    feed = {
        session.get_inputs()[0].name: inputs.numpy().astype(
            np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32
        )
    }
    got = session.run(None, feed)
    expected = module(inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    return max(float(np.abs(g.astype(np.float64) - e.double().numpy()).max()) for g, e in zip(got, expected))


@dataclass(frozen=True)
class OnnxCheck:
    """ONNX Runtime vs PyTorch on the same batch, relative to the outputs' scale (float64)."""

    batch: int
    scale: float
    difference: float  # max |ONNX Runtime - PyTorch float32| / scale; inf when either is not finite
    float32_error: float  # PyTorch's own float32 vs float64 error / scale
    float16: bool

    @property
    def bound(self) -> float:
        return agreement_bound(self.float32_error, self.float16)

    @property
    def passed(self) -> bool:
        return self.difference <= self.bound

    def summary(self) -> str:
        return (
            f"ONNX Runtime{' (float16)' if self.float16 else ''} vs PyTorch on a batch of {self.batch}: "
            f"max abs difference {self.difference:.2e} relative to the outputs' scale {self.scale:.4g} "
            f"(bound {self.bound:.1e}; PyTorch float32 vs float64 {self.float32_error:.1e}): "
            f"{'ok' if self.passed else 'FAILED'}"
        )


@torch.no_grad()
def check_onnx(
    path: str | os.PathLike[str],
    module: nn.Module | torch.export.ExportedProgram,
    inputs: torch.Tensor,
    float16: bool = False,
    device: str | None = None,
) -> OnnxCheck:
    """Run ONNX Runtime and `module` on `inputs`; the bound comes from the module's float32 error."""
    runnable = module.module() if isinstance(module, torch.export.ExportedProgram) else module
    expected, scale, error = float32_error(runnable, inputs)
    session = onnx_session(path, device)
    feed = {session.get_inputs()[0].name: inputs.numpy().astype(np.float16 if float16 else np.float32)}
    got = np.concatenate([out.reshape(-1) for out in session.run(None, feed)])
    return OnnxCheck(inputs.shape[0], scale, relative_difference(got, expected, scale), error, float16)
