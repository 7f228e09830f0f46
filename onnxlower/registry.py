"""The lowering registry: one function per Caffe layer type, as `converter`'s registry.

A lowering takes the layer, a `Builder`, the tensor names of its bottoms and the
names its tops must get, adds ONNX nodes computing them, and returns the tensor
names of its tops (the bottoms themselves for pass-through layers such as Split).

    @register("Power")
    def power(layer: Layer, b: Builder, bottoms: list[str], tops: list[str]) -> list[str]: ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from prototxt import CaffeError, Layer
from prototxt.net import unsupported_layers

if TYPE_CHECKING:
    from .builder import Builder

Lowering = Callable[[Layer, "Builder", list[str], list[str]], list[str]]

LOWERINGS: dict[str, Lowering] = {}


class UnsupportedLoweringError(CaffeError):
    """The net uses layer types that have no ONNX lowering; lists every offending layer."""


def register(*layer_types: str) -> Callable[[Lowering], Lowering]:
    """Register the decorated function as the ONNX lowering of `layer_types`."""

    def decorate(function: Lowering) -> Lowering:
        for layer_type in layer_types:
            LOWERINGS[layer_type] = function
        return function

    return decorate


def check_supported(layers: list[Layer]) -> None:
    """Raise one error naming every layer whose type has no lowering."""
    offending = unsupported_layers(layers, LOWERINGS)
    if offending:
        raise UnsupportedLoweringError(
            f"no ONNX lowering for layer type(s) {offending}. To support one, add a function to "
            "onnxlower/layers.py decorated with @onnxlower.register('<Type>')"
        )
