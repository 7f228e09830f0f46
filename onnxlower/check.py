"""Run a written ONNX file in ONNX Runtime once: it loads, takes a batch, gives Caffe's shapes.

No torch here: the numbers themselves are compared with PyTorch and BVLC Caffe in
the tests; this check catches a file that a runtime refuses or that computes
wrong shapes or non-finite values, before anyone deploys it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from prototxt import ConversionError
from prototxt.random_weights import image_like

from .graph import BATCH


@dataclass
class OrtCheck:
    batch: int
    outputs: dict[str, tuple[int, ...]]
    provider: str

    def summary(self) -> str:
        shapes = ", ".join(f"{name} {'x'.join(map(str, shape))}" for name, shape in self.outputs.items())
        return f"ONNX Runtime ({self.provider}) ran a batch of {self.batch}: {shapes}, all finite"


def check_onnxruntime(
    path: str | os.PathLike[str],
    declared: dict[str, list[int | str]],
    batch: int = 1,
    seed: int = 0,
    *,
    label: str | os.PathLike[str] | None = None,
) -> OrtCheck:
    """Run `path` on `batch` seeded image-like inputs; ValueError unless every output has its
    `declared` (Caffe) shape (`LoweredModel.declared_shapes()`), ConversionError unless its
    values are finite. Messages name `label` (the final output when `path` is its temporary file)."""
    where = label or path
    import onnxruntime as ort

    options = ort.SessionOptions()
    # One run: an arena only adds memory, and graph optimisations (weights folded into copies)
    # took SENet-154's session 2-5x the time and twice the memory of the run itself.
    options.enable_cpu_mem_arena = False
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    dtype = np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32
    shapes = {name: tuple(batch if d == BATCH else int(d) for d in dims) for name, dims in declared.items()}
    feed = {i.name: image_like(shapes[i.name], seed).astype(dtype) for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    outputs = {}
    for name, value in zip(names, session.run(names, feed)):
        expected = shapes[name]
        if value.shape != expected:
            raise ValueError(
                f"{where}: ONNX Runtime gives '{name}' shape {value.shape}, Caffe's is {expected}"
            )
        if not np.isfinite(value).all():
            raise ConversionError(f"{where}: ONNX Runtime gives non-finite values in '{name}'")
        outputs[name] = expected
    return OrtCheck(batch, outputs, session.get_providers()[0])
