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
    offending: dict[str, list[str]] = {}
    for layer in layers:
        if layer.type not in CONVERTERS:
            offending.setdefault(layer.type, []).append(layer.name)
    if offending:
        lines = "; ".join(
            f"{t}: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}"
            for t, names in sorted(offending.items())
        )
        raise UnsupportedLayerError(f"no converter for layer type(s) {lines}. To support one, {HOW_TO_ADD}")
