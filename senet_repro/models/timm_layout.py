"""Our state_dicts <-> timm's legacy SENet layout (`timm.models.senet`).

timm's `legacy_*` SENets are the same networks as the Caffe release (they were
ported from it: SE-ResNet with the stride on the first 1x1 convolution, ceil
mode stem max pool, SENet-154's 3x3 projections), so the conversion is a pure
renaming of module paths:

    ours                         timm
    stem.*                       layer0.*
    layerN.i.se.fc1 / fc2        layerN.i.se_module.fc1 / fc2
    layerN.0.downsample.conv     layerN.0.downsample.0
    layerN.0.downsample.bn       layerN.0.downsample.1
    fc                           last_linear

SE-BN-Inception has no timm counterpart (timm has no BN-Inception with SE).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from prototxt import ConversionError

from .registry import weights_for
from .weights import SENetWeights

# (ours, timm, anchored at the start of the key); applied in order, reversed
# by swapping the first two fields.
_RULES: tuple[tuple[str, str, bool], ...] = (
    ("stem.", "layer0.", True),
    (".se.", ".se_module.", False),
    (".downsample.conv.", ".downsample.0.", False),
    (".downsample.bn.", ".downsample.1.", False),
    ("fc.", "last_linear.", True),
)
_REVERSE = tuple((timm, ours, anchored) for ours, timm, anchored in _RULES)


def timm_model_name(model_name: str) -> str:
    """The timm model name for one of our networks, e.g. `legacy_seresnet50`."""
    weights = weights_for(model_name)
    if weights.timm_name is None:
        ported = ", ".join(member.value.timm_name for member in SENetWeights if member.value.timm_name)
        raise ConversionError(f"{weights.name} has no timm counterpart; timm's legacy SENets are {ported}")
    return weights.timm_name


def _rename(key: str, rules: tuple[tuple[str, str, bool], ...]) -> str:
    for old, new, anchored in rules:
        if not anchored:
            key = key.replace(old, new)
        elif key.startswith(old):
            key = new + key[len(old) :]
    return key


def to_timm_state_dict(model_name: str, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state_dict under timm's keys, for `timm.create_model(timm_model_name(...))`."""
    timm_model_name(model_name)
    return {_rename(key, _RULES): value for key, value in state_dict.items()}


def from_timm_state_dict(model_name: str, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A timm legacy SENet state_dict under our keys."""
    timm_model_name(model_name)
    return {_rename(key, _REVERSE): value for key, value in state_dict.items()}
