"""Refuse a forward pass that would not fit in memory, before anything is allocated.

A prototxt with huge input dims or pads, or an `--input-shape` of 100000 x 100000,
would otherwise ask for hundreds of GB and be killed (or make the machine swap).
The commands estimate what their forward passes need and refuse beyond
`--max-memory` (default `DEFAULT_MAX_MEMORY_GIB`), which the user may raise.

The estimate is an upper bound on the peak: the parameters plus every tensor
the forward creates, as if none were freed. For a Caffe net it comes from
Caffe's own blob shapes (`prototxt.memory`, no torch, for the torch-free route
too); for any module from a forward on the meta device, which allocates nothing.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from prototxt.memory import DEFAULT_MAX_MEMORY_GIB, GIB, MemoryLimitError, check_memory, net_bytes

__all__ = [
    "DEFAULT_MAX_MEMORY_GIB",
    "GIB",
    "MemoryLimitError",
    "check_memory",
    "module_bytes",
    "net_bytes",
]


class _CountCreated(TorchDispatchMode):
    """Adds up the bytes of every tensor an operator returns."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self.total += sum(
            t.numel() * t.element_size() for t in tree_leaves(out) if isinstance(t, torch.Tensor)
        )
        return out


def module_bytes(module: nn.Module, shape: tuple[int, ...]) -> int:
    """Parameters plus every tensor a float32 forward of `module` on `shape` creates, measured on meta.

    A module that cannot run on the meta device (an input shape it does not take,
    data-dependent layers such as SSD's DetectionOutput) is counted as its tensors
    plus its input only; running it for real then reports what is wrong.
    """
    tensors: dict[str, torch.Tensor] = dict(module.named_parameters())
    tensors.update(module.named_buffers())
    for prefix, child in module.named_modules():  # plain tensor attributes (export's constants)
        for name, value in vars(child).items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{name}" if prefix else name] = value
    meta = {name: torch.empty_like(value, device="meta") for name, value in tensors.items()}
    weights = sum(value.numel() * value.element_size() for value in tensors.values())
    counter = _CountCreated()
    try:
        with torch.no_grad(), counter:
            functional_call(module, meta, (torch.empty(shape, device="meta"),))
    except Exception:  # whatever the module raises on meta; the real run says it in one line
        return weights + 4 * math.prod(shape)
    return weights + counter.total
