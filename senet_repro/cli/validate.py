"""senet-validate: top-1/top-5 error of a converted SENet on ImageNet val, next to the published figures."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click
import torch
import torch.distributed as dist

from prototxt import InputError
from prototxt.atomic import atomic_writer
from senet_repro import imagenet
from senet_repro.transforms import CaffePreprocess
from senet_repro.validate import (
    BACKENDS,
    LAYOUTS,
    Backend,
    EvalOptions,
    EvalResult,
    ValidateError,
    ValSet,
    configure_precision,
    evaluate,
    init_distributed,
    load_backend,
    open_valset,
)

from ._common import OUTPUT, force_option, guard_outputs, user_errors

if TYPE_CHECKING:
    from senet_repro.models import CaffeWeights

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@dataclass(frozen=True)
class Published:
    top1_error: float
    top5_error: float


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
    classes = imagenet.imagenet_classes(imagenet.DEVKIT)
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


def _verdict(result: EvalResult, published: Published | None, tolerance: float) -> tuple[str, bool | None]:
    """A short verdict and whether it passes (None: nothing to compare with)."""
    if published is None:
        return "no published figures to compare with", None
    passed = (
        abs(result.top1_error - published.top1_error) <= tolerance
        and abs(result.top5_error - published.top5_error) <= tolerance
    )
    verdict = (
        f"{'PASS' if passed else 'FAIL'}: {'within' if passed else 'further than'} "
        f"{tolerance:g} pp of published"
    )
    if result.images != imagenet.NUM_VAL_IMAGES:
        verdict += f" (partial run: {result.images} of {imagenet.NUM_VAL_IMAGES} images, indicative only)"
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
    result: EvalResult,
    published: Published | None,
    verdict: str,
    device: torch.device,
    weights: Path,
) -> None:
    report = {
        "command": sys.argv,
        "model": args["model"],
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
        "preprocessing": {
            "resize": preprocess.resize,
            "crop": preprocess.crop,
            "mean_bgr": None if preprocess.mean_bgr is None else list(preprocess.mean_bgr),
            "interpolation": preprocess.interpolation,
            "decoder": _decoder(result),
        },
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
        "published": None
        if published is None
        else {"top1_error": published.top1_error, "top5_error": published.top5_error},
        "difference": None
        if published is None
        else {
            "top1_error": result.top1_error - published.top1_error,
            "top5_error": result.top5_error - published.top5_error,
        },
        "tolerance": args["tolerance"],
        "verdict": verdict,
        "environment": _environment(device, result.world_size),
    }
    with atomic_writer(path) as handle:
        handle.write((json.dumps(report, indent=2) + "\n").encode("utf-8"))


def _protocol(args: dict) -> tuple[CaffePreprocess, Published | None, str]:
    """Preprocessing, published figures (None when not comparable) and class order of the run."""
    description = _weights_description(args["model"])
    base = description.transforms() if description is not None else CaffePreprocess()
    preprocess = CaffePreprocess(
        resize=args["resize"] or base.resize,
        crop=args["crop"] or base.crop,
        mean_bgr=base.mean_bgr,
        interpolation=base.interpolation,
    )
    published = None
    if description is not None and (preprocess.resize, preprocess.crop) == (base.resize, base.crop):
        published = Published(description.top1_err, description.top5_err)
    if args["check"] and published is None:
        raise ValidateError("--check needs published figures: give --model, at its own --resize/--crop")
    order = args["class_order"] or (description.class_order if description is not None else imagenet.DEVKIT)
    return preprocess, published, imagenet.class_order(order)


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
        )
    except InputError:  # ValidateError and the model zoo's errors already say what is wrong
        raise
    except Exception as exc:  # loaders of three libraries, each with its own error types
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValidateError(f"cannot load {args['weights']}: {type(exc).__name__}: {detail}") from None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--model",
    help="Network name (e.g. se_resnext50): its published errors, preprocessing and "
    "class order. Required for --backend torch.",
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
    help="ImageNet val: torchvision root, ImageFolder tree, or flat folder with a labels file.",
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
    help="Labels file for a flat folder (ILSVRC2017_val.txt or the devkit "
    "ground truth); found automatically next to the images.",
)
@click.option("--layout", type=click.Choice(["auto", *LAYOUTS]), default="auto", show_default=True)
@click.option("--device", type=click.Choice(["cuda", "cpu"]), help="Default: cuda when available.")
@click.option("--batch-size", type=click.IntRange(1), default=100, show_default=True)
@click.option("--workers", type=click.IntRange(0), help="Data loader processes (default: min(8, CPUs)).")
@click.option("--limit", type=click.IntRange(1), help="Only the first N images (sorted by file name).")
@click.option(
    "--classes",
    help="Only these classes: a number K (K classes evenly spaced in the devkit "
    "order) or comma-separated wnids / class names.",
)
@click.option("--resize", type=click.IntRange(1), help="Shorter side (default: the model's, 256).")
@click.option("--crop", type=click.IntRange(1), help="Centre crop (default: the model's, 224).")
@click.option(
    "--class-order",
    type=click.Choice(imagenet.CLASS_ORDERS),
    help="Class order of the network's outputs (default: the model's, devkit).",
)
@click.option("--tf32", is_flag=True, help="Allow TF32 matmuls/convolutions on GPU (default: strict fp32).")
@click.option("--amp", is_flag=True, help="Autocast to float16 (GPU) / bfloat16 (CPU).")
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
    """Measure top-1/top-5 error on ImageNet val and compare with the SENet release.

    Labels are mapped to the network's class order; preprocessing is the Caffe protocol
    (shorter side 256 with OpenCV bilinear, centre 224, BGR minus 104/117/123). Works
    under torchrun: each rank evaluates a disjoint shard, rank 0 reports.
    """
    guard_outputs([args["report"]] if args["report"] else [], force=args["force"])
    device = _resolve_device(args["device"], int(os.environ.get("LOCAL_RANK", "0")))
    if args["gpu_decode"] and device.type != "cuda":
        raise ValidateError("--gpu-decode needs --device cuda")
    distributed = init_distributed(device.type)
    preprocess, published, class_order = _protocol(args)
    label_map = None
    if class_order != imagenet.DEVKIT:
        devkit = imagenet.imagenet_classes(imagenet.DEVKIT)
        label_map = devkit.permutation_to(imagenet.imagenet_classes(class_order))
    classes = _class_subset(args["classes"])
    valset = open_valset(args["data"], layout=args["layout"], labels_file=args["labels"])
    valset = valset.subset(classes, args["limit"])
    if len(valset) == 0:
        raise ValidateError("no images left after --classes/--limit")
    configure_precision(device, tf32=args["tf32"])
    backend = _backend(args, device)
    options = EvalOptions(batch_size=args["batch_size"], gpu_decode=args["gpu_decode"], strict=args["strict"])
    if args["workers"] is not None:
        options.workers = args["workers"]
    if distributed.is_main:
        click.echo(
            f"senet-validate: {args['model'] or args['weights'].name} on {_device_name(device)} "
            f"x{distributed.world_size}, {backend.description}; {len(valset)} images "
            f"({valset.layout} layout, labels from {valset.label_source}), class order {class_order}",
            err=True,
        )
    result = evaluate(
        backend, valset, preprocess, label_map=label_map, options=options, distributed=distributed
    )
    if distributed.world_size > 1:
        dist.destroy_process_group()
    verdict, passed = _verdict(result, published, args["tolerance"])
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
