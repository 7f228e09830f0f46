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
from typing import Any

import torch

from prototxt import ConversionError, InputError

from .inception import SEBNInception, se_bn_inception
from .senet import (
    SENet,
    se_resnet50,
    se_resnet101,
    se_resnet152,
    se_resnext50_32x4d,
    se_resnext101_32x4d,
    senet154,
)

# Canonical names in the order of the SENet README table.
_MODELS: dict[str, Callable[..., SENet | SEBNInception]] = {
    "se_bn_inception": se_bn_inception,
    "se_resnet50": se_resnet50,
    "se_resnet101": se_resnet101,
    "se_resnet152": se_resnet152,
    "se_resnext50_32x4d": se_resnext50_32x4d,
    "se_resnext101_32x4d": se_resnext101_32x4d,
    "senet154": senet154,
}

ALIASES: dict[str, str] = {
    "se_resnext50": "se_resnext50_32x4d",
    "se_resnext101": "se_resnext101_32x4d",
}


class UnknownModelError(InputError):
    """A model name that is neither a canonical name nor an alias."""


def list_models() -> list[str]:
    """Canonical names of the seven networks (aliases are not listed)."""
    return list(_MODELS)


def resolve_name(name: str) -> str:
    """Canonical name for `name` (a canonical name or an alias, any case)."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in _MODELS:
        aliases = ", ".join(f"{alias} -> {target}" for alias, target in ALIASES.items())
        raise UnknownModelError(
            f"unknown model {name!r}; valid names: {', '.join(_MODELS)} (aliases: {aliases})"
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
    return dict(state_dict)


def get_model(
    name: str, weights: str | os.PathLike[str] | None = None, **kwargs: Any
) -> SENet | SEBNInception:
    """Build network `name` (see `list_models()`); load `weights` strictly if given.

    `kwargs` go to the constructor (e.g. `num_classes`). The model is returned
    in eval mode when weights are loaded, since the Caffe deploy nets are
    inference nets (BatchNorm with global statistics, no dropout).
    """
    canonical = resolve_name(name)
    model = _MODELS[canonical](**kwargs)
    if weights is not None:
        state_dict = load_weights(weights)
        try:
            model.load_state_dict(state_dict, strict=True)
        except RuntimeError as exc:
            raise ConversionError(f"{weights}: the weights do not fit {canonical}: {exc}") from None
        model.eval()
    return model
