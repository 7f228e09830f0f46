"""Is senet-validate the bottleneck? End-to-end images/s on JPEG files vs the bare forward pass.

Side by side in one run, at the same batch size on the same device: (1) the model's own
forward throughput on a batch already on the device, (2) the harness end to end --
reading JPEG files, decoding, resizing, cropping, copying, normalising, running the
model and counting -- on a folder of ImageNet-sized JPEGs. The goal on a GPU is (2) >=
80 % of (1); on a CPU the loader and the model share the cores, and the ratio says how
much the data path costs. Weights are random: throughput does not depend on them.

    python -m bench.bench_validate                        # CPU here, CUDA when present
    python -m bench.bench_validate --data /imagenet/val   # real images instead of synthetic

Writes (or updates its device's section of) bench/results/validate.md.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from senet_repro import imagenet
from senet_repro.models import get_model
from senet_repro.transforms import CaffePreprocess
from senet_repro.validate import EvalOptions, TorchBackend, configure_precision, evaluate, open_valset

RESULTS = Path(__file__).resolve().parent / "results" / "validate.md"


def imagenet_like_jpeg(seed: int) -> bytes:
    """A 500x375 (or 375x500) photo-like JPEG of about the size of an ImageNet val image."""
    rng = np.random.default_rng(seed)
    height, width = (375, 500) if seed % 4 else (500, 375)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 6.3, size=3)
    pixels = np.stack(
        [
            128 + 90 * np.sin(x / rng.uniform(5, 40) + phase[c]) * np.cos(y / rng.uniform(5, 40))
            for c in range(3)
        ],
        axis=-1,
    )
    pixels = np.clip(pixels + rng.normal(0, 18, pixels.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def synthetic_valset(folder: Path, count: int) -> Path:
    """`count` files named like ImageNet val images (64 distinct JPEGs, repeated), with labels."""
    distinct = [imagenet_like_jpeg(seed) for seed in range(min(64, count))]
    lines = []
    for number in range(1, count + 1):
        name = imagenet.val_image_name(number)
        (folder / name).write_bytes(distinct[number % len(distinct)])
        lines.append(f"{name} {number % imagenet.NUM_CLASSES}\n")
    (folder / imagenet.SENET_LABELS).write_text("".join(lines))
    return folder


def forward_throughput(backend: TorchBackend, batch_size: int, crop: int, seconds: float) -> float:
    """Images/s of the backend alone on one pre-loaded normalised batch (after warm-up)."""
    batch = CaffePreprocess(resize=crop, crop=crop).normalise(
        torch.randint(0, 256, (batch_size, 3, crop, crop), dtype=torch.uint8, device=backend.device)
    )
    for _ in range(3):
        backend(batch)
    synchronize(backend.device)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or runs < 3:
        backend(batch)
        runs += 1
    synchronize(backend.device)
    return runs * batch_size / (time.perf_counter() - start)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class NullNet(torch.nn.Module):
    """Zero logits at no cost: evaluating it measures the data path alone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], imagenet.NUM_CLASSES)


@dataclass
class Row:
    setting: str
    forward: float
    end_to_end: float
    data_only: float

    @property
    def ratio(self) -> float:
        return self.end_to_end / self.forward


def measure(args: argparse.Namespace, data: Path, device: torch.device) -> list[Row]:
    preprocess = CaffePreprocess(resize=args.resize, crop=args.crop)
    valset = open_valset(data).subset(limit=args.images)
    rows = []
    settings = [("fp32", False, False)]
    if device.type == "cuda":
        settings += [("fp32, nvJPEG decode", False, True), ("amp fp16", True, False)]
    for name, amp, gpu_decode in settings:
        backend = TorchBackend(get_model(args.model), device, amp=amp)
        forward = forward_throughput(backend, args.batch_size, args.crop, args.forward_seconds)
        options = EvalOptions(
            batch_size=args.batch_size, workers=args.workers, gpu_decode=gpu_decode, progress=False
        )
        evaluate(backend, valset.subset(limit=args.batch_size), preprocess, options=options)  # warm-up
        result = evaluate(backend, valset, preprocess, options=options)
        data_only = evaluate(TorchBackend(NullNet(), device), valset, preprocess, options=options)
        rows.append(Row(name, forward, result.images_per_second, data_only.images_per_second))
        print(
            f"{name:22s} forward {forward:8.1f} img/s   end-to-end {result.images_per_second:8.1f} img/s   "
            f"ratio {rows[-1].ratio:.2f}   data path alone {data_only.images_per_second:8.1f} img/s "
            f"({result.images} images)"
        )
    return rows


def device_title(device: torch.device, workers: int) -> str:
    if device.type == "cuda":
        return (
            f"cuda: {torch.cuda.get_device_name(device)}, {os.cpu_count()} CPU cores, "
            f"{workers} loader workers"
        )
    return f"cpu: {os.cpu_count()} cores, {workers} loader workers"


def write_section(title: str, body: str) -> None:
    """Replace this device's section of the results file, keeping the others."""
    header = (
        "# senet-validate: end-to-end vs forward-only throughput\n\n"
        "Written by `bench/bench_validate.py`. Goal on a GPU: end-to-end >= 80 % of forward-only.\n"
    )
    sections: dict[str, str] = {}
    if RESULTS.is_file():
        for chunk in RESULTS.read_text().split("\n## ")[1:]:
            name, _, rest = chunk.partition("\n")
            sections[name] = rest.strip("\n")
    sections[title] = body
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(header + "".join(f"\n## {name}\n\n{text}\n" for name, text in sections.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="se_resnext50_32x4d")
    parser.add_argument(
        "--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--batch-size", type=int, help="default: 128 on CUDA, 4 on CPU")
    parser.add_argument("--images", type=int, help="default: 8192 on CUDA, 16 on CPU")
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--resize", type=int, default=256)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument(
        "--forward-seconds", type=float, default=5.0, help="how long to time the forward pass"
    )
    parser.add_argument("--data", type=Path, help="a real validation set instead of synthetic JPEGs")
    parser.add_argument("--no-write", action="store_true", help="print only, leave the results file alone")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.batch_size = args.batch_size or (128 if cuda else 4)
    args.images = args.images or (8192 if cuda else 16)
    configure_precision(device, tf32=False)
    with tempfile.TemporaryDirectory() as scratch:
        data = args.data or synthetic_valset(Path(scratch), args.images)
        rows = measure(args, data, device)
    title = device_title(device, args.workers)
    source = f"`{args.data}`" if args.data else "synthetic 500x375 JPEGs (quality 90)"
    lines = [
        f"{args.model}, batch {args.batch_size}, {args.images} images from {source}, "
        f"preprocessing {args.resize}/{args.crop}, torch {torch.__version__}; "
        f"1-minute load average {os.getloadavg()[0]:.1f} at the end of the run.",
        "",
        "| setting | forward only (img/s) | end to end (img/s) | end to end / forward "
        "| data path alone (img/s) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {row.setting} | {row.forward:.1f} | {row.end_to_end:.1f} | {row.ratio:.2f} "
        f"| {row.data_only:.1f} |"
        for row in rows
    ]
    if not cuda:
        lines += [
            "",
            "On a CPU the loader workers and the model share the same cores, so the ratio "
            "measures what the data path costs there; the 80 % goal is for GPUs. "
            "'data path alone' runs the harness with a zero-cost network.",
        ]
    if not args.no_write:
        write_section(title, "\n".join(lines))
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
