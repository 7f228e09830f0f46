"""Reading a SENet-154-size caffemodel: our reader against a raw read and OpenCV.

    python -m bench.bench_read [--size-mb 440] [--repeats 5]

Generates (once, in the senet-repro cache, outside the repository) a caffemodel
of SENet-154's shapes with random float32 weights, then times, side by side:

  raw     open(f, "rb").read() of the same file: the floor for reading it at all;
  ours    prototxt.read_caffemodel(f) plus summing every blob, so that every page
          of the memory map is really read;
  opencv  cv2.dnn.readNetFromCaffe(prototxt, caffemodel).

Every measurement runs in a fresh subprocess, which reports its wall time and its
peak RSS (resource.getrusage ru_maxrss) above its own baseline after imports. A
child starts with its parent's peak RSS as its ru_maxrss (Linux keeps it across
exec), so this launcher stays lean: it imports only the standard library and
leaves generating the files to a subprocess too. The page cache cannot be
dropped without root, so the file is read once beforehand and all methods are
measured warm. A --size-mb below SENet-154's 440 MiB keeps
only the first layers of the net (prototxt and caffemodel both), up to that size.
Results go to bench/results/read.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SENET154 = REPO.parent / "shared" / "senet-caffe" / "SENet-154.prototxt"
RESULTS = REPO / "bench" / "results" / "read.md"
METHODS = ("raw", "ours", "opencv")
GOALS = {"ours/raw time": 2.0, "ours/opencv time": 1.0, "ours RSS / file size": 1.3}
MIB = 2**20


def _peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def child(method: str, prototxt: str, caffemodel: str) -> None:
    """Run one method once in this (fresh) process; print its time and peak RSS as JSON."""
    if method == "ours":
        import numpy as np

        from prototxt import read_caffemodel
    elif method == "opencv":
        import cv2
    baseline = _peak_kib()
    start = time.perf_counter()
    if method == "raw":
        with open(caffemodel, "rb") as handle:
            detail = f"{len(handle.read())} bytes"
    elif method == "ours":
        model = read_caffemodel(caffemodel)
        total = sum(float(np.sum(array)) for arrays in model.blobs.values() for array in arrays)
        detail = f"{sum(len(a) for a in model.blobs.values())} blobs, sum {total:.6g}"
    else:
        net = cv2.dnn.readNetFromCaffe(prototxt, caffemodel)
        detail = f"{len(net.getLayerNames())} layers"
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "rss_kib": _peak_kib() - baseline, "detail": detail}))


def prepare(size_mib: float, workdir: str) -> None:
    """Generate (unless cached) the files to read; print their paths as JSON.

    Also writes a copy of the prototxt with Axpy rewritten into standard layers,
    for the case that OpenCV refuses the original.
    """
    import cv2
    import numpy as np

    from prototxt import load_net, parse_prototxt, portable_net, write_caffemodel, write_prototxt
    from senet_repro.assets import cache_dir

    directory = Path(workdir) if workdir else cache_dir() / "bench"
    net = load_net(SENET154)
    kept, total = 0, 0
    for kept, layer in enumerate(net.layers, start=1):  # noqa: B007 (kept is used after the loop)
        total += sum(4 * math.prod(shape) for shape in layer.blob_shapes)
        if total >= size_mib * MIB:
            break
    layers = net.layers[:kept]
    whole = kept == len(net.layers)
    scope = "all of SENet-154" if whole else f"the first {kept} of SENet-154's {len(net.layers)} layers"
    stem = "senet154-random" if whole else f"senet154-first{kept}-random"
    caffemodel = directory / f"{stem}.caffemodel"
    prototxt = SENET154 if whole else directory / f"{stem}.prototxt"
    proto = parse_prototxt(SENET154)
    del proto.layer[kept:]
    directory.mkdir(parents=True, exist_ok=True)
    if not whole and not prototxt.exists():
        write_prototxt(proto, prototxt, header="bench_read.py: a prefix of SENet-154")
    if not caffemodel.exists():
        print(
            f"generating {caffemodel} ({total / MIB:.0f} MiB of random float32 weights) ...", file=sys.stderr
        )
        rng = np.random.default_rng(154)
        blobs = {
            layer.name: [rng.standard_normal(shape, dtype=np.float32) for shape in layer.blob_shapes]
            for layer in layers
            if layer.blob_shapes
        }
        write_caffemodel(caffemodel, proto, blobs)
    portable = directory / f"{stem}-portable.prototxt"
    write_prototxt(portable_net(proto), portable)
    versions = (
        f"Python {platform.python_version()}, numpy {np.__version__}, "
        f"OpenCV {cv2.__version__}, {platform.system()} {platform.release()}, "
        f"{os.cpu_count()} CPUs"
    )
    print(
        json.dumps(
            {
                "prototxt": str(prototxt),
                "caffemodel": str(caffemodel),
                "portable": str(portable),
                "scope": scope,
                "versions": versions,
            }
        )
    )


def _opencv_prototxt(files: dict) -> tuple[Path, str]:
    """The prototxt OpenCV reads: the original, or the one with Axpy rewritten if it refuses."""
    probe = _run("opencv", Path(files["prototxt"]), Path(files["caffemodel"]))
    if "error" not in probe:
        return Path(files["prototxt"]), "the original prototxt (OpenCV 4.x maps Axpy itself)"
    return (
        Path(files["portable"]),
        f"a rewritten prototxt without Axpy (OpenCV failed on the original: {probe['error']})",
    )


def _subprocess(*args: str) -> dict:
    """Run this script with `args`; its last stdout line is JSON, or an error."""
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        lines = (done.stderr.strip() or "no output").splitlines()
        return {"error": lines[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _run(method: str, prototxt: Path, caffemodel: Path) -> dict:
    return _subprocess("--child", method, str(prototxt), str(caffemodel))


def _warm(path: Path) -> None:
    """Read the file once into the page cache, through a small buffer."""
    buffer = bytearray(MIB)
    with open(path, "rb", buffering=0) as handle:
        while handle.readinto(buffer):
            pass


def report(runs: dict[str, list[dict]], file_bytes: int, files: dict, opencv_note: str, repeats: int) -> str:
    """The markdown page: a table of the methods and the goals."""
    median = {m: statistics.median(r["seconds"] for r in runs[m]) for m in METHODS}
    rss = {m: max(r["rss_kib"] for r in runs[m]) * 1024 for m in METHODS}
    lines = [
        "# Reading a SENet-154-size caffemodel",
        "",
        f"Generated by `bench/bench_read.py` on {time.strftime('%Y-%m-%d')} ({files['versions']}).",
        f"File: random float32 weights for {files['scope']}, {file_bytes / MIB:.1f} MiB "
        f"({file_bytes:,} bytes). Median of {repeats} runs, each in a fresh subprocess; "
        "times exclude interpreter start-up and imports. The page cache could not be dropped "
        "(no root), so the file was read once first and every run reads it warm. Peak RSS is "
        "`ru_maxrss` above the process's own baseline after its imports (the largest of the "
        f"runs). The launcher's own peak RSS, which each child starts with, was "
        f"{_peak_kib() / 1024:.0f} MiB.",
        f"OpenCV read {opencv_note}.",
        "",
        "| method | median s | min s | max s | time / raw | peak RSS above baseline | RSS / file size |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    names = {
        "raw": "`open(f, 'rb').read()`",
        "ours": "`prototxt.read_caffemodel` + sum of every blob",
        "opencv": "`cv2.dnn.readNetFromCaffe`",
    }
    for m in METHODS:
        seconds = [r["seconds"] for r in runs[m]]
        lines.append(
            f"| {names[m]} | {median[m]:.3f} | {min(seconds):.3f} | {max(seconds):.3f} | "
            f"{median[m] / median['raw']:.2f} | {rss[m] / MIB:.0f} MiB | "
            f"{rss[m] / file_bytes:.2f} |"
        )
    measured = {
        "ours/raw time": median["ours"] / median["raw"],
        "ours/opencv time": median["ours"] / median["opencv"],
        "ours RSS / file size": rss["ours"] / file_bytes,
    }
    wording = {
        "ours/raw time": "within 2x of the raw read",
        "ours/opencv time": "faster than OpenCV",
        "ours RSS / file size": "peak RSS under 1.3x the file size above baseline",
    }
    lines += ["", "| goal | measured | met |", "| --- | ---: | :---: |"]
    for goal, limit in GOALS.items():
        met = measured[goal] < limit if goal != "ours/raw time" else measured[goal] <= limit
        lines.append(
            f"| {wording[goal]} (ratio {'<' if goal != 'ours/raw time' else '<='} "
            f"{limit}) | {measured[goal]:.2f} | {'yes' if met else '**no**'} |"
        )
    checks = "; ".join(f"{m}: {runs[m][0]['detail']}" for m in METHODS)
    lines += ["", f"What each read saw (first run): {checks}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size-mb", type=float, default=440.0, help="MiB of weights (default 440: all of SENet-154)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--workdir", default=None, help="where the generated files go (default: the senet-repro cache)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--child", nargs=3, metavar=("METHOD", "PROTOTXT", "CAFFEMODEL"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    if args.prepare:
        prepare(args.size_mb, args.workdir or "")
        return
    if not SENET154.exists():
        sys.exit(
            f"bench_read: {SENET154} is missing (the SENet prototxts belong in "
            "../shared/senet-caffe/ next to the repository)"
        )
    files = _subprocess(
        "--prepare",
        "--size-mb",
        str(args.size_mb),
        *(["--workdir", str(args.workdir)] if args.workdir else []),
    )
    if "error" in files:
        sys.exit(f"bench_read: generating the files failed: {files['error']}")
    prototxt, caffemodel = Path(files["prototxt"]), Path(files["caffemodel"])
    _warm(caffemodel)
    opencv_prototxt, opencv_note = _opencv_prototxt(files)
    runs: dict[str, list[dict]] = {m: [] for m in METHODS}
    for _ in range(args.repeats):
        for method in METHODS:
            result = _run(method, opencv_prototxt if method == "opencv" else prototxt, caffemodel)
            if "error" in result:
                sys.exit(f"bench_read: {method} failed: {result['error']}")
            runs[method].append(result)
    text = report(runs, caffemodel.stat().st_size, files, opencv_note, args.repeats)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
