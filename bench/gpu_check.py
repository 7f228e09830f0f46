"""`make gpu-check`: every CUDA test, then one table of what a GPU changes, in under 8 minutes.

    python -m bench.gpu_check                # on the GPU: pytest -m cuda, then bench/results/gpu.md
    python -m bench.gpu_check --dry-run      # device cpu, tiny sizes (the test suite runs this)

Sections of the report, each on seeded random weights and generated images (no data needed):

1. CUDA fp32 vs CPU, per model: the seven clean SENets (`fast_eval`, what senet-validate runs),
   max |difference| of the logits relative to their scale, and top-1 agreement.
2. AMP and TF32 against strict fp32 on the miniature ImageNet (senet_repro/validate/
   fake_imagenet.py), through `evaluate`: top-1 error and its delta, predictions that change.
3. ONNX Runtime's CUDA provider (the torch-free export) against PyTorch fp32.
4. nvJPEG against the CPU decoder (libjpeg-turbo) on textured JPEGs: pixel differences and
   top-1 agreement of the network on the two decodings.
5. senet-validate throughput at batch 256: forward only (preprocessed batches already on the
   device) against end to end (files, decoding, resizing, forward), and their ratio (goal: end
   to end >= 80 % of forward only, with --gpu-decode).

The dry run does all of it on the CPU at tiny sizes (decoding on the CPU twice), so that the
script cannot rot where no GPU is; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

import onnxlower
from converter.calibrate import image_like
from converter.fold import fast_eval
from converter.modules import running_statistics
from converter.onnx_export import export_onnx
from senet_repro.models import get_model, list_models
from senet_repro.transforms import CaffePreprocess
from senet_repro.validate.backends import OnnxRuntimeBackend, TorchBackend
from senet_repro.validate.data import open_valset
from senet_repro.validate.errors import ValidateError
from senet_repro.validate.fake_imagenet import make_fake_imagenet
from senet_repro.validate.runner import EvalOptions, configure_precision, evaluate

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "gpu.md"


@dataclass
class Sizes:
    """What one run measures: the full check, or the dry run's tiny version."""

    models: list[str]
    input_hw: int
    batch: int  # forward batches of sections 1, 3, 4
    classes: int  # miniature ImageNet: classes x images per class
    per_class: int
    throughput_batch: int
    throughput_images: int
    jpegs: int


FULL = Sizes(list_models(), 224, 16, 10, 20, 256, 4096, 64)
DRY = Sizes(["se_resnet50"], 64, 2, 2, 2, 4, 8, 4)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.argmax(1) == b.argmax(1)).double().mean())


def model(name: str, seed: int = 0) -> torch.nn.Module:
    """A clean SENet with seeded random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    net = get_model(name)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            mean, var = running_statistics(module)
            torch.nn.init.uniform_(var, 0.5, 1.5)
            torch.nn.init.normal_(mean, 0.0, 0.1)
    return net.eval()


def cuda_vs_cpu(device: torch.device, sizes: Sizes) -> list[str]:
    rows = ["| model | CUDA vs CPU (relative) | top-1 agreement |", "| --- | ---: | ---: |"]
    x = image_like((sizes.batch, 3, sizes.input_hw, sizes.input_hw), seed=1)
    for name in sizes.models:
        cpu = TorchBackend(fast_eval(model(name)), torch.device("cpu"), channels_last=True)
        gpu = TorchBackend(fast_eval(model(name)), device, channels_last=True)
        expected, got = cpu(x), gpu(x.to(device)).cpu()
        rows.append(f"| {name} | {_relative(got, expected):.2e} | {_agreement(got, expected):.3f} |")
    return rows


def precision_deltas(device: torch.device, sizes: Sizes, scratch: Path) -> list[str]:
    fake = make_fake_imagenet(scratch / "fake", num_classes=sizes.classes, images_per_class=sizes.per_class)
    valset = open_valset(fake.layouts["flat"])
    preprocess = CaffePreprocess(resize=sizes.input_hw + sizes.input_hw // 7, crop=sizes.input_hw)
    options = EvalOptions(batch_size=sizes.batch, workers=0, keep_predictions=True, progress=False)
    runs = {}
    for name, amp, tf32 in (("fp32", False, False), ("amp", True, False), ("tf32", False, True)):
        configure_precision(device, tf32=tf32)
        backend = TorchBackend(fast_eval(model(sizes.models[0])), device, amp=amp, channels_last=True)
        runs[name] = evaluate(backend, valset, preprocess, options=options)
    configure_precision(device, tf32=False)
    rows = [
        f"{sizes.models[0]}, {runs['fp32'].images} images (random weights: the errors themselves mean "
        "nothing, their deltas and the changed predictions do)",
        "",
        "| precision | top-1 error (%) | delta vs fp32 (pp) | top-1 predictions changed |",
        "| --- | ---: | ---: | ---: |",
    ]
    reference = runs["fp32"].predictions or {}
    for name, result in runs.items():
        predictions = result.predictions or {}
        changed = sum(predictions[k][0] != reference[k][0] for k in reference)
        delta = result.top1_error - runs["fp32"].top1_error
        rows.append(f"| {name} | {result.top1_error:.2f} | {delta:+.2f} | {changed} / {len(reference)} |")
    return rows


def onnxruntime_vs_torch(device: torch.device, sizes: Sizes, scratch: Path) -> list[str]:
    """The torch-free export needs a Caffe net: the clean model goes through torch2onnx's export,
    then both exports run in ONNX Runtime on `device` against PyTorch fp32."""
    from prototxt import load_net
    from senet_repro.export_caffe import export_caffe

    name = sizes.models[0]
    prototxt, caffemodel = export_caffe(name, None, scratch / "caffe", False, seed=0)
    net = load_net(prototxt, caffemodel)
    lowered = onnxlower.write_onnx(onnxlower.lower(net, ["classifier"]), scratch / "lowered.onnx")[0]
    from converter import convert

    graph = convert(net, ["classifier"])
    exported = export_onnx(graph, scratch / "torch.onnx", image_like((1, 3, 224, 224)))
    x = image_like((sizes.batch, 3, 224, 224), seed=2).to(device)
    expected = TorchBackend(graph, device)(x).cpu()
    rows = [
        "| ONNX file | provider | vs PyTorch fp32 (relative) | top-1 agreement |",
        "| --- | --- | ---: | ---: |",
    ]
    for label, path in (("torch2onnx", exported), ("onnxlower", lowered)):
        try:
            backend = OnnxRuntimeBackend(path, device, output="classifier")
        except ValidateError as exc:  # onnxruntime without the CUDA provider: say so, go on
            rows.append(f"| {label} | - | {exc} | - |")
            continue
        got = backend(x).cpu()
        provider = backend.session.get_providers()[0]
        rows.append(
            f"| {label} | {provider} | {_relative(got, expected):.2e} | {_agreement(got, expected):.3f} |"
        )
    return rows


def textured_jpeg(seed: int, size: int) -> bytes:
    """A photo-like JPEG (smooth gradients plus noise), where decoders can differ."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(6 * x + seed), np.cos(5 * y - seed), np.sin(4 * (x + y))], -1) * 100 + 128
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def nvjpeg_vs_cpu(device: torch.device, sizes: Sizes) -> list[str]:
    preprocess = CaffePreprocess(resize=sizes.input_hw + sizes.input_hw // 7, crop=sizes.input_hw)
    files = [
        torch.frombuffer(bytearray(textured_jpeg(i, 300)), dtype=torch.uint8) for i in range(sizes.jpegs)
    ]
    cpu = [decode_jpeg(f, mode=ImageReadMode.RGB) for f in files]
    gpu = [image.cpu() for image in decode_jpeg(files, mode=ImageReadMode.RGB, device=device)]
    differences = torch.cat([(a.int() - b.int()).abs().flatten() for a, b in zip(cpu, gpu)]).double()
    net = TorchBackend(fast_eval(model(sizes.models[0])), device, channels_last=True)

    def logits(images: list[torch.Tensor]) -> torch.Tensor:
        batch = torch.stack([preprocess.normalise(preprocess.resize_views(i)[0]) for i in images])
        return net(batch.to(device)).cpu()

    agreement = _agreement(logits(gpu), logits(cpu))
    return [
        "| decoder pair | images | mean abs pixel diff | max | pixels differing | top-1 agreement |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| nvJPEG ({device.type}) vs libjpeg-turbo | {len(files)} | {float(differences.mean()):.3f} | "
        f"{int(differences.max())} | {float((differences > 0).double().mean()):.2%} | {agreement:.3f} |",
    ]


def throughput(device: torch.device, sizes: Sizes, scratch: Path) -> list[str]:
    folder = scratch / "throughput"
    folder.mkdir()
    names = []
    for i in range(sizes.throughput_images):
        name = f"ILSVRC2012_val_{i + 1:08d}.JPEG"
        (folder / name).write_bytes(textured_jpeg(i % 64, 375))
        names.append(f"{name} {i % 1000}")
    (folder / "ILSVRC2017_val.txt").write_text("\n".join(names) + "\n")
    valset = open_valset(folder, labels_file=folder / "ILSVRC2017_val.txt")
    preprocess = CaffePreprocess()
    backend = TorchBackend(fast_eval(model("se_resnext50_32x4d")), device, channels_last=True)
    batch = preprocess.normalise(
        torch.randint(0, 256, (sizes.throughput_batch, 3, 224, 224), dtype=torch.uint8)
    )
    batch = batch.to(device)
    backend(batch)
    synchronize: Callable[[], None] = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    synchronize()
    start, steps = time.perf_counter(), max(1, sizes.throughput_images // sizes.throughput_batch)
    for _ in range(steps):
        backend(batch)
    synchronize()
    forward = steps * sizes.throughput_batch / (time.perf_counter() - start)
    rows = [
        f"se_resnext50_32x4d (fast_eval, fp32), {sizes.throughput_images} JPEGs of 375x375, batch "
        f"{sizes.throughput_batch}",
        "",
        "| pipeline | images/s | of forward only | top-1 agreement with CPU decode |",
        "| --- | ---: | ---: | ---: |",
        f"| forward only | {forward:.0f} | 100 % | |",
    ]
    cpu_top1: dict[str, int] = {}
    for gpu_decode in [False, True] if device.type == "cuda" else [False]:
        options = EvalOptions(
            batch_size=sizes.throughput_batch, gpu_decode=gpu_decode, progress=False, keep_predictions=True
        )
        result = evaluate(backend, valset, preprocess, options=options)
        top1 = {name: top[0] for name, top in (result.predictions or {}).items()}
        cpu_top1 = cpu_top1 or top1  # the first run decodes on the CPU
        # The same network on nvJPEG's pixels: the proof that GPU decoding is ordered correctly
        # (a stream race shows up as garbage crops and a collapsing agreement).
        agreement = sum(top1[name] == cpu_top1[name] for name in top1) / max(1, len(top1))
        label = "end to end, nvJPEG + GPU resize" if gpu_decode else "end to end, CPU decode"
        rows.append(
            f"| {label} | {result.images_per_second:.0f} | {result.images_per_second / forward:.0%} "
            f"| {agreement:.3f} |"
        )
    return rows


def cuda_tests() -> str:
    """Every test marked `cuda` (they skip without a GPU); the summary line."""
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "-rs"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr[-300:]
    if run.returncode not in (0, 5):  # 5: none collected
        raise SystemExit(f"CUDA tests failed:\n{run.stdout[-3000:]}")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="device cpu, tiny sizes")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu-check needs a CUDA device (or --dry-run)")
    device, sizes = (torch.device("cpu"), DRY) if args.dry_run else (torch.device("cuda"), FULL)
    started = time.perf_counter()
    name = "dry run on the CPU (numbers meaningless)" if args.dry_run else torch.cuda.get_device_name()
    sections = [
        "# GPU check",
        "",
        f"`python -m bench.gpu_check{' --dry-run' if args.dry_run else ''}`, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {name}; torch {torch.__version__}.",
    ]
    if not args.dry_run:
        sections += ["", f"CUDA tests (`pytest -m cuda`): {cuda_tests()}"]
    with tempfile.TemporaryDirectory() as directory:
        scratch = Path(directory)
        parts = [
            ("CUDA fp32 vs CPU, per model", lambda: cuda_vs_cpu(device, sizes)),
            ("AMP and TF32 vs fp32, miniature ImageNet", lambda: precision_deltas(device, sizes, scratch)),
            ("ONNX Runtime vs PyTorch", lambda: onnxruntime_vs_torch(device, sizes, scratch)),
            ("nvJPEG vs CPU decoding", lambda: nvjpeg_vs_cpu(device, sizes)),
            ("senet-validate throughput", lambda: throughput(device, sizes, scratch)),
        ]
        for title, part in parts:
            print(f"== {title}", flush=True)
            rows = part()
            sections += ["", f"## {title}", "", *rows]
            print("\n".join(rows), flush=True)
    sections += ["", f"Total {time.perf_counter() - started:.0f} s."]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(sections) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
