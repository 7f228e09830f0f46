"""Inference speed of a converted net: PyTorch, PyTorch with BN folded, ONNX Runtime, OpenCV.

    python -m bench.bench_convert [--nets SE-ResNet-50 SE-ResNeXt-50] [--batches 1 16]

For SE-ResNet-50 and SE-ResNeXt-50 with seeded random calibrated weights
(tests/caffe_factory.py, cached outside the repository), side by side on the CPU:

  pytorch            the converted torch.fx GraphModule (torch.inference_mode);
  pytorch-folded     the same with BatchNorm+Scale folded into the convolutions;
  pytorch-folded-cl  that in channels_last memory format (the input converted inside the
                     timed call), which spares oneDNN its per-layer layout reorders;
  onnxruntime        ONNX Runtime (CPU provider) on the exported .onnx;
  opencv             OpenCV DNN on the portable prototxt + caffemodel (OpenCV's own Axpy is
                     wrong and runs batch 1 only, so the original prototxt is no fair runner).

All runners use the same number of threads, and none of them spins while it waits for
work (OMP_WAIT_POLICY=PASSIVE for PyTorch's OpenMP, no intra-op spinning in ONNX Runtime):
on a machine whose cores other processes share, spinning threads slow PyTorch at 2 threads
down 3-4x (measured), which would compare the load rather than the runners. The runners
are timed round-robin (one call of each in turn, repeated), so that load from other
processes spreads evenly over them; the table reports the median latency, images/s, speed
relative to OpenCV, and each runner's max abs difference from PyTorch on the 'prob' blob.
With CUDA, the PyTorch runners get GPU rows too. Results go to bench/results/convert.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

# Before torch loads OpenMP, which reads it once.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import cv2
import numpy as np
import onnxruntime as ort
import torch

from converter import convert
from converter.calibrate import image_like
from converter.fold import fold_batchnorm
from converter.onnx_export import export_onnx
from prototxt import Net, load_net, portable_net, write_prototxt
from tests.caffe_factory import make_random_caffemodel

REPO = Path(__file__).resolve().parent.parent

SENET_DIR = REPO.parent / "shared" / "senet-caffe"
RESULTS = REPO / "bench" / "results" / "convert.md"
REFERENCE = "opencv"

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass
class Row:
    net: str
    device: str
    batch: int
    runner: str
    median_s: float
    difference: float

    @property
    def images_per_s(self) -> float:
        return self.batch / self.median_s


def torch_runner(module: torch.nn.Module, device: str, channels_last: bool = False) -> Runner:
    layout = torch.channels_last if channels_last else torch.contiguous_format
    module = module.to(device).to(memory_format=layout)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = module(torch.from_numpy(x).to(device).contiguous(memory_format=layout))
            return out.cpu().numpy()

    return run


def onnx_runner(path: Path, threads: int) -> Runner:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"data": x})[0]


def opencv_runner(net: Net, caffemodel: Path, scratch: Path) -> Runner:
    prototxt = scratch / f"{net.name}-portable.prototxt"
    write_prototxt(portable_net(net.to_proto()), prototxt)
    reader = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    reader.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    reader.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)

    def run(x: np.ndarray) -> np.ndarray:
        reader.setInput(x)
        return np.array(reader.forward("prob"))

    return run


def runners(name: str, threads: int, scratch: Path) -> dict[tuple[str, str], Runner]:
    """(device, runner name) -> runner, for the random calibrated net `name`."""
    prototxt, caffemodel = make_random_caffemodel(SENET_DIR / f"{name}.prototxt")
    net = load_net(prototxt, caffemodel)
    onnx_path = scratch / f"{name}.onnx"
    export_onnx(convert(net, ["prob"]), onnx_path, image_like((1, 3, 224, 224), seed=0))
    folded = lambda: fold_batchnorm(convert(net, ["prob"]), "conv")  # noqa: E731
    found = {
        ("cpu", "pytorch"): torch_runner(convert(net, ["prob"]), "cpu"),
        ("cpu", "pytorch-folded"): torch_runner(folded(), "cpu"),
        ("cpu", "pytorch-folded-cl"): torch_runner(folded(), "cpu", channels_last=True),
        ("cpu", "onnxruntime"): onnx_runner(onnx_path, threads),
        ("cpu", REFERENCE): opencv_runner(net, caffemodel, scratch),
    }
    if torch.cuda.is_available():
        found[("cuda", "pytorch")] = torch_runner(convert(net, ["prob"]), "cuda")
        found[("cuda", "pytorch-folded-cl")] = torch_runner(folded(), "cuda", channels_last=True)
    return found


def time_round_robin(
    found: dict[tuple[str, str], Runner], x: np.ndarray, warmup: int, repeats: int
) -> dict[tuple[str, str], tuple[float, np.ndarray]]:
    """Median seconds per call of each runner and its output, timed in turns."""
    outputs = {key: run(x) for key, run in found.items()}
    for _ in range(warmup - 1):
        for run in found.values():
            run(x)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in found}
    for _ in range(repeats):
        for key, run in found.items():
            if key[0] == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            run(x)
            if key[0] == "cuda":
                torch.cuda.synchronize()
            times[key].append(time.perf_counter() - start)
    return {key: (statistics.median(times[key]), outputs[key]) for key in found}


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} logical CPUs{gpu}"


def write_table(rows: list[Row], threads: int, load: tuple[float, float], seconds: float) -> str:
    lines = [
        "# Converted SENets: inference speed per runner",
        "",
        f"`python -m bench.bench_convert`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{seconds:.0f} s. Machine: {machine()}; {threads} threads for every CPU runner, "
        f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, ONNX Runtime without spinning. "
        f"torch {torch.__version__}, onnxruntime {ort.__version__}, OpenCV {cv2.__version__}.",
        f"Load average (1 min) before / after: {load[0]:.1f} / {load[1]:.1f} (other processes "
        "share these cores; the runners are timed in turns so they share the noise).",
        "",
        "Random calibrated weights (tests/caffe_factory.py), input 3x224x224. OpenCV runs the "
        "portable prototxt (its own Axpy is wrong). `vs OpenCV`: OpenCV's median latency "
        "divided by the runner's (above 1 = faster). `diff`: max abs difference from the "
        "converted PyTorch net on the softmax output.",
        "",
        "| net | device | batch | runner | median latency (ms) | images/s | vs OpenCV | diff |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        reference = next(
            (
                r
                for r in rows
                if (r.net, r.batch, r.runner, r.device) == (row.net, row.batch, REFERENCE, "cpu")
            ),
            None,
        )
        ratio = f"{reference.median_s / row.median_s:.2f}x" if reference else "-"
        lines.append(
            f"| {row.net} | {row.device} | {row.batch} | {row.runner} | "
            f"{row.median_s * 1e3:.1f} | {row.images_per_s:.1f} | {ratio} | "
            f"{row.difference:.1e} |"
        )
    text = "\n".join(lines) + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", nargs="+", default=["SE-ResNet-50", "SE-ResNeXt-50"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=10, help="timed calls at batch 1")
    parser.add_argument("--large-repeats", type=int, default=4, help="timed calls at batch > 1")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.nets:
            found = runners(name, args.threads, Path(scratch))
            for batch in args.batches:
                x = image_like((batch, 3, 224, 224), seed=1).numpy()
                repeats = args.repeats if batch == 1 else args.large_repeats
                measured = time_round_robin(found, x, warmup=2, repeats=repeats)
                expected = measured[("cpu", "pytorch")][1]
                for (device, runner), (median, output) in measured.items():
                    difference = float(np.abs(output.reshape(expected.shape) - expected).max())
                    rows.append(Row(name, device, batch, runner, median, difference))
                    print(
                        f"{name} {device} batch {batch} {runner}: {median * 1e3:.1f} ms, "
                        f"diff {difference:.1e}",
                        flush=True,
                    )
    print(write_table(rows, args.threads, (load_before, os.getloadavg()[0]), time.perf_counter() - started))


if __name__ == "__main__":
    main()
