"""`make bench`: run every benchmark script here, each writing its table to results/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    failed = []
    for script in sorted(HERE.glob("bench_*.py")):
        print(f"== {script.name}", flush=True)
        module = f"{HERE.name}.{script.stem}"
        if subprocess.run([sys.executable, "-m", module], cwd=HERE.parent).returncode != 0:
            failed.append(script.name)
    for table in sorted((HERE / "results").glob("*.md")):
        print(f"\n== {table.relative_to(HERE.parent)}\n{table.read_text()}")
    if failed:
        print(f"!! failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
