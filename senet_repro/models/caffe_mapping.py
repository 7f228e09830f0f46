"""Caffe blobs <-> our state_dicts, and telling which of the seven networks a Caffe net is.

Blob semantics (Caffe order within each layer):

* Convolution: weight (out, in / group, kh, kw), then bias if `bias_term`.
* BatchNorm: mean, variance, scale factor (one element). Caffe divides the
  stored statistics by the factor at inference, computed in the net's dtype as
  `mean * (sf == 0 ? 0 : 1 / sf)`; we do the same arithmetic, so a factor of 0
  gives zero statistics exactly as in Caffe. Written back with factor 1.
* Scale (after BatchNorm): gamma, beta -> BatchNorm2d weight, bias.
* InnerProduct: weight (out, in), bias -> Linear weight, bias.

Blobs in Caffe's legacy 4-D form (e.g. a bias stored as 1 x 1 x 1 x C) are
accepted when they differ from the expected shape only by size-1 axes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from prototxt import InputError

from .caffe_names import BATCHNORM, CAFFE_LAYERS, CONVOLUTION, INNER_PRODUCT, LayerMap
from .registry import meta_model, resolve_name

_SHOWN = 20  # items of each problem list spelled out in an error message


class CaffeMappingError(InputError):
    """Caffe blobs and a model's state_dict do not correspond one to one.

    The full lists are kept as attributes; the message shows the first few of each.
    """

    def __init__(
        self,
        model: str,
        *,
        unused_layers: Sequence[str] = (),
        missing_keys: Sequence[str] = (),
        mismatched: Sequence[str] = (),
        unexpected_keys: Sequence[str] = (),
    ) -> None:
        self.model = model
        self.unused_layers = list(unused_layers)
        self.missing_keys = list(missing_keys)
        self.mismatched = list(mismatched)
        self.unexpected_keys = list(unexpected_keys)
        parts = [f"Caffe weights and the {model} state_dict do not correspond:"]
        for title, items in (
            ("Caffe layers with blobs that land nowhere", self.unused_layers),
            ("state_dict keys that got nothing", self.missing_keys),
            ("blobs that do not fit", self.mismatched),
            ("state_dict keys with no Caffe layer", self.unexpected_keys),
        ):
            if items:
                shown = ", ".join(items[:_SHOWN])
                more = f", ... ({len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
                parts.append(f"  {title} ({len(items)}): {shown}{more}")
        super().__init__("\n".join(parts))


def caffe_layer_map(model_name: str) -> LayerMap:
    """Caffe layer name -> (Caffe type, module path) for every layer with blobs."""
    return CAFFE_LAYERS[resolve_name(model_name)]


@functools.cache
def _meta_model(model: str) -> nn.Module:
    """The network on the meta device: shapes and hyper-parameters, no memory."""
    return meta_model(model)


@functools.cache
def _shapes(model: str) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in _meta_model(model).state_dict().items()}


def _keys(kind: str, module: str, shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """state_dict keys fed by a layer's blobs, in blob order (BatchNorm: not its scale factor)."""
    if kind == BATCHNORM:
        return [f"{module}.running_mean", f"{module}.running_var"]
    keys = [f"{module}.weight"]
    if f"{module}.bias" in shapes:
        keys.append(f"{module}.bias")
    return keys


def _squeezed(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(size) for size in shape if size != 1)


def _fit(
    array: np.ndarray, shape: tuple[int, ...], dtype: type[np.floating] = np.float32
) -> np.ndarray | None:
    """`array` as `dtype` of `shape`, or None if it is a different shape."""
    array = np.asarray(array)
    if array.shape != shape:
        if array.size != math.prod(shape) or _squeezed(array.shape) != _squeezed(shape):
            return None
        array = array.reshape(shape)
    return np.array(array, dtype=dtype)  # a copy: the caller may hold read-only views


def caffe_to_state_dict(
    model_name: str, blobs: Mapping[str, Sequence[np.ndarray]], dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """State_dict for `model_name` from Caffe blobs (layer name -> its blobs, Caffe order).

    `dtype` (float32 or float64) is that of the tensors and of the BatchNorm division,
    as in Caffe's `Net<float>` / `Net<double>`.

    Raises `CaffeMappingError` listing Caffe layers with blobs that map nowhere,
    state_dict keys left without a value, and blobs of the wrong count or shape.
    Layers without blobs (ReLU, Pooling, ...) may be present and are ignored.
    """
    real: type[np.floating] = np.float64 if dtype == torch.float64 else np.float32
    model = resolve_name(model_name)
    layers, shapes = CAFFE_LAYERS[model], _shapes(model)
    state_dict: dict[str, torch.Tensor] = {}
    unused, mismatched = [], []
    for layer, arrays in blobs.items():
        if len(arrays) == 0:
            continue
        if layer not in layers:
            unused.append(f"{layer} ({len(arrays)} blobs)")
            continue
        kind, module = layers[layer]
        keys = _keys(kind, module, shapes)
        expected = len(keys) + (kind == BATCHNORM)
        if len(arrays) != expected:
            mismatched.append(f"{layer}: {len(arrays)} blobs, expected {expected} ({kind})")
            continue
        values = [_fit(array, shapes[key], real) for array, key in zip(arrays, keys)]
        for index, (value, array, key) in enumerate(zip(values, arrays, keys)):
            if value is None:
                mismatched.append(
                    f"{layer} blob {index}: shape {tuple(np.shape(array))}, expected {shapes[key]} for {key}"
                )
        if kind == BATCHNORM:
            factor = np.asarray(arrays[2]).reshape(-1)
            if factor.size != 1:
                mismatched.append(f"{layer} blob 2: scale factor of {factor.size} elements, expected 1")
                continue
            scale = real(factor[0])
            scale = real(0) if scale == 0 else real(1) / scale
            values = [None if value is None else value * scale for value in values]
        if any(value is None for value in values):
            continue
        state_dict.update((key, torch.from_numpy(value)) for key, value in zip(keys, values))
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state_dict[key] = torch.zeros(shape, dtype=torch.long)
    missing = [key for key in shapes if key not in state_dict]
    if unused or missing or mismatched:
        raise CaffeMappingError(model, unused_layers=unused, missing_keys=missing, mismatched=mismatched)
    return {key: state_dict[key] for key in shapes}


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", torch.float32).numpy().copy()


def state_dict_to_caffe(
    model_name: str, state_dict: Mapping[str, torch.Tensor]
) -> dict[str, list[np.ndarray]]:
    """Caffe blobs (layer name -> float32 arrays, Caffe order) from a state_dict.

    BatchNorm layers get a scale factor of 1.0; `num_batches_tracked` is
    ignored. Raises `CaffeMappingError` on missing, unexpected or mis-shaped keys.
    """
    model = resolve_name(model_name)
    layers, shapes = CAFFE_LAYERS[model], _shapes(model)
    keys_of = {layer: _keys(kind, module, shapes) for layer, (kind, module) in layers.items()}
    used = [key for keys in keys_of.values() for key in keys]  # model order, for messages
    missing = [key for key in used if key not in state_dict]
    mismatched = [
        f"{key}: shape {tuple(state_dict[key].shape)}, expected {shapes[key]}"
        for key in used
        if key in state_dict and tuple(state_dict[key].shape) != shapes[key]
    ]
    unexpected = [key for key in state_dict if key not in shapes and not key.endswith("num_batches_tracked")]
    if missing or mismatched or unexpected:
        raise CaffeMappingError(
            model, missing_keys=missing, mismatched=mismatched, unexpected_keys=unexpected
        )
    blobs: dict[str, list[np.ndarray]] = {}
    for layer, keys in keys_of.items():
        blobs[layer] = [_to_numpy(state_dict[key]) for key in keys]
        if layers[layer][0] == BATCHNORM:
            blobs[layer].append(np.ones(1, dtype=np.float32))
    return blobs


def _evidence(layers: Any) -> tuple[set[str], dict[str, int], dict[str, tuple[int, ...]]]:
    """Layer names, convolution groups and first-blob shapes from whatever describes the net."""
    if isinstance(layers, Mapping):  # Caffe blobs: layer name -> arrays
        shapes = {name: tuple(np.shape(arrays[0])) for name, arrays in layers.items() if len(arrays)}
        return set(layers), {}, shapes
    if hasattr(layers, "layers"):  # a prototxt.Net, or a NetParameter (layer + V1 layers)
        current = getattr(layers, "layer", None)
        layers = list(layers.layers) + (
            list(current) if current is not None and not callable(current) else []
        )
    names, groups, shapes = set(), {}, {}
    for item in layers:
        if isinstance(item, str):
            names.add(item)
        elif isinstance(item, (tuple, list)):
            names.add(item[0])
        else:  # a prototxt.Layer, a caffe_pb2.LayerParameter, anything with .name / .type
            names.add(item.name)
            # A LayerParameter has convolution_param; a prototxt.Layer keeps it in .param.
            param = item if hasattr(item, "convolution_param") else getattr(item, "param", None)
            if getattr(item, "type", None) == CONVOLUTION and param is not None:
                groups[item.name] = param.convolution_param.group
            blob_shapes = getattr(item, "blob_shapes", None)
            if blob_shapes:
                shapes[item.name] = tuple(blob_shapes[0])
    return names, groups, shapes


def _consistent(model: str, groups: Mapping[str, int], shapes: Mapping[str, tuple[int, ...]]) -> bool:
    """Do the known convolution groups and weight shapes agree with `model`?"""
    meta, expected = _meta_model(model), _shapes(model)
    for layer, (kind, module) in CAFFE_LAYERS[model].items():
        if layer in groups and meta.get_submodule(module).groups != groups[layer]:
            return False
        if (
            kind in (CONVOLUTION, INNER_PRODUCT)
            and layer in shapes
            and _squeezed(shapes[layer]) != _squeezed(expected[f"{module}.weight"])
        ):
            return False
    return True


def recognise_model(layers: Any) -> str:
    """Which of the seven networks a Caffe net is; returns its canonical name.

    `layers` may be layer names, (name, type) pairs, `caffe_pb2.LayerParameter`s,
    a `NetParameter`, or Caffe blobs (layer name -> arrays). The network whose
    blob-carrying layer names are all present wins (the largest such network,
    so SE-ResNet-101 is not taken for SE-ResNet-50). SE-ResNet and SE-ResNeXt
    of equal depth have identical layer names; they are told apart by the
    convolution groups (from LayerParameters) or the weight shapes (from blobs),
    and a `ValueError` says so when only names are given.
    """
    names, groups, shapes = _evidence(layers)
    fitting = [model for model, table in CAFFE_LAYERS.items() if names.issuperset(table)]
    if not fitting:

        def coverage(model: str) -> float:
            return len(names.intersection(CAFFE_LAYERS[model])) / len(CAFFE_LAYERS[model])

        closest = max(CAFFE_LAYERS, key=coverage)
        absent = [name for name in CAFFE_LAYERS[closest] if name not in names]
        raise CaffeMappingError(
            f"not one of the SENet Caffe networks ({', '.join(CAFFE_LAYERS)}); closest is "
            f"{closest}, which lacks {len(absent)} of its {len(CAFFE_LAYERS[closest])} layers "
            f"with weights, e.g. {', '.join(absent[:5])}"
        )
    candidates = [model for model in fitting if _consistent(model, groups, shapes)]
    if not candidates:
        raise CaffeMappingError(
            f"the layer names fit {', '.join(fitting)}, but the convolution "
            "groups or weight shapes fit none of them"
        )
    largest = max(len(CAFFE_LAYERS[model]) for model in candidates)
    best = [model for model in candidates if len(CAFFE_LAYERS[model]) == largest]
    if len(best) > 1:
        raise CaffeMappingError(
            f"ambiguous: the layer names fit {' and '.join(best)} alike; pass the "
            "prototxt layers (with their convolution groups) or the caffemodel "
            "blobs to tell them apart"
        )
    return best[0]
