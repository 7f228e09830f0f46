"""The package layering is the architecture: prototxt <- converter <- senet_repro."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imported_roots(package: str) -> set[str]:
    roots: set[str] = set()
    for source in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
            if isinstance(node, ast.Import):
                roots.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots.add(node.module.split(".")[0])
    return roots


def test_prototxt_imports_neither_torch_nor_the_upper_packages() -> None:
    assert not _imported_roots("prototxt") & {"torch", "torchvision", "converter", "senet_repro"}


def test_importing_prototxt_does_not_load_torch() -> None:
    code = "import sys, prototxt; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == "False"


def test_converter_knows_nothing_of_senets() -> None:
    assert "senet_repro" not in _imported_roots("converter")
