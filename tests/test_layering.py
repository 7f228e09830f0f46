"""The package layering is the architecture: prototxt <- onnxlower, prototxt <- converter <- senet_repro."""

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


def test_onnxlower_imports_neither_torch_nor_the_torch_packages() -> None:
    assert not _imported_roots("onnxlower") & {"torch", "torchvision", "converter", "senet_repro"}


def test_caffe2onnx_runs_without_loading_torch(tiny_model) -> None:
    """The whole torch-free route, CLI and ONNX Runtime check included, in a fresh process."""
    code = (
        "import sys\n"
        "from senet_repro.cli.convert import main\n"
        "try:\n"
        f"    main(['caffe2onnx', '--prototxt', {str(tiny_model.prototxt)!r}, '--caffemodel',"
        f" {str(tiny_model.caffemodel)!r}, '-o', {str(tiny_model.prototxt.with_suffix('.onnx'))!r}])\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        "print('loaded:', sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'converter')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert "all finite" in result.stdout
    assert result.stdout.strip().endswith("loaded: []")
