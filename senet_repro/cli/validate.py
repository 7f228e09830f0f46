"""senet-validate: top-1/top-5 error of a converted classifier on its validation set vs. published figures."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
import torch
import torch.distributed as dist

from prototxt import InputError
from prototxt.atomic import atomic_writer
from senet_repro import imagenet
from senet_repro.transforms import CHANNEL_ORDERS, RESIZE_MODES, CaffePreprocess
from senet_repro.validate import (
    BACKENDS,
    Backend,
    EvalOptions,
    EvalResult,
    FolderLayout,
    ValidateError,
    ValSet,
    check_backend,
    configure_precision,
    evaluate,
    init_distributed,
    load_backend,
    open_valset,
)
from senet_repro.validate.cards import IMAGENET_1K, ModelCard, Published, find_card
from senet_repro.validate.data import OUTPUT_ORDER, read_label_set

from ._common import OUTPUT, choices, force_option, guard_outputs, user_errors

if TYPE_CHECKING:
    from senet_repro.models import CaffeWeights

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def _weights_description(model: str | None) -> CaffeWeights | None:
    """The model zoo's description of `model` (None without --model)."""
    if model is None:
        return None
    from senet_repro.models import weights_for

    return weights_for(model)


def _class_subset(spec: str | None) -> list[int] | None:
    """'K' -> K classes evenly spaced in the devkit order; else comma-separated wnids or names."""
    if spec is None:
        return None
    classes = imagenet.imagenet_classes(imagenet.ClassOrder.DEVKIT)
    text = spec.strip()
    if text.isdigit():
        count = int(text)
        if not 1 <= count <= len(classes):
            raise ValidateError(f"--classes {count}: choose 1..{len(classes)} classes")
        return [i * len(classes) // count for i in range(count)]
    return sorted({classes.index(item) for item in text.split(",") if item.strip()})


def _resolve_device(name: str | None, local_rank: int) -> torch.device:
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValidateError("--device cuda, but PyTorch sees no CUDA device")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU: {line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"CPU: {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _environment(device: torch.device, world_size: int) -> dict:
    import numpy
    import onnxruntime
    import torchvision

    from senet_repro import __version__

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "senet_repro": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "device": _device_name(device),
        "world_size": world_size,
    }


def _verdict(
    result: EvalResult, published: Published | None, tolerance: float, full_size: int | None
) -> tuple[str, bool | None]:
    """A short verdict and whether it passes (None: nothing to compare with).

    Only the figures a release published are compared; `full_size` is the size of the
    whole validation set where known.
    """
    if published is None:
        return "no published figures to compare with", None
    pairs = [
        (measured, reference)
        for measured, reference in (
            (result.top1_error, published.top1_error),
            (result.top5_error, published.top5_error),
        )
        if reference is not None
    ]
    passed = all(abs(measured - reference) <= tolerance for measured, reference in pairs)
    verdict = (
        f"{'PASS' if passed else 'FAIL'}: {'within' if passed else 'further than'} "
        f"{tolerance:g} pp of published"
    )
    if full_size is not None and result.images != full_size:
        verdict += f" (partial run: {result.images} of {full_size} images, indicative only)"
    return verdict, passed


def _table(result: EvalResult, published: Published | None, verdict: str) -> str:
    def row(name: str, measured: float, reference: float | None) -> str:
        if reference is None:
            return f"{name:<14}{measured:>10.2f} %{'-':>12}{'-':>13}"
        return f"{name:<14}{measured:>10.2f} %{reference:>10.2f} %{measured - reference:>+10.2f} pp"

    lines = [
        f"{'':<14}{'measured':>12}{'published':>12}{'difference':>13}",
        row("top-1 error", result.top1_error, published.top1_error if published else None),
        row("top-5 error", result.top5_error, published.top5_error if published else None),
        f"{'images':<14}{result.images:>10d}",
        f"{'unreadable':<14}{len(result.unreadable):>10d}",
        f"{'images/s':<14}{result.images_per_second:>10.1f}",
        f"{'verdict':<14}{verdict}",
    ]
    return "\n".join(lines)


def _report(
    path: Path,
    *,
    args: dict,
    backend: Backend,
    valset: ValSet,
    preprocess: CaffePreprocess,
    class_order: str,
    card: ModelCard | None,
    result: EvalResult,
    published: Published | None,
    verdict: str,
    device: torch.device,
    weights: Path,
) -> None:
    report = {
        "command": sys.argv,
        "model": args["model"],
        "card": card.name if card is not None else None,
        "backend": backend.name,
        "backend_description": backend.description,
        "weights": {"path": str(weights), "sha256": _sha256(weights), "bytes": weights.stat().st_size},
        "prototxt": str(args["prototxt"]) if args["prototxt"] else None,
        "data": {
            "root": str(valset.root),
            "layout": valset.layout,
            "label_source": valset.label_source,
            "images": len(valset),
            "limit": args["limit"],
            "classes": args["classes"],
        },
        "preprocessing": {**dataclasses.asdict(preprocess), "decoder": _decoder(result)},
        "class_order": class_order,
        "precision": {"amp": args["amp"], "tf32": backend.tf32},
        "results": {
            "images": result.images,
            "top1_correct": result.top1_correct,
            "top5_correct": result.top5_correct,
            "top1_error": result.top1_error,
            "top5_error": result.top5_error,
            "seconds": result.seconds,
            "images_per_second": result.images_per_second,
            "unreadable": [{"file": name, "error": message} for name, message in result.unreadable],
        },
        "published": None if published is None else dataclasses.asdict(published),
        "difference": None
        if published is None
        else {
            name: None if reference is None else measured - reference
            for name, measured, reference in (
                ("top1_error", result.top1_error, published.top1_error),
                ("top5_error", result.top5_error, published.top5_error),
            )
        },
        "tolerance": args["tolerance"],
        "verdict": verdict,
        "environment": _environment(device, result.world_size),
    }
    with atomic_writer(path) as handle:
        handle.write((json.dumps(report, indent=2) + "\n").encode("utf-8"))


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How a run prepares images and reads outputs, and what it is compared with."""

    preprocess: CaffePreprocess
    published: Published | None
    class_order: str  # the ImageNet class order of the outputs (ImageNet layouts only)
    card: ModelCard | None = None


_PREPROCESS_OPTIONS = ("resize", "crop", "resize_mode", "scale", "channel_order", "ten_crop")


def _preprocess_overrides(args: dict) -> dict:
    """CaffePreprocess fields given on the command line."""
    overrides = {name: args[name] for name in _PREPROCESS_OPTIONS if args[name] is not None}
    if args["mean_values"] is not None and args["mean_file"] is not None:
        raise ValidateError("give --mean-values or --mean-file, not both (Caffe refuses both)")
    if args["mean_values"] is not None:
        try:
            values = tuple(float(value) for value in args["mean_values"].split(","))
        except ValueError:
            raise ValidateError(
                f"--mean-values {args['mean_values']!r}: expected numbers like 104,117,123"
            ) from None
        overrides.update(mean_bgr=values, mean_file=None)
    if args["mean_file"] is not None:
        overrides.update(mean_file=str(args["mean_file"]), mean_bgr=None)
    return overrides


def _card_mean_file(card: ModelCard, args: dict) -> Path | None:
    """The card's mean image, looked for next to the weights and the prototxt."""
    if card.mean_file is None:
        return None
    folders = [Path(args[key]).parent for key in ("weights", "prototxt") if args[key] is not None]
    return next((folder / card.mean_file for folder in folders if (folder / card.mean_file).is_file()), None)


def _protocol(args: dict) -> Protocol:
    """Preprocessing, published figures (None when not comparable) and class order of the run."""
    if args["card"] is not None and args["model"] is not None:
        raise ValidateError("give --model (a SENet release) or --card (any release), not both")
    overrides = _preprocess_overrides(args)
    card = find_card(args["card"]) if args["card"] is not None else None
    description = _weights_description(args["model"])
    published = None
    if card is not None:
        preprocess = card.transforms(_card_mean_file(card, args), **overrides)
        published = card.published_for(preprocess)
        order = card.class_order or imagenet.ClassOrder.DEVKIT
    elif description is not None:
        base = description.transforms()
        preprocess = dataclasses.replace(base, **overrides)
        if preprocess == base:
            published = Published(
                description.top1_err, description.top5_err, "center-crop", "hujie-frank/SENet README"
            )
        order = description.class_order
    else:
        preprocess = dataclasses.replace(CaffePreprocess(), **overrides)
        order = imagenet.ClassOrder.DEVKIT
    if args["check"] and published is None:
        raise ValidateError(
            "--check needs a published figure for this protocol: give --model or --card at its preprocessing"
            + (
                f" ({card.name} publishes: {', '.join(f.protocol for f in card.published) or 'none'})"
                if card
                else ""
            )
        )
    return Protocol(preprocess, published, imagenet.class_order(args["class_order"] or order), card)


def _label_set_size(protocol: Protocol, args: dict) -> int | None:
    """Classes of the label set given (--label-set, or the model card's); None: not given."""
    if args["label_set"] is not None:
        return len(read_label_set(args["label_set"]))
    return protocol.card.num_classes if protocol.card is not None else None


def _num_outputs(valset: ValSet, protocol: Protocol, args: dict) -> int | None:
    """How many scores per image the network must give (None: a list layout without a label set)."""
    classes = _label_set_size(protocol, args)
    if classes is None and valset.label_order != OUTPUT_ORDER:
        return imagenet.NUM_CLASSES
    return classes


def _label_map(valset: ValSet, protocol: Protocol, args: dict) -> list[int] | None:
    """Dataset labels -> the network's output indices (None: already those)."""
    classes = _label_set_size(protocol, args)
    if valset.label_order == OUTPUT_ORDER:
        if classes is not None and max(valset.labels) >= classes:
            raise ValidateError(
                f"{valset.label_source}: label {max(valset.labels)}, but the label set has {classes} classes"
            )
        return None
    if protocol.card is not None and protocol.card.label_set != IMAGENET_1K:
        raise ValidateError(
            f"{protocol.card.name} classifies {protocol.card.label_set}: give --layout list and --labels"
        )
    if protocol.class_order == imagenet.ClassOrder.DEVKIT:
        return None
    devkit = imagenet.imagenet_classes(imagenet.ClassOrder.DEVKIT)
    return devkit.permutation_to(imagenet.imagenet_classes(protocol.class_order))


def _decoder(result: EvalResult) -> dict:
    """Which decoder read how many images: nvJPEG, or the CPU for files it cannot take."""
    if not result.decoded:
        return {"name": "libjpeg-turbo (torchvision.io, CPU)", "images": result.images}
    return {"name": "nvjpeg (GPU) with CPU routes", "routes": result.decoded}


def _backend(args: dict, device: torch.device) -> Backend:
    try:
        return load_backend(
            args["backend"],
            weights=args["weights"],
            device=device,
            model=args["model"],
            prototxt=args["prototxt"],
            output=args["output_blob"],
            amp=args["amp"],
            tf32=args["tf32"],
            fold=not args["no_fold"],
            compile=args["compile"],
        )
    except InputError:  # ValidateError and the model zoo's errors already say what is wrong
        raise
    except Exception as exc:  # loaders of three libraries, each with its own error types
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValidateError(f"cannot load {args['weights']}: {type(exc).__name__}: {detail}") from None


def _declared_order(backend: Backend, args: dict, protocol: Protocol) -> Protocol:
    """The protocol in the class order the weights' header declares; a contradicting --class-order fails."""
    if backend.class_order is None:
        return protocol
    given = args["class_order"]
    if given is not None and imagenet.class_order(given) != backend.class_order:
        raise ValidateError(
            f"--class-order {given}, but {args['weights']} declares the {backend.class_order} order"
        )
    return dataclasses.replace(protocol, class_order=imagenet.class_order(backend.class_order))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--model",
    help="Network name (e.g. se_resnext50): its published errors, preprocessing and "
    "class order. For --backend torch: default the network the checkpoint's header names.",
)
@click.option(
    "--weights",
    required=True,
    type=_FILE,
    help="Converted state_dict (torch), caffemodel (graph) or .onnx (onnxruntime).",
)
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="ImageNet val (torchvision root, ImageFolder tree, flat folder with a labels file), or the "
    "folder a --layout list file's paths are relative to (any label set, e.g. Places365).",
)
@click.option("--backend", type=click.Choice(BACKENDS), default="torch", show_default=True)
@click.option("--prototxt", type=_FILE, help="Deploy prototxt for --backend graph.")
@click.option(
    "--output-blob",
    help="Output to score (graph: blob name, default the input of a final "
    "Softmax; onnxruntime: output name, default the first).",
)
@click.option(
    "--labels",
    type=_FILE,
    help="Labels file: for a flat folder ILSVRC2017_val.txt or the devkit ground truth (found "
    "automatically next to the images); for --layout list a Caffe image list 'path label'.",
)
@click.option("--layout", type=choices(FolderLayout, "auto"), default="auto", show_default=True)
@click.option("--device", type=click.Choice(["cuda", "cpu"]), help="Default: cuda when available.")
@click.option("--batch-size", type=click.IntRange(1), default=100, show_default=True)
@click.option("--workers", type=click.IntRange(0), help="Data loader processes (default: min(8, CPUs)).")
@click.option("--limit", type=click.IntRange(1), help="Only the first N images (sorted by file name).")
@click.option(
    "--classes",
    help="Only these classes: a number K (K classes evenly spaced in the devkit "
    "order) or comma-separated wnids / class names.",
)
@click.option(
    "--card",
    help="Model card of a Caffe release (e.g. bvlc_alexnet, resnet50, places365_vgg16; "
    "or FILE.json[:NAME]): preprocessing, label set, class order and published figures.",
)
@click.option("--resize", type=click.IntRange(1), help="Resize target (default: the model's, 256).")
@click.option(
    "--resize-mode",
    type=click.Choice(RESIZE_MODES),
    help="shorter: shorter side to --resize; warp: to --resize x --resize, as the BVLC LMDBs.",
)
@click.option("--crop", type=click.IntRange(1), help="Crop size (default: the model's, 224).")
@click.option(
    "--ten-crop/--centre-crop",
    default=None,
    help="Ten crops (corners, centre, mirrors; softmax averaged) or the centre crop (default: the model's).",
)
@click.option("--mean-file", type=_FILE, help="Caffe mean image (.binaryproto), cropped as Caffe crops it.")
@click.option("--mean-values", help="Per-channel means B,G,R (or one value), e.g. 104,117,123.")
@click.option("--scale", type=click.FloatRange(0, min_open=True), help="Multiply after the mean, e.g. 0.017.")
@click.option(
    "--channel-order", type=click.Choice(CHANNEL_ORDERS), help="Channel order of the net (default BGR)."
)
@click.option(
    "--label-set",
    type=_FILE,
    help="Class names in output order (e.g. categories_places365.txt), to check the labels against.",
)
@click.option(
    "--class-order",
    type=choices(imagenet.ClassOrder),
    help="Class order of the network's outputs (default: the model's, devkit).",
)
@click.option("--tf32", is_flag=True, help="Allow TF32 matmuls/convolutions on GPU (default: strict fp32).")
@click.option("--amp", is_flag=True, help="Autocast to float16 (GPU) / bfloat16 (CPU).")
@click.option(
    "--no-fold",
    is_flag=True,
    help="torch backend: run the model as loaded, not BatchNorm-folded into the convolutions in "
    "channels_last (the default: the same numbers to float32 round-off, faster).",
)
@click.option(
    "--compile",
    is_flag=True,
    help="torch/graph backends: torch.compile the model (tens of seconds to compile; pays off "
    "over a full validation set, most on a GPU).",
)
@click.option(
    "--gpu-decode",
    is_flag=True,
    help="Decode JPEGs with nvJPEG on the GPU (--device cuda). Pixels differ from libjpeg-turbo "
    "(torchvision's own bound: mean absolute difference < 2); CMYK and truncated JPEGs go to the CPU.",
)
@click.option("--strict", is_flag=True, help="Stop at the first unreadable image (exit 2).")
@click.option(
    "--check", is_flag=True, help="Exit 1 when an error is further than --tolerance from published."
)
@click.option(
    "--tolerance", type=click.FloatRange(0), default=0.1, show_default=True, help="Percentage points."
)
@click.option("--report", type=OUTPUT, help="Write everything as JSON.")
@force_option
@user_errors
def main(**args) -> None:
    """Measure top-1/top-5 error of a classifier and compare with its release's published figures.

    --model names a SENet release, --card any other (bvlc_alexnet, resnet50, places365_vgg16,
    ...); flags override their preprocessing. ImageNet labels are mapped to the network's
    class order; a --layout list file (any label set) holds the network's own indices.
    Default preprocessing is the SENet protocol (shorter side 256 with OpenCV bilinear,
    centre 224, BGR minus 104/117/123). Works under torchrun: each rank evaluates a
    disjoint shard, rank 0 reports.
    """
    guard_outputs([args["report"]] if args["report"] else [], force=args["force"])
    device = _resolve_device(args["device"], int(os.environ.get("LOCAL_RANK", "0")))
    if args["gpu_decode"] and device.type != "cuda":
        raise ValidateError("--gpu-decode needs --device cuda")
    distributed = init_distributed(device.type)
    protocol = _protocol(args)
    preprocess, published, class_order = protocol.preprocess, protocol.published, protocol.class_order
    classes = _class_subset(args["classes"])
    valset = open_valset(args["data"], layout=args["layout"], labels_file=args["labels"])
    if classes is not None and valset.label_order == OUTPUT_ORDER:
        raise ValidateError("--classes picks ImageNet classes; a list layout takes --limit only")
    valset = valset.subset(classes, args["limit"])
    if len(valset) == 0:
        raise ValidateError("no images left after --classes/--limit")
    configure_precision(device, tf32=args["tf32"])
    backend = _backend(args, device)
    protocol = _declared_order(backend, args, protocol)
    class_order = protocol.class_order
    label_map = _label_map(valset, protocol, args)
    check_backend(
        backend,
        preprocess.crop,
        _num_outputs(valset, protocol, args),
        args["batch_size"],
        str(args["weights"]),
    )
    options = EvalOptions(batch_size=args["batch_size"], gpu_decode=args["gpu_decode"], strict=args["strict"])
    if args["workers"] is not None:
        options.workers = args["workers"]
    if distributed.is_main:
        click.echo(
            f"senet-validate: {args['model'] or args['card'] or args['weights'].name} "
            f"on {_device_name(device)} "
            f"x{distributed.world_size}, {backend.description}; {len(valset)} images "
            f"({valset.layout} layout, labels from {valset.label_source}), class order {class_order}",
            err=True,
        )
    result = evaluate(
        backend, valset, preprocess, label_map=label_map, options=options, distributed=distributed
    )
    if distributed.world_size > 1:
        dist.destroy_process_group()
    full_size = imagenet.NUM_VAL_IMAGES if valset.label_order == imagenet.ClassOrder.DEVKIT else None
    verdict, passed = _verdict(result, published, args["tolerance"], full_size)
    if distributed.is_main:
        for name, message in result.unreadable:
            click.echo(f"unreadable: {name}: {message}", err=True)
        click.echo(_table(result, published, verdict))
        if args["report"]:
            _report(
                args["report"],
                args=args,
                backend=backend,
                valset=valset,
                preprocess=preprocess,
                class_order=class_order,
                card=protocol.card,
                result=result,
                published=published,
                verdict=verdict,
                device=device,
                weights=args["weights"],
            )
    if args["check"] and not passed:
        sys.exit(1)


if __name__ == "__main__":  # `python -m senet_repro.cli.validate`, e.g. under torchrun
    main()
