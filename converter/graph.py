"""Build a torch.fx GraphModule from a `prototxt.Net`.

Submodules and nodes are named after the Caffe layers, and Caffe's in-place tops
(conv -> BatchNorm -> Scale -> ReLU all writing blob "conv1") become plain data
flow: each layer's node is the new value of the blob, so the generated code reads
like the prototxt, one line per layer.
"""

from __future__ import annotations

import keyword
import operator
import re
from collections.abc import Sequence

import torch
from torch import fx, nn
from tqdm import tqdm

from prototxt import ConversionError, Net
from prototxt.net import check_convertible

from . import ops  # noqa: F401  (registers the converters)
from .ops._blobs import DTYPE
from .registry import CONVERTERS, check_supported


def sanitize(name: str, taken: set[str]) -> str:
    """A unique Python identifier for a Caffe layer or blob name."""
    ident = re.sub(r"\W", "_", name).strip("_") or "layer"
    if ident[0].isdigit() or keyword.iskeyword(ident):
        ident = f"l_{ident}"
    candidate, n = ident, 1
    while candidate in taken:
        n += 1
        candidate = f"{ident}_{n}"
    taken.add(candidate)
    return candidate


class CaffeGraphModule(fx.GraphModule):
    """A converted net: a GraphModule that also knows the Caffe names it computes.

    `caffe_fold` says what `converter.fold.fold_batchnorm` has done to it.
    """

    caffe_inputs: list[str]
    caffe_outputs: list[str]
    caffe_layer_modules: dict[str, str]
    caffe_fold: str = "none"


def convert(
    net: Net,
    outputs: Sequence[str] | None = None,
    *,
    require_weights: bool = True,
    progress: bool = False,
    dtype: torch.dtype = torch.float32,
) -> CaffeGraphModule:
    """Convert `net` to an eval-mode GraphModule computing the blobs in `outputs`.

    `dtype` is the precision of the parameters and of the constants derived from
    the blobs, as in Caffe's `Net<float>` / `Net<double>`: torch.float64 gives a
    net whose only round-off is float64's (how exactness is tested).

    `outputs` defaults to the net's final blobs; any blob can be asked for (its
    value after the last layer that writes it, as Caffe leaves it). One output
    gives a tensor, several a tuple in the order asked. The module carries
    `caffe_inputs` and `caffe_outputs` (blob names) for exporters and
    `caffe_layer_modules` (Caffe layer name -> submodule name).
    """
    layers = [layer for layer in net.layers if layer.type != "Input"]
    check_supported(layers)
    wanted = check_convertible(net, outputs, require_weights)

    root = nn.Module()
    graph = fx.Graph()
    taken: set[str] = set()
    values: dict[str, fx.Node] = {}
    layer_modules: dict[str, str] = {}
    for blob in net.inputs:
        values[blob] = graph.placeholder(sanitize(blob, taken))
    token = DTYPE.set(dtype)
    try:
        built = [
            (layer, CONVERTERS[layer.type](layer))
            for layer in tqdm(layers, desc="converting", unit="layer", disable=not progress, leave=False)
        ]
    finally:
        DTYPE.reset(token)
    for layer, module in built:
        args = tuple(values[b] for b in layer.bottoms)
        if module is None:
            for top, source in zip(layer.tops, args * len(layer.tops)):
                values[top] = source
            continue
        target = sanitize(layer.name, taken)
        root.add_module(target, module)
        layer_modules[layer.name] = target
        node = graph.call_module(target, args)
        if len(layer.tops) == 1:
            values[layer.tops[0]] = node
        else:
            for index, top in enumerate(layer.tops):
                values[top] = graph.call_function(operator.getitem, (node, index))
    results = [values[blob] for blob in wanted]
    graph.output(results[0] if len(results) == 1 else tuple(results))
    gm = CaffeGraphModule(root, graph, class_name=sanitize(net.name or "CaffeNet", set()))
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    gm.caffe_inputs = list(net.inputs)
    gm.caffe_outputs = wanted
    gm.caffe_layer_modules = {name: target for name, target in layer_modules.items() if hasattr(gm, target)}
    gm.to(dtype)
    gm.eval()
    for parameter in gm.parameters():
        parameter.requires_grad_(False)
    return gm


def require_traceable(module: nn.Module, target: str) -> None:
    """One-line ConversionError when `module` holds a layer whose output size depends on the data.

    Tracing exporters (ONNX, torch.export) record the shapes of one run, so such a
    layer (SSD's DetectionOutput, marked `data_dependent_shape`) cannot go into them exactly.
    """
    layers = {target: name for name, target in getattr(module, "caffe_layer_modules", {}).items()}
    for name, submodule in module.named_modules():
        if getattr(submodule, "data_dependent_shape", False):
            heads = ",".join(getattr(submodule, "heads", ()))
            raise ConversionError(
                f"layer '{layers.get(name, name)}' ({type(submodule).__name__}) cannot go into {target}: "
                "it keeps a data-dependent number of boxes (NMS, with top_k applied before suppression); "
                f"export its inputs instead (--outputs {heads}) and run it in PyTorch, "
                "or convert to .safetensors"
            )
