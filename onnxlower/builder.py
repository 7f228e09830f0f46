"""What a lowering adds to: nodes, weights (numpy views until written) and unique names."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper

# numpy dtype -> ONNX element type, for the tensors a lowering makes.
ELEMENT_TYPES = {
    np.dtype(np.float32): onnx.TensorProto.FLOAT,
    np.dtype(np.float16): onnx.TensorProto.FLOAT16,
    np.dtype(np.int64): onnx.TensorProto.INT64,
}


def _unique(wanted: str, taken: set[str]) -> str:
    candidate, n = wanted, 1
    while candidate in taken:
        n += 1
        candidate = f"{wanted}#{n}"
    taken.add(candidate)
    return candidate


class Builder:
    """Collects the ONNX nodes and initializers of one lowered net.

    Weights are kept as numpy arrays, views of the caffemodel's memory map where
    the blob already has the model's float type, so nothing is copied before
    `write_onnx` streams them to the file.
    """

    def __init__(self, dtype: type[np.floating]) -> None:
        self.dtype = np.dtype(dtype)
        self.nodes: list[onnx.NodeProto] = []
        self.weights: dict[str, np.ndarray] = {}
        self.tensors: set[str] = set()
        self._node_names: set[str] = set()

    def name(self, wanted: str) -> str:
        """A tensor name not used yet, `wanted` itself when free."""
        return _unique(wanted, self.tensors)

    def weight(self, name: str, array: np.ndarray, shape: Sequence[int] | None = None) -> str:
        """A float initializer holding `array` (in the model's float type), optionally reshaped."""
        data = np.asarray(array, dtype=self.dtype)
        key = self.name(name)
        self.weights[key] = data if shape is None else data.reshape(tuple(shape))
        return key

    def scalar(self, name: str, value: float) -> str:
        return self.weight(name, np.asarray(value, dtype=self.dtype))

    def ints(self, name: str, values: Sequence[int]) -> str:
        """An int64 initializer (shapes, split sizes)."""
        key = self.name(name)
        self.weights[key] = np.asarray(values, dtype=np.int64)
        return key

    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        name: str,
        outputs: Sequence[str] | None = None,
        **attrs: Any,
    ) -> list[str]:
        """Add node `op_type` named `name` (made unique); its outputs are `outputs`, or one tensor
        named like the node. Returns the output names."""
        node_name = _unique(name, self._node_names)
        names = list(outputs) if outputs is not None else [self.name(node_name)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=node_name, **attrs))
        return names
