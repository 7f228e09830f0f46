"""The README's Python examples run as written, on files generated to the names they use."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from senet_repro.models import get_model, to_timm_state_dict
from tests.caffe_factory import make_random_caffemodel
from tests.conftest import SENET_CAFFE_DIR, require_shared

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)


def python_blocks() -> list[str]:
    return BLOCK.findall(README.read_text(encoding="utf-8"))


def test_the_readme_has_examples() -> None:
    assert len(python_blocks()) >= 4


@pytest.fixture(scope="module")
def readme_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every file the examples name: seeded random weights, synthetic photos."""
    folder = tmp_path_factory.mktemp("readme")
    prototxt = require_shared(SENET_CAFFE_DIR / "SE-ResNet-50.prototxt", "SE-ResNet-50.prototxt")
    deploy, caffemodel = make_random_caffemodel(prototxt)
    (folder / "SE-ResNet-50.prototxt").symlink_to(deploy)
    (folder / "SE-ResNet-50.caffemodel").symlink_to(caffemodel)
    torch.manual_seed(0)
    torch.save(get_model("se_resnext50").state_dict(), folder / "se_resnext50.pth")
    timm_state = to_timm_state_dict("se_resnet50", get_model("se_resnet50").state_dict())
    torch.save(timm_state, folder / "se_resnet50_timm.pth")
    rng = np.random.default_rng(0)
    for name, size in (("cat.jpg", (300, 400)), ("street.jpg", (240, 320))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / name)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_example_runs(readme_files: Path, index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    source = python_blocks()[index]
    if "import timm" in source:
        pytest.importorskip("timm")
    monkeypatch.chdir(readme_files)
    namespace: dict[str, object] = {"__name__": f"readme_example_{index}"}
    with torch.no_grad():
        exec(compile(source, f"README.md python block {index}", "exec"), namespace)
