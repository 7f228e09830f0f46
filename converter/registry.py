"""The converter registry: one small function per Caffe layer type.

A converter takes a `prototxt.Layer` (parameters, shapes, blobs) and returns the
`nn.Module` that computes the layer's tops from its bottoms, or `None` when the
tops are simply the bottoms (Split). New types plug in with `@register`:

    @register("Power")
    def power(layer: Layer) -> nn.Module: ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

from prototxt import CaffeError, Layer
from prototxt.net import unsupported_layers

Converter = Callable[[Layer], "nn.Module | None"]
# A converter keeps its own, often narrower, type when registered.
C = TypeVar("C", bound=Converter)

CONVERTERS: dict[str, Converter] = {}

HOW_TO_ADD = (
    "add a converter with @converter.register('<Type>') returning an nn.Module "
    "(see docs/ARCHITECTURE.md, 'Adding a layer type')"
)


class UnsupportedLayerError(CaffeError):
    """The net uses layer types that have no converter; lists every offending layer."""


def register(*layer_types: str) -> Callable[[C], C]:
    """Register the decorated function as the converter of `layer_types`."""

    def decorate(function: C) -> C:
        for layer_type in layer_types:
            CONVERTERS[layer_type] = function
        return function

    return decorate


def check_supported(layers: list[Layer]) -> None:
    """Raise one error naming every layer whose type has no converter."""
    offending = unsupported_layers(layers, CONVERTERS)
    if offending:
        raise UnsupportedLayerError(
            f"no converter for layer type(s) {offending}. To support one, {HOW_TO_ADD}"
        )
