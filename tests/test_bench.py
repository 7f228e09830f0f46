"""Every benchmark script runs, in a tiny configuration, so that none of them can rot.

Their numbers are not checked here (speed goals live in bench/results, not in timed tests);
what is checked is that each script finishes and writes its table. The tables go to a
temporary folder, never over the committed results.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# script -> arguments of its tiny run ({out}: the test's temporary folder)
TINY_RUNS = {
    "bench_caffe2onnx": ["--nets", "SE-ResNet-50", "--repeats", "1", "--output", "{out}/table.md"],
    "bench_convert": [
        *["--nets", "SE-ResNet-50", "--batches", "1", "--threads", "1"],
        *["--repeats", "1", "--large-repeats", "1", "--no-compile", "--output", "{out}/table.md"],
    ],
    "bench_read": ["--size-mb", "8", "--repeats", "1", "--workdir", "{out}", "--output", "{out}/table.md"],
    "bench_validate": [
        *["--device", "cpu", "--images", "4", "--batch-size", "2", "--workers", "0"],
        *["--forward-seconds", "0.5", "--no-write"],
    ],
    "gpu_check": ["--dry-run", "--output", "{out}/table.md"],
}


def test_every_bench_script_has_a_tiny_run() -> None:
    """(`make bench`'s scripts and the GPU check; bench/exactness.py is the proof table of the
    Caffe reference tests, which run the same comparisons.)"""
    scripts = {path.stem for path in (ROOT / "bench").glob("bench_*.py")} | {"gpu_check"}
    assert scripts == set(TINY_RUNS)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(TINY_RUNS))
def test_bench_script_runs(script: str, tmp_path: Path, senet_prototxts: dict[str, Path]) -> None:
    """(The SENet prototxts are what the benchmarks run; without them the test skips.)"""
    arguments = [argument.format(out=tmp_path) for argument in TINY_RUNS[script]]
    run = subprocess.run(
        [sys.executable, "-m", f"bench.{script}", *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    if "--no-write" not in arguments:
        assert (tmp_path / "table.md").read_text().startswith("# ")
