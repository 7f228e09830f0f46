"""Inference speed of a converted SENet, every runner a user can pick, side by side.

    python -m bench.bench_convert [--nets SE-ResNet-50 SE-ResNeXt-50] [--batches 1 16]

For SE-ResNet-50 and SE-ResNeXt-50 with seeded random calibrated weights
(tests/caffe_factory.py, cached outside the repository), on the CPU:

  graph               the generic converted torch.fx GraphModule (torch.inference_mode);
  graph-fast          `converter.fold.fast_eval` of it: BatchNorm+Scale folded into the
                      convolutions, channels_last (the input converted inside the timed call);
  clean               the clean senet_repro.models module with the same weights;
  clean-folded        fast_eval without channels_last;
  clean-fast          fast_eval (what senet-validate's torch backend runs by default);
  clean-fast-compiled that under torch.compile (--no-compile leaves it out);
  onnxruntime         ONNX Runtime (CPU provider) on the PyTorch route's export (torch2onnx);
  onnxruntime-lowered ONNX Runtime on the torch-free export (onnxlower, caffe2onnx);
  opencv              OpenCV DNN on the portable prototxt + caffemodel (OpenCV's own Axpy is
                      wrong and runs batch 1 only, so the original prototxt is no fair runner);
  caffe               BVLC Caffe itself (~/.cache/caffe-reference/reference_forward --time,
                      when built: its own median of the same number of forwards).

All runners use the same number of threads, and none of them spins while it waits for
work (OMP_WAIT_POLICY=PASSIVE for PyTorch's OpenMP, no intra-op spinning in ONNX Runtime,
OPENBLAS_NUM_THREADS for Caffe): on a machine whose cores other processes share, spinning
threads slow PyTorch at 2 threads down 3-4x (measured), which would compare the load rather
than the runners. The runners are timed round-robin (one call of each in turn, repeated), so
that load from other processes spreads evenly over them; the table reports the median
latency, images/s, speed relative to OpenCV, and each runner's max abs difference from the
generic graph on the 'prob' blob. With CUDA, the PyTorch runners get GPU rows too (see
also `make gpu-check`). Results go to bench/results/convert.md (--output).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

# Before torch loads OpenMP, which reads it once.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import cv2
import numpy as np
import onnxruntime as ort
import torch

import onnxlower
from converter import convert
from converter.calibrate import image_like
from converter.fold import fast_eval
from converter.onnx_export import export_onnx
from prototxt import Net, load_net, portable_net, write_prototxt
from senet_repro.models import caffe_to_state_dict, get_model, recognise_model
from tests.caffe_factory import make_random_caffemodel
from tests.caffe_reference import REFERENCE_BINARY, reference_available

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


def torch_runner(
    module: torch.nn.Module, device: str, channels_last: bool = False, softmax: bool = False
) -> Runner:
    """A PyTorch module as a runner; `softmax` turns a clean model's logits into 'prob'."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    module = module.to(device).to(memory_format=layout)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = module(torch.from_numpy(x).to(device).contiguous(memory_format=layout))
            return (torch.softmax(out, 1) if softmax else out).cpu().numpy()

    return run


def onnx_runner(path: Path, threads: int) -> Runner:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(["prob"], {"data": x})[0]


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


def caffe_measurement(
    prototxt: Path, caffemodel: Path, x: np.ndarray, threads: int, repeats: int, scratch: Path
) -> tuple[float, np.ndarray]:
    """BVLC Caffe's median seconds per forward (its own timer, `repeats` forwards) and 'prob'."""
    np.save(scratch / "input.npy", x)
    out = scratch / "caffe-out"
    out.mkdir(exist_ok=True)
    command = [str(REFERENCE_BINARY), "--prototxt", str(prototxt), "--weights", str(caffemodel)]
    command += ["--input", str(scratch / "input.npy"), "--outdir", str(out), "--blobs", "prob"]
    command += ["--time", str(repeats)]
    environment = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    run = subprocess.run(command, capture_output=True, text=True, check=True, env=environment)
    median_ms = float(run.stdout.split("median forward: ")[1].split(" ms")[0])
    filename = (out / "manifest.tsv").read_text().split("\t")[0]
    return median_ms / 1e3, np.load(out / filename)


def runners(
    prototxt: Path, caffemodel: Path, threads: int, scratch: Path, compile: bool
) -> dict[tuple[str, str], Runner]:
    """(device, runner name) -> runner, for the net in `prototxt` and `caffemodel`."""
    net = load_net(prototxt, caffemodel)
    shape = next(iter(net.inputs.values()))
    model_name = recognise_model(net.weights())

    def clean() -> torch.nn.Module:
        model = get_model(model_name)
        model.load_state_dict(caffe_to_state_dict(model_name, net.weights()))
        return model.eval()

    exported, lowered = scratch / "torch-route.onnx", scratch / "lowered.onnx"
    export_onnx(convert(net, ["prob"]), exported, image_like((1, *shape[1:]), seed=0))
    onnxlower.write_onnx(onnxlower.lower(net, ["prob"]), lowered)
    found = {
        ("cpu", "graph"): torch_runner(convert(net, ["prob"]), "cpu"),
        ("cpu", "graph-fast"): torch_runner(fast_eval(convert(net, ["prob"])), "cpu", channels_last=True),
        ("cpu", "clean"): torch_runner(clean(), "cpu", softmax=True),
        ("cpu", "clean-folded"): torch_runner(fast_eval(clean(), channels_last=False), "cpu", softmax=True),
        ("cpu", "clean-fast"): torch_runner(fast_eval(clean()), "cpu", channels_last=True, softmax=True),
        ("cpu", "onnxruntime"): onnx_runner(exported, threads),
        ("cpu", "onnxruntime-lowered"): onnx_runner(lowered, threads),
        ("cpu", REFERENCE): opencv_runner(net, caffemodel, scratch),
    }
    if compile:
        compiled = cast(torch.nn.Module, torch.compile(fast_eval(clean()), dynamic=False))
        found[("cpu", "clean-fast-compiled")] = torch_runner(
            compiled, "cpu", channels_last=True, softmax=True
        )
    if torch.cuda.is_available():
        found[("cuda", "graph")] = torch_runner(convert(net, ["prob"]), "cuda")
        found[("cuda", "clean-fast")] = torch_runner(
            fast_eval(clean()), "cuda", channels_last=True, softmax=True
        )
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


def write_table(rows: list[Row], args: argparse.Namespace, load: tuple[float, float], seconds: float) -> str:
    lines = [
        "# Converted SENets: inference speed per runner",
        "",
        f"`python -m bench.bench_convert`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{seconds:.0f} s. Machine: {machine()}; {args.threads} threads for every CPU runner, "
        f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, ONNX Runtime without spinning. "
        f"torch {torch.__version__}, onnxruntime {ort.__version__}, OpenCV {cv2.__version__}.",
        f"Load average (1 min) before / after: {load[0]:.1f} / {load[1]:.1f}. The machine is shared "
        "(8 developers at once on its 2 cores when this was run), so absolute times are noisy; the "
        f"runners are timed in turns so they share the noise; {args.repeats} timed calls at batch 1, "
        f"{args.large_repeats} above, after 2 warm-up calls.",
        "",
        "Random calibrated weights (tests/caffe_factory.py), input 3x224x224. OpenCV runs the "
        "portable prototxt (its own Axpy is wrong). `vs OpenCV`: OpenCV's median latency "
        "divided by the runner's (above 1 = faster). `diff`: max abs difference from the "
        "generic graph on the softmax output. `caffe`: BVLC Caffe's own median over the same "
        "number of forwards, timed apart from the others.",
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
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", nargs="+", default=["SE-ResNet-50", "SE-ResNeXt-50"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=10, help="timed calls at batch 1")
    parser.add_argument("--large-repeats", type=int, default=4, help="timed calls at batch > 1")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="leave out torch.compile")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as directory:
        scratch = Path(directory)
        for name in args.nets:
            prototxt, caffemodel = make_random_caffemodel(SENET_DIR / f"{name}.prototxt")
            found = runners(prototxt, caffemodel, args.threads, scratch, args.compile)
            for batch in args.batches:
                x = image_like((batch, 3, 224, 224), seed=1).numpy()
                repeats = args.repeats if batch == 1 else args.large_repeats
                measured = time_round_robin(found, x, warmup=2, repeats=repeats)
                if reference_available():
                    measured[("cpu", "caffe")] = caffe_measurement(
                        prototxt, caffemodel, x, args.threads, repeats, scratch
                    )
                expected = measured[("cpu", "graph")][1]
                for (device, runner), (median, output) in measured.items():
                    difference = float(np.abs(output.reshape(expected.shape) - expected).max())
                    rows.append(Row(name, device, batch, runner, median, difference))
                    print(
                        f"{name} {device} batch {batch} {runner}: {median * 1e3:.1f} ms, "
                        f"diff {difference:.1e}",
                        flush=True,
                    )
    load = (load_before, os.getloadavg()[0])
    print(write_table(rows, args, load, time.perf_counter() - started))


if __name__ == "__main__":
    main()
