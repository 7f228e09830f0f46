"""Model names -> constructors, plus reading converted weights from disk.

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
from torch import nn

from prototxt import InputError

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


HEADER_KEY = "senet-repro"  # a .pth checkpoint's header: state_dict._metadata[HEADER_KEY]


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


def _read_state_dict(path: Path) -> tuple[object, Mapping[str, str] | None]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt", device="cpu") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata()
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    metadata = getattr(state_dict, "_metadata", None) or {}
    header = metadata.get(HEADER_KEY) if isinstance(metadata, Mapping) else None
    return state_dict, header if isinstance(header, Mapping) else None


def read_weights(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str] | None]:
    """A state_dict from `.safetensors` or `.pth` (tensors only, no pickled code) and its header.

    The header is the .safetensors metadata or the .pth state_dict's
    `_metadata[HEADER_KEY]` (see `checkpoint`); None when absent. Any unreadable
    file is a one-line InputError: unpickling arbitrary bytes can fail with almost
    any exception type (IndexError, struct.error, ...), and all of them mean "not weights".
    """
    path = Path(path)
    try:
        state_dict, header = _read_state_dict(path)
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
    return dict(state_dict), None if header is None else {str(k): str(v) for k, v in header.items()}


def load_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state_dict of a `.safetensors` or `.pth` file (see `read_weights`)."""
    return read_weights(path)[0]


def state_dict_mismatch(module: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """Why `state_dict` does not load strictly into `module`, in one line; None when it does."""
    expected = module.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    wrong = [
        f"{key} {tuple(state_dict[key].shape)} instead of {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state_dict and state_dict[key].shape != value.shape
    ]
    parts = [
        f"{len(keys)} {what} (e.g. {keys[0]})"
        for what, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shapes differ", wrong),
        )
        if keys
    ]
    return "; ".join(parts) or None


def get_model(
    name: str, checkpoint: str | os.PathLike[str] | None = None, **kwargs: Any
) -> SENet | SEBNInception:
    """Build network `name` (see `list_models()`); load the state_dict file `checkpoint` strictly if given.

    `kwargs` go to the constructor (e.g. `num_classes`). The checkpoint is read with
    `checkpoint.read_checkpoint` (timm's layout is renamed, the header's network must
    be `name`); what input and class order it expects is in its header. The model is
    returned in eval mode when a checkpoint is loaded, since the Caffe deploy nets are
    inference nets (BatchNorm with global statistics, no dropout). The release's
    description is `weights_for(name)`, as torchvision separates `weights=`
    (what a checkpoint is) from the file.
    """
    canonical = resolve_name(name)
    model = _BUILDERS[canonical](**kwargs)
    if checkpoint is not None:
        from .checkpoint import read_checkpoint

        model.load_state_dict(read_checkpoint(checkpoint, canonical, into=model).state_dict, strict=True)
        model.eval()
    return model


def meta_model(name: str) -> SENet | SEBNInception:
    """Network `name` on the meta device, in eval mode: shapes and hyper-parameters, no memory."""
    with torch.device("meta"):
        return get_model(name).eval()


def weights_for(name: str) -> CaffeWeights:
    """The record of a released network (canonical name or alias)."""
    return _WEIGHTS[resolve_name(name)]
