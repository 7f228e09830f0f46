"""Caffe SENet release -> a state_dict of our clean model (or timm's), checked and saved.

This is the pipeline behind `senet-convert caffe2torch --model ...`:

1. every blob of the caffemodel is mapped to a state_dict key
   (`models.caffe_to_state_dict`); a blob that lands nowhere, or a key left
   empty, is an error listing them;
2. a self-check runs the clean model and the generic converted graph
   (`converter.convert` on the same Caffe net) on one seeded input and compares
   the logits relative to their scale;
3. optionally the classifier rows are permuted to the sorted-WordNet-id class
   order of torchvision/timm, torchvision's RGB normalisation is folded into the
   first convolution, and the keys are renamed to timm's legacy SENet layout;
4. the result is written atomically as `.pth` and/or `.safetensors`
   (`models.checkpoint.save_state_dict`).

Input normalisation. Unless folded, every checkpoint written here, whatever
its layout or class order, expects the Caffe release's input: BGR channel
order, pixel values 0..255 minus the per-channel means (104, 117, 123), no
division by a standard deviation (`INPUTS["caffe"]`). timm's legacy SENets
declare a default config of RGB 0..1 inputs normalised by the ImageNet mean/std
(0.485, 0.456, 0.406) / (0.229, 0.224, 0.225); that is what timm's own
pretrained weights expect, and it is wrong for an unfolded checkpoint.

`senet_repro.normalisation` folds that RGB mean/std input into the first convolution instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from prototxt import ConversionError, Net, load_net, read_caffemodel

from . import imagenet
from .class_order import class_permutation, permute_classes
from .layout import KeyLayout
from .models import (
    Header,
    caffe_to_state_dict,
    from_timm_state_dict,
    meta_model,
    recognise_model,
    resolve_name,
    timm_model_name,
    to_timm_state_dict,
)
from .normalisation import FoldEffect, fold_rgb_normalisation, measure_fold

LOGITS_BLOB = "classifier"  # the InnerProduct top in all seven prototxts
# Relative to the logits' scale: ~80 float32 ulps, far above the round-off of a well-conditioned
# net and far below what a wrong mapping does; beyond it the decision is made in float64.
SELF_CHECK_TOLERANCE = 1e-5


@dataclass(frozen=True)
class ModelCheck:
    """Clean model vs generic converted graph on the same seeded input, relative to the logits.

    Passed when both are finite and either their float32 logits agree within
    SELF_CHECK_TOLERANCE or, failing that, their float64 logits agree within the
    clean model's own float32-vs-float64 error. In float64 the arithmetic of the
    two paths is exact to ~1e-15; what may remain is the float32 rounding of
    constants derived from the float32 blobs (BatchNorm statistics over their
    scale factor, ...), a subset of the roundings the float32 run makes, so it
    cannot exceed the measured float32 error. A wrong mapping is not float32
    noise: it changes the float64 logits by far more.
    """

    input_shape: tuple[int, ...]
    scale: float  # max |logit| of the clean model (float64 where that was run)
    difference: float  # max |clean - generic| / scale, both float32 (inf when either is not finite)
    # Both None when the float32 difference was within SELF_CHECK_TOLERANCE and the
    # float64 runs (the costliest part) were not needed:
    float32_error: float | None = None  # max |clean float32 - clean float64| / scale
    float64_difference: float | None = None  # max |clean - generic| / scale, both float64

    @property
    def passed(self) -> bool:
        if self.difference <= SELF_CHECK_TOLERANCE:
            return True
        if self.float64_difference is None or self.float32_error is None:
            return False
        return self.float64_difference <= self.float32_error

    def summary(self) -> str:
        shape = "x".join(str(size) for size in self.input_shape)
        text = (
            f"self-check, clean model vs generic converted graph on a seeded {shape} input: "
            f"max abs difference {self.difference:.2e} relative to the logits' scale "
            f"{self.scale:.4g} (bound {SELF_CHECK_TOLERANCE:.0e})"
        )
        if self.float64_difference is not None:
            text += (
                f", in float64 {self.float64_difference:.2e} (bound: the clean model's own "
                f"float32 error {self.float32_error:.2e})"
            )
        return f"{text}: {'ok' if self.passed else 'FAILED'}"


@dataclass(frozen=True)
class Conversion:
    """A converted SENet state_dict and what was done to it."""

    model: str
    state_dict: dict[str, torch.Tensor]
    layers: int  # Caffe layers with blobs, all of which landed in the state_dict
    parameters: int  # learnable values (BatchNorm statistics excluded)
    layout: KeyLayout
    class_order: imagenet.ClassOrder
    class_order_source: str | None
    check: ModelCheck | None
    fold: FoldEffect | None = None  # set when torchvision's normalisation was folded in

    @property
    def normalisation(self) -> str:
        """The input convention the state_dict expects: a key of `INPUTS`."""
        return "caffe" if self.fold is None else "torchvision"

    def metadata(self) -> dict[str, str]:
        """What a reader of the file needs to know: its header (`models.checkpoint`)."""
        return Header(self.model, self.layout, self.class_order, self.normalisation).metadata()


class _LayerProgress(Mapping):
    """Caffe blobs whose one pass over `items()` drives a progress bar, one tick per layer."""

    def __init__(self, blobs: Mapping[str, Sequence[np.ndarray]], enabled: bool) -> None:
        self._blobs, self._enabled = blobs, enabled

    def __getitem__(self, key: str) -> Sequence[np.ndarray]:
        return self._blobs[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._blobs)

    def __len__(self) -> int:
        return len(self._blobs)

    def items(self) -> Iterable[tuple[str, Sequence[np.ndarray]]]:  # type: ignore[override]
        return tqdm(
            self._blobs.items(),
            total=len(self._blobs),
            desc="mapping",
            unit="layer",
            disable=not self._enabled,
            leave=False,
        )


def read_caffe(
    caffemodel: str | os.PathLike[str],
    prototxt: str | os.PathLike[str] | None = None,
    input_shape: Mapping[str, Sequence[int]] | None = None,
) -> tuple[Net, dict[str, list[np.ndarray]]]:
    """The deploy net (with weights) and *all* blobs of the caffemodel, by layer name
    (`input_shape` as in `prototxt.build_net`).

    The net drops blobs of layers it does not have (with a note); the raw blobs
    keep them, so that `caffe_to_state_dict` can report every blob that lands nowhere.
    """
    model = read_caffemodel(caffemodel)
    net = load_net(prototxt, model, input_shape=input_shape)
    return net, {name: list(arrays) for name, arrays in model.blobs.items() if len(arrays)}


def load_strictly(model: str, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Raise unless `state_dict` (our layout) loads into `model` with strict=True."""
    try:
        meta_model(model).load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as exc:
        raise ConversionError(f"the converted state_dict does not load into {model}: {exc}") from None


def _relative(a: torch.Tensor, b: torch.Tensor, scale: float) -> float:
    """max |a - b| / scale; inf unless both are finite (non-finite logits never pass)."""
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return float("inf")
    return float((a.double() - b.double()).abs().max()) / scale


@torch.no_grad()
def check_model(model: str, net: Net, state_dict: Mapping[str, torch.Tensor], seed: int = 0) -> ModelCheck:
    """Clean model (from `state_dict`) vs `converter.convert(net)` on a seeded image-like input.

    The clean model runs through `torch.func.functional_call` on a meta-device
    module, so neither its initialisation nor a copy of the weights is paid for.
    Only when the two differ by more than SELF_CHECK_TOLERANCE in float32 do
    both run again in float64 (see `ModelCheck`).
    """
    from converter import convert
    from converter.calibrate import image_like

    shape = tuple(next(iter(net.inputs.values())))
    x = image_like(shape, seed)
    clean = meta_model(model)
    ours = torch.func.functional_call(clean, dict(state_dict), (x,))
    graph = convert(net, [LOGITS_BLOB])
    generic = graph(x)
    scale = float(ours.abs().max()) if torch.isfinite(ours).all() else 1.0
    result = ModelCheck(shape, scale or 1.0, _relative(ours, generic, scale or 1.0))
    if result.passed or not torch.isfinite(ours).all():
        return result
    exact = torch.func.functional_call(
        clean,
        {key: value.double() if value.is_floating_point() else value for key, value in state_dict.items()},
        (x.double(),),
    )
    # The graph cast, not rebuilt in float64: its constants derived from the blobs (BatchNorm
    # statistics over their scale factor) are then the float32 ones the state_dict holds, so
    # the two float64 runs differ only in the order of their arithmetic, and a wrong mapping
    # stands out by orders of magnitude more.
    generic64 = graph.double()(x.double())
    scale = float(exact.abs().max()) or 1.0
    return ModelCheck(
        shape,
        scale,
        _relative(ours, generic, scale),
        _relative(ours, exact, scale),
        _relative(exact, generic64, scale),
    )


def convert_senet(
    net: Net,
    blobs: Mapping[str, Sequence[np.ndarray]] | None = None,
    model: str | None = None,
    *,
    layout: KeyLayout | str = KeyLayout.OURS,
    class_order: imagenet.ClassOrder | str = imagenet.ClassOrder.DEVKIT,
    permutation: tuple[Sequence[int], str] | None = None,
    fold: bool = False,
    check: bool = True,
    progress: bool = False,
) -> Conversion:
    """Convert the weights of a Caffe SENet into a state_dict, self-checked.

    `blobs` defaults to the net's own; pass all blobs of the caffemodel (see
    `read_caffe`) so that leftovers are reported. `model` defaults to the
    network `recognise_model` finds. `permutation` is `(p, source)` as from
    `class_permutation`, needed (and computed with defaults if absent) for
    `ClassOrder.TORCHVISION`. `fold` folds torchvision's RGB normalisation
    into the first convolution (see the module docstring) and measures the
    effect. Raises `ConversionError` (a `CaffeMappingError` for unmapped blobs) and
    when the self-check fails.
    """
    if layout not in list(KeyLayout):
        raise ConversionError(f"unknown layout {layout!r}; choose one of {', '.join(KeyLayout)}")
    layout, class_order = KeyLayout(layout), imagenet.class_order(class_order)
    model = resolve_name(model) if model else recognise_model(net)
    if layout == KeyLayout.TIMM:
        timm_model_name(model)  # fail before the work if there is no timm counterpart
    blobs = net.weights() if blobs is None else blobs
    state_dict = caffe_to_state_dict(model, _LayerProgress(blobs, progress))
    load_strictly(model, state_dict)
    result = check_model(model, net, state_dict) if check else None
    if result is not None and not result.passed:
        reason = (
            "the logits are not finite"
            if result.difference == float("inf")
            else f"the prototxt differs from the released {model} in more than its weights"
        )
        raise ConversionError(f"{result.summary()}; {reason}")
    source = None
    if class_order == imagenet.ClassOrder.TORCHVISION:
        order, source = permutation if permutation is not None else class_permutation()
        state_dict = permute_classes(state_dict, order)
    effect = None
    if fold:
        folded = fold_rgb_normalisation(model, state_dict)
        effect = measure_fold(model, state_dict, folded, next(iter(net.inputs.values()))[-1])
        state_dict = folded
    if layout == KeyLayout.TIMM:
        state_dict = to_timm_state_dict(model, state_dict)
        load_strictly(model, from_timm_state_dict(model, state_dict))
    parameters = sum(value.numel() for value in meta_model(model).parameters())
    layers = sum(1 for arrays in blobs.values() if len(arrays))
    return Conversion(
        model=model,
        state_dict=state_dict,
        layers=layers,
        parameters=parameters,
        layout=layout,
        class_order=class_order,
        class_order_source=source,
        check=result,
        fold=effect,
    )
