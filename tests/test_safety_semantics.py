"""No silently wrong results: checkpoint headers honoured, checks that fail loudly, bad inputs refused."""

from __future__ import annotations

import pytest

from senet_repro.detection import fasterrcnn_se_resnext50_fpn


def test_detector_refuses_unknown_keywords() -> None:
    """torchvision hands unknown keywords to its transform, which drops them: `weights=` would
    give a random backbone without a word. Checked before any model is built."""
    with pytest.raises(TypeError, match=r"weights.*backbone_checkpoint="):
        fasterrcnn_se_resnext50_fpn(weights="se_resnext50.pth", num_classes=3)
    with pytest.raises(TypeError, match="min_sise"):
        fasterrcnn_se_resnext50_fpn(min_sise=200)
