"""A converted SENet checkpoint, read together with what its header says it is.

`senet-convert caffe2torch` writes a header into every checkpoint: which
network, the key layout (ours or timm's), the class order of the classifier
rows (Caffe's ILSVRC2012 devkit order or torchvision's sorted WordNet ids) and
the input it expects (the Caffe preprocessing, or torchvision's RGB mean/std
when the normalisation was folded in). In a `.safetensors` it is the file's
metadata; in a `.pth` it is the state_dict's `_metadata[HEADER_KEY]`, which
`torch.load(weights_only=True)` keeps and `load_state_dict` ignores (timm
still loads the file strictly).

Every tool reads checkpoints through `read_checkpoint`, so none applies the
Caffe defaults to a file that says otherwise. A file without our header
(written by another program) is taken as the Caffe release's class order and
input, in whichever layout its keys are.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from prototxt import ConversionError, InputError
from prototxt.atomic import atomic_writer
from senet_repro import imagenet
from senet_repro.layout import KeyLayout
from senet_repro.transforms import CAFFE_MEAN_BGR

from .registry import HEADER_KEY, get_model, read_weights, resolve_name, state_dict_mismatch
from .timm_layout import from_timm_state_dict, timm_model_name

FORMAT = "senet-repro-state-dict"
SUFFIXES = (".pth", ".safetensors")
NORMALISATIONS = ("caffe", "torchvision")
TORCHVISION_MEAN = (0.485, 0.456, 0.406)  # RGB, for 0..1 pixel values
TORCHVISION_STD = (0.229, 0.224, 0.225)
_CROP = "; 224x224 centre crop of the image resized to shorter side 256"
INPUTS = {
    "caffe": (
        "BGR channel order, pixel values 0..255 minus the per-channel means "
        "(B, G, R) = (104, 117, 123), no division by a standard deviation" + _CROP
    ),
    "torchvision": (
        "RGB channel order, pixel values 0..1 minus mean (0.485, 0.456, 0.406), "
        "divided by std (0.229, 0.224, 0.225), as torchvision and timm" + _CROP
    ),
}
_TIMM_KEYS = ("layer0.", "last_linear.")


@dataclass(frozen=True)
class Header:
    """What a checkpoint is: network, key layout, class order and expected input."""

    model: str
    layout: KeyLayout = KeyLayout.OURS
    class_order: imagenet.ClassOrder = imagenet.ClassOrder.DEVKIT
    normalisation: str = "caffe"

    def metadata(self) -> dict[str, str]:
        """The header as stored in the file (string values, as safetensors requires)."""
        meta = {
            "format": FORMAT,
            "model": self.model,
            "layout": str(self.layout),
            "class_order": str(self.class_order),
            "normalisation": self.normalisation,
            "input": INPUTS[self.normalisation],
        }
        if self.layout == KeyLayout.TIMM:
            meta["timm_model"] = timm_model_name(self.model)
        return meta

    @classmethod
    def parse(cls, metadata: Mapping[str, str] | None, source: str) -> Header | None:
        """The header in `metadata`, None when it holds none of ours; InputError when it is malformed."""
        if not metadata or metadata.get("format") != FORMAT:
            return None
        try:
            model, layout = metadata["model"], metadata["layout"]
            class_order, normalisation = metadata["class_order"], metadata["normalisation"]
        except KeyError as exc:
            raise InputError(f"{source}: its {FORMAT} header has no {exc.args[0]!r}") from None
        if layout not in list(KeyLayout):
            raise InputError(f"{source}: header layout {layout!r} is none of {', '.join(KeyLayout)}")
        if normalisation not in NORMALISATIONS:
            raise InputError(
                f"{source}: header normalisation {normalisation!r} is none of {', '.join(NORMALISATIONS)}"
            )
        header = cls(resolve_name(model), KeyLayout(layout), imagenet.class_order(class_order), normalisation)
        return header

    def describe(self) -> str:
        return (
            f"{self.model}, {self.layout} layout, {self.class_order} class order, "
            f"{self.normalisation} input normalisation"
        )


def caffe_to_torchvision_input(x: torch.Tensor) -> torch.Tensor:
    """Caffe input (BGR, 0..255 minus CAFFE_MEAN_BGR) -> torchvision's (RGB, 0..1, mean/std).

    Both are affine in the 8-bit pixels, so a batch prepared the Caffe way gives
    exactly the input a folded network expects, up to float32 rounding.
    """
    mean_rgb = x.new_tensor(CAFFE_MEAN_BGR).flip(0).view(3, 1, 1)
    rgb = (x.flip(-3) + mean_rgb) / 255.0
    return (rgb - x.new_tensor(TORCHVISION_MEAN).view(3, 1, 1)) / x.new_tensor(TORCHVISION_STD).view(3, 1, 1)


def _caffe_input_hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return (caffe_to_torchvision_input(args[0]), *args[1:])


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint's state_dict in our layout and its header (`declared`: read from the file)."""

    path: Path
    header: Header
    declared: bool
    state_dict: dict[str, torch.Tensor]

    def network(self, caffe_input: bool = False) -> nn.Module:
        """The network in eval mode, weights loaded strictly (`caffe_input`: see `take_caffe_input`)."""
        model = get_model(self.header.model)
        model.load_state_dict(self.state_dict, strict=True)
        return self.take_caffe_input(model.eval()) if caffe_input else model.eval()

    def take_caffe_input(self, module: nn.Module) -> nn.Module:
        """`module` (this checkpoint's network, possibly transformed) fed the Caffe input whatever
        the checkpoint expects: a folded network gets a forward pre-hook that converts the batch
        (`caffe_to_torchvision_input`); its modules and names stay as they are."""
        if self.header.normalisation == "torchvision":
            module.register_forward_pre_hook(_caffe_input_hook)
        return module

    def describe(self) -> str:
        source = "its header" if self.declared else "no header: the Caffe release's order and input assumed"
        return f"{self.path.name}: {self.header.describe()} ({source})"


def read_checkpoint(
    path: str | os.PathLike[str], model: str | None = None, *, into: nn.Module | None = None
) -> Checkpoint:
    """Read a SENet checkpoint (.pth/.safetensors) with its header, in our layout, checked to fit.

    `model` (a name or alias) must agree with the header's network; a file
    without a header needs it. The state_dict must load strictly into `into`
    (default: the network, built on the meta device). Every problem is a
    one-line InputError (ConversionError when the weights are another network's).
    """
    path = Path(path)
    state_dict, metadata = read_weights(path)
    header = Header.parse(metadata, str(path))
    timm_keys = any(key.startswith(_TIMM_KEYS) for key in state_dict)
    wanted = resolve_name(model) if model else None
    if header is None:
        if wanted is None:
            raise InputError(f"{path} has no senet-repro header naming its network: give --model")
        header = Header(wanted, KeyLayout.TIMM if timm_keys else KeyLayout.OURS)
        declared = False
    else:
        declared = True
        if wanted is not None and wanted != header.model:
            raise ConversionError(f"{path} holds {header.model} (its header), not {wanted}")
        if timm_keys != (header.layout == KeyLayout.TIMM):
            raise InputError(f"{path}: its header says {header.layout} layout, its keys are not")
    if header.layout == KeyLayout.TIMM:
        state_dict = from_timm_state_dict(header.model, state_dict)
    if into is None:
        with torch.device("meta"):
            into = get_model(header.model)
    mismatch = state_dict_mismatch(into, state_dict)
    if mismatch:
        raise ConversionError(f"{path}: not a {header.model} state_dict: {mismatch}")
    return Checkpoint(path, header, declared, state_dict)


def output_paths(output: str | os.PathLike[str], safetensors: bool = False) -> list[Path]:
    """`output` (.pth or .safetensors), plus the .safetensors beside a .pth on request."""
    path = Path(output)
    if path.suffix not in SUFFIXES:
        raise ConversionError(f"{path}: a SENet state_dict is written as .pth or .safetensors")
    paths = [path]
    if safetensors and path.suffix != ".safetensors":
        paths.append(path.with_suffix(".safetensors"))
    return paths


def save_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write `.pth` (torch.save of plain tensors) or `.safetensors`, atomically, with `metadata`.

    The .pth keeps `metadata` as the state_dict's `_metadata[HEADER_KEY]`, where
    `torch.load(weights_only=True)` finds it and `load_state_dict` ignores it.
    """
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise ConversionError(f"{path}: expected .pth or .safetensors")
    tensors = OrderedDict((key, value.detach().contiguous()) for key, value in state_dict.items())
    with atomic_writer(path) as handle:
        if path.suffix == ".safetensors":
            from safetensors.torch import save

            handle.write(save(dict(tensors), metadata=dict(metadata or {})))
        else:
            if metadata:
                tensors._metadata = OrderedDict({HEADER_KEY: dict(metadata)})  # type: ignore[attr-defined]
            torch.save(tensors, handle)
    return path
