"""Whose module paths a SENet state_dict's keys follow (torch-free, so the CLIs can offer it)."""

from enum import StrEnum


class KeyLayout(StrEnum):
    OURS = "ours"  # senet_repro.models
    TIMM = "timm"  # timm's legacy_se* models (see senet_repro.models.timm_layout)
