"""Lower a `prototxt.Net` to an ONNX graph: names from Caffe, dynamic batch, declared shapes.

Caffe writes blobs in place (conv -> BatchNorm -> Scale -> ReLU all write blob
"conv1"); ONNX tensors are written once. Each layer's result is named after the
layer, and the last value of a blob gets the blob's own name, so the graph's
outputs (and every tensor a user may look for) carry the Caffe names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper
from tqdm import tqdm

from prototxt import ConversionError, Layer, Net, NetDefinitionError
from prototxt.net import check_convertible
from prototxt.shapes import Shape

from .builder import ELEMENT_TYPES, Builder
from .registry import LOWERINGS, check_supported

MIN_OPSET = 17
MAX_OPSET = onnx.defs.onnx_opset_version()  # the newest the installed onnx knows
BATCH = "batch"  # the symbolic name of the dynamic batch axis


@dataclass
class LoweredModel:
    """An ONNX graph without its initializers, and the weights (numpy) that go with it."""

    graph: onnx.GraphProto
    weights: dict[str, np.ndarray]
    opset: int
    layer_tops: dict[str, list[str]]  # Caffe layer -> the tensors holding its tops right after it ran

    @property
    def nbytes(self) -> int:
        return sum(array.nbytes for array in self.weights.values())

    def declared_shapes(self) -> dict[str, list[int | str]]:
        """Tensor name -> declared shape (the batch axis as 'batch'), inputs and outputs included."""
        infos = [*self.graph.input, *self.graph.value_info, *self.graph.output]
        return {
            info.name: [d.dim_param or d.dim_value for d in info.type.tensor_type.shape.dim] for info in infos
        }


def _value_info(name: str, elem_type: int, shape: Shape, batched: bool) -> onnx.ValueInfoProto:
    dims: list[int | str] = [BATCH, *shape[1:]] if batched and shape else list(shape)
    return helper.make_tensor_value_info(name, elem_type, dims)


def _prune(graph_nodes: list[onnx.NodeProto], outputs: Sequence[str]) -> list[onnx.NodeProto]:
    """The nodes the outputs depend on, in order (layers past the wanted blobs are dropped)."""
    needed, kept = set(outputs), []
    for node in reversed(graph_nodes):
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(node.input)
    return kept[::-1]


def _needed(layers: list[Layer], wanted: Sequence[str]) -> list[Layer]:
    """The layers the wanted blobs depend on (an in-place writer needs the writers before it)."""
    blobs, kept = set(wanted), []
    for layer in reversed(layers):
        if blobs.intersection(layer.tops):
            kept.append(layer)
            blobs.difference_update(layer.tops)
            blobs.update(layer.bottoms)
    return kept[::-1]


def lower(
    net: Net,
    outputs: Sequence[str] | None = None,
    *,
    fp16: bool = False,
    opset: int = MIN_OPSET,
    require_weights: bool = True,
    progress: bool = False,
) -> LoweredModel:
    """Lower `net` to ONNX computing the blobs in `outputs` (default: the net's final blobs).

    The graph's inputs are the net's input blobs and its outputs the wanted blobs,
    by name, with a dynamic batch axis; every layer result is declared with
    Caffe's shape. With `fp16` weights, inputs and outputs are float16.
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConversionError(
            f"opset {opset}: supported are {MIN_OPSET}..{MAX_OPSET} (onnx {onnx.__version__})"
        )
    wanted = check_convertible(net, outputs, require_weights)
    layers = _needed([layer for layer in net.layers if layer.type != "Input"], wanted)
    check_supported(layers)
    b = Builder(np.float16 if fp16 else np.float32)
    elem_type = ELEMENT_TYPES[b.dtype]
    b.tensors.update(net.blob_shapes)  # every blob's last value is named after the blob
    last_writer = {top: index for index, layer in enumerate(layers) for top in layer.tops}
    values = {blob: blob for blob in net.inputs}
    batched = set(net.inputs)
    declared: list[onnx.ValueInfoProto] = []
    layer_tops: dict[str, list[str]] = {}
    for index, layer in enumerate(
        tqdm(layers, desc="lowering", unit="layer", disable=not progress, leave=False)
    ):
        bottoms = [values[blob] for blob in layer.bottoms]
        names = [
            top
            if last_writer[top] == index and top not in net.inputs
            else b.name(layer.name if len(layer.tops) == 1 else f"{layer.name}/{top}")
            for top in layer.tops
        ]
        results = LOWERINGS[layer.type](layer, b, bottoms, names)
        layer_tops[layer.name] = results
        keeps_batch = any(
            tensor in batched and shape[:1] == layer.top_shapes[0][:1]
            for tensor, shape in zip(bottoms, layer.bottom_shapes)
        )
        for top, result, shape in zip(layer.tops, results, layer.top_shapes):
            values[top] = result
            if result in names:
                declared.append(_value_info(result, elem_type, shape, keeps_batch))
                if keeps_batch:
                    batched.add(result)
    for blob in wanted:
        if blob in net.inputs and values[blob] != blob:
            raise NetDefinitionError(
                f"blob '{blob}' is an input and written in place; ONNX cannot give an output an "
                "input's name: ask for a blob that is not an input"
            )
        if values[blob] != blob:  # a pass-through layer (Split, Dropout) had the last word
            b.op("Identity", [values[blob]], f"{blob}/output", outputs=[blob])
            if values[blob] in batched:
                batched.add(blob)
    nodes = _prune(b.nodes, wanted)
    used = {name for node in nodes for name in node.input}
    infos = {info.name: info for info in declared}
    graph = helper.make_graph(
        nodes,
        net.name or "caffe",
        [_value_info(blob, elem_type, shape, True) for blob, shape in net.inputs.items()],
        [
            _value_info(blob, elem_type, net.blob_shapes[blob], blob in batched or values[blob] in batched)
            for blob in wanted
        ],
        value_info=[info for name, info in infos.items() if name in used and name not in wanted],
    )
    weights = {name: array for name, array in b.weights.items() if name in used}
    return LoweredModel(graph, weights, opset, layer_tops)
