"""Caffe -> ONNX as a deployer runs it: the whole `senet-convert caffe2onnx` process.

    python -m bench.bench_caffe2onnx [--nets SE-ResNet-50 SENet-154] [--repeats 3]

For each net (seeded random calibrated weights, tests/caffe_factory.py, cached outside
the repository), side by side in fresh processes, in turns:

  bare        python -c "import numpy, onnx, onnxruntime": the floor, the start-up that
              any Python deployment of ONNX pays;
  caffe2onnx  python -m senet_repro.cli.convert caffe2onnx: read the caffemodel, lower it
              (onnxlower, no torch), write the .onnx, run it once in ONNX Runtime;
  torch-route (with --torch-route) the same through PyTorch: convert, torch.onnx.export,
              ONNX Runtime vs PyTorch, as caffe2onnx did before onnxlower.

Each process's wall time and peak RSS (os.wait4's ru_maxrss of that child). This launcher
imports only the standard library (a child inherits its parent's peak RSS across exec on
Linux) and prepares the caffemodels in a subprocess of its own. Goals (issue 14): SE-ResNet-50
within 2x the bare start-up and under 512 MiB, SENet-154 within 4x and under 1.5 GiB.
Results go to bench/results/caffe2onnx.md (--output).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SENET_DIR = REPO.parent / "shared" / "senet-caffe"
RESULTS = REPO / "bench" / "results" / "caffe2onnx.md"
GOALS = {"SE-ResNet-50": (2.0, 512.0), "SENet-154": (4.0, 1536.0)}  # x bare start-up, MiB
TORCH_ROUTE = (
    "import sys, torch\n"
    "from converter import convert\n"
    "from converter.calibrate import image_like\n"
    "from converter.onnx_export import compare_onnx, export_onnx\n"
    "from prototxt import load_net\n"
    "net = load_net(sys.argv[1], sys.argv[2])\n"
    "module = convert(net)\n"
    "example = image_like(next(iter(net.inputs.values())))\n"
    "export_onnx(module, sys.argv[3], example)\n"
    "compare_onnx(sys.argv[3], module, torch.cat([example] * 2))\n"
)


def prepare(names: list[str]) -> None:
    """(In a subprocess: it imports torch.) Print {net: [prototxt, caffemodel]} as JSON."""
    from tests.caffe_factory import make_random_caffemodel

    pairs = {name: [str(p) for p in make_random_caffemodel(SENET_DIR / f"{name}.prototxt")] for name in names}
    print(json.dumps(pairs))


def measure(command: list[str], log: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one fresh process running `command`."""
    with open(log, "w") as output:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0 or (command[-1] == "--force" and "all finite" not in log.read_text()):
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{log.read_text()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def commands(pair: list[str], scratch: Path, torch_route: bool) -> dict[str, list[str]]:
    prototxt, caffemodel = pair
    found = {
        "bare": [sys.executable, "-c", "import numpy, onnx, onnxruntime"],
        "caffe2onnx": [
            *[sys.executable, "-m", "senet_repro.cli.convert", "caffe2onnx"],
            *["--prototxt", prototxt, "--caffemodel", caffemodel, "-o", str(scratch / "net.onnx"), "--force"],
        ],
    }
    if torch_route:
        found["torch-route"] = [
            sys.executable,
            "-c",
            TORCH_ROUTE,
            prototxt,
            caffemodel,
            str(scratch / "t.onnx"),
        ]
    return found


def table(
    results: dict[str, dict[str, list[tuple[float, float]]]], args: argparse.Namespace, seconds: float
) -> str:
    lines = [
        "# Caffe -> ONNX: the whole caffe2onnx process against a bare ONNX Runtime start-up",
        "",
        f"`python -m bench.bench_caffe2onnx`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {seconds:.0f} s, "
        f"{args.repeats} runs of each process, in turns; median wall time, max peak RSS. The machine "
        f"is shared (8 developers at once on its {os.cpu_count()} cores when this was run), so wall "
        "times are noisy; the ratio to the bare start-up, measured in the same turns, is what counts.",
        "",
        "| net | process | wall (s) | x bare | peak RSS (MiB) | goal | met |",
        "| --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for net, processes in results.items():
        bare = statistics.median(wall for wall, _ in processes["bare"])
        for name, runs in processes.items():
            wall, peak = statistics.median(w for w, _ in runs), max(p for _, p in runs)
            goal, met = "", ""
            if name == "caffe2onnx" and net in GOALS:
                ratio, mib = GOALS[net]
                goal = f"<= {ratio:g}x, < {mib:g} MiB"
                met = "yes" if wall <= ratio * bare and peak < mib else "no"
            lines.append(f"| {net} | {name} | {wall:.2f} | {wall / bare:.2f} | {peak:.0f} | {goal} | {met} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", nargs="+", default=["SE-ResNet-50", "SENet-154"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--torch-route", action="store_true", help="also time the PyTorch route")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        prepare(args.nets)
        return
    started = time.perf_counter()
    prepared = subprocess.run(
        [sys.executable, "-m", "bench.bench_caffe2onnx", "--prepare", "--nets", *args.nets],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    pairs = json.loads(prepared.stdout.strip().splitlines()[-1])
    results: dict[str, dict[str, list[tuple[float, float]]]] = {}
    with tempfile.TemporaryDirectory() as directory:
        scratch = Path(directory)
        for net, pair in pairs.items():
            found = commands(pair, scratch, args.torch_route)
            results[net] = {name: [] for name in found}
            for _ in range(args.repeats):
                for name, command in found.items():
                    wall, peak = measure(command, scratch / "log.txt")
                    results[net][name].append((wall, peak))
                    print(f"{net} {name}: {wall:.2f} s, {peak:.0f} MiB", flush=True)
    text = table(results, args, time.perf_counter() - started)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
