"""senet-validate: measure a converted classifier on its validation set (ImageNet or any label set), exactly.

    valset = open_valset("/data/imagenet")                      # any of the three layouts
    backend = load_backend("torch", model="se_resnet50", weights="se_resnet50.pth",
                           device=torch.device("cuda"))
    result = evaluate(backend, valset, CaffePreprocess())
    print(result.top1_error, result.top5_error)

The command-line front end is `senet_repro.cli.validate` (`senet-validate`).
"""

from .backends import BACKENDS, Backend, OnnxRuntimeBackend, TorchBackend, check_backend, load_backend
from .data import FolderLayout, ValImages, ValSet, open_valset, read_image
from .errors import ValidateError
from .metrics import TopKCounter, correct_at_k
from .runner import Distributed, EvalOptions, EvalResult, configure_precision, evaluate, init_distributed

__all__ = [
    "BACKENDS",
    "Backend",
    "Distributed",
    "EvalOptions",
    "EvalResult",
    "FolderLayout",
    "OnnxRuntimeBackend",
    "TorchBackend",
    "TopKCounter",
    "ValImages",
    "ValSet",
    "ValidateError",
    "check_backend",
    "configure_precision",
    "correct_at_k",
    "evaluate",
    "init_distributed",
    "load_backend",
    "open_valset",
    "read_image",
]
