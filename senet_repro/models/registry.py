"""Model names -> constructors, plus loading converted weights from disk.

The seven networks of the Caffe release, under torchvision/timm-like names.
Weights are whatever `senet-convert` wrote: a `.pth` state_dict (read with
`torch.load(weights_only=True)`, so no pickled code runs) or a `.safetensors`
file.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from prototxt import ConversionError, InputError

from .weights import CaffeWeights, SENetWeights

if TYPE_CHECKING:
    from .inception import SEBNInception
    from .senet import SENet

Builder = Callable[..., "SENet | SEBNInception"]
B = TypeVar("B", bound=Builder)

# Canonical name -> the function that builds the network, registered beside its module.
_BUILDERS: dict[str, Builder] = {}
# Canonical name -> its record, in the order of the SENet README table.
_WEIGHTS: dict[str, CaffeWeights] = {member.value.name: member.value for member in SENetWeights}


def register_model(builder: B) -> B:
    """Register `builder` under its function name, which must name one of the released networks."""
    if builder.__name__ not in _WEIGHTS:
        raise ValueError(f"{builder.__name__} is not one of the released networks ({', '.join(_WEIGHTS)})")
    _BUILDERS[builder.__name__] = builder
    return builder


ALIASES: dict[str, str] = {
    "se_resnext50": "se_resnext50_32x4d",
    "se_resnext101": "se_resnext101_32x4d",
}


class UnknownModelError(InputError):
    """A model name that is neither a canonical name nor an alias."""


def list_models() -> list[str]:
    """Canonical names of the seven networks, in the SENet README's order (aliases are not listed)."""
    return list(_WEIGHTS)


def resolve_name(name: str) -> str:
    """Canonical name for `name` (a canonical name or an alias, any case)."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in _WEIGHTS:
        aliases = ", ".join(f"{alias} -> {target}" for alias, target in ALIASES.items())
        raise UnknownModelError(
            f"unknown model {name!r}; valid names: {', '.join(_WEIGHTS)} (aliases: {aliases})"
        )
    return key


def _read_state_dict(path: Path) -> object:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state_dict from `.safetensors` or `.pth` (tensors only, no pickled code).

    Any unreadable file is a one-line ValueError: unpickling arbitrary bytes can
    fail with almost any exception type (IndexError, struct.error, ...), and all
    of them mean "not weights".
    """
    path = Path(path)
    try:
        state_dict = _read_state_dict(path)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        reason = reason.removeprefix(f"{path}: ")
        if isinstance(exc, OSError) and exc.strerror:
            reason = exc.strerror
        elif isinstance(exc, pickle.UnpicklingError):  # torch's text is advice about trust
            reason = "not a weights-only PyTorch file"
        raise InputError(f"{path}: cannot read a state_dict from it ({reason})") from None
    if not isinstance(state_dict, Mapping) or not all(
        isinstance(value, torch.Tensor) for value in state_dict.values()
    ):
        raise InputError(f"{path}: expected a state_dict (a mapping of names to tensors)")
    for key, value in state_dict.items():  # load_state_dict would cast integers into weights silently
        if not value.is_floating_point() and not key.endswith("num_batches_tracked"):
            raise InputError(f"{path}: '{key}' holds {value.dtype} values; weights are floating point")
    return dict(state_dict)


def get_model(
    name: str, checkpoint: str | os.PathLike[str] | None = None, **kwargs: Any
) -> SENet | SEBNInception:
    """Build network `name` (see `list_models()`); load the state_dict file `checkpoint` strictly if given.

    `kwargs` go to the constructor (e.g. `num_classes`). The model is returned
    in eval mode when a checkpoint is loaded, since the Caffe deploy nets are
    inference nets (BatchNorm with global statistics, no dropout). The release's
    description is `weights_for(name)`, as torchvision separates `weights=`
    (what a checkpoint is) from the file.
    """
    canonical = resolve_name(name)
    model = _BUILDERS[canonical](**kwargs)
    if checkpoint is not None:
        state_dict = load_weights(checkpoint)
        try:
            model.load_state_dict(state_dict, strict=True)
        except RuntimeError as exc:
            raise ConversionError(f"{checkpoint}: the weights do not fit {canonical}: {exc}") from None
        model.eval()
    return model


def meta_model(name: str) -> SENet | SEBNInception:
    """Network `name` on the meta device, in eval mode: shapes and hyper-parameters, no memory."""
    with torch.device("meta"):
        return get_model(name).eval()


def weights_for(name: str) -> CaffeWeights:
    """The record of a released network (canonical name or alias)."""
    return _WEIGHTS[resolve_name(name)]
