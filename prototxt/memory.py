"""The memory a Caffe net's forward pass needs, from Caffe's shapes alone (no torch).

`converter.memory` adds the estimate for any PyTorch module; the commands refuse
a forward pass estimated beyond `--max-memory` before anything is allocated.
"""

from __future__ import annotations

import math

from .errors import InputError
from .net import Net

DEFAULT_MAX_MEMORY_GIB = 16.0
GIB = 2**30


class MemoryLimitError(InputError):
    """The estimated memory of a forward pass exceeds the limit."""


def net_bytes(net: Net, batch: int | None = None, element_bytes: int = 4) -> int:
    """Parameters plus every blob of `net` for `batch` images (default: as declared), from Caffe's shapes."""
    inputs = list(net.inputs.values())
    declared = inputs[0][0] if inputs and inputs[0] else 1
    blobs = sum(math.prod(shape) for shape in net.blob_shapes.values())
    scale = (batch or declared) / max(declared, 1)
    return int(element_bytes * (net.learnable_parameters + blobs * scale))


def check_memory(need: int, limit_gib: float, what: str) -> None:
    """Raise `MemoryLimitError` when `need` bytes exceed `limit_gib`."""
    if need > limit_gib * GIB:
        raise MemoryLimitError(
            f"{what} would need about {need / GIB:,.1f} GiB, over the limit of {limit_gib:g} GiB; "
            "nothing was allocated (raise it with --max-memory GIB if the machine has the memory)"
        )
