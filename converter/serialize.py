"""Save and load converted generic nets without pickle.

Two forms: `.pt2` (torch.export, a self-contained program with a dynamic batch)
and `.safetensors` (the state_dict) written next to the deploy prototxt it came
from; loading the latter re-converts the prototxt and fills in the tensors.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import fx, nn

from prototxt import Net, load_net, write_prototxt
from prototxt.atomic import atomic_path, atomic_paths

from .fold import fold_batchnorm
from .graph import convert


def prototxt_beside(path: Path) -> Path:
    return path.with_suffix(".prototxt")


def written_by_save(path: str | os.PathLike[str]) -> list[Path]:
    """The files `save_converted(..., path, ...)` writes: a `.safetensors` has its prototxt beside it."""
    target = Path(path)
    return [target, prototxt_beside(target)] if target.suffix == ".safetensors" else [target]


def read_by_load(path: str | os.PathLike[str]) -> list[Path]:
    """The files `load_converted(path)` reads besides `path` itself."""
    return written_by_save(path)[1:]


def save_converted(
    module: fx.GraphModule, net: Net, path: str | os.PathLike[str], example: torch.Tensor
) -> list[Path]:
    """Save as `.pt2` or `.safetensors` (+ `.prototxt` beside it); returns files written."""
    target = Path(path)
    if target.suffix == ".pt2":
        # A batch of 1 would be specialised as a constant; trace with 2.
        example = example[:1].expand(2, *example.shape[1:]).contiguous()
        batch = torch.export.Dim("batch", min=1)
        program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
        with atomic_path(target) as tmp:
            torch.export.save(program, tmp)
        return [target]
    if target.suffix == ".safetensors":
        state = {k: v.contiguous() for k, v in module.state_dict().items()}
        metadata = {
            "format": "senet-repro-generic",
            "outputs": ",".join(module.caffe_outputs),
            "fold": getattr(module, "caffe_fold", "none"),
        }
        written = written_by_save(target)
        with atomic_paths(written) as (tensors, prototxt):  # both appear together
            save_file(state, tensors, metadata=metadata)
            write_prototxt(net.to_proto(), prototxt)
        return written
    raise ValueError(f"{target}: the output must end in .pt2 or .safetensors")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def load_converted(path: str | os.PathLike[str]) -> nn.Module | torch.export.ExportedProgram:
    """Load what `save_converted` wrote; never unpickles arbitrary objects.

    A `.pt2` gives the ExportedProgram (call `.module()` to run it), a
    `.safetensors` the re-converted GraphModule. A file that is not what its
    suffix says, or tensors that do not fit the prototxt beside them, raise a
    one-line ValueError.
    """
    source = Path(path)
    if source.suffix == ".pt2":
        if not zipfile.is_zipfile(source):
            raise ValueError(f"{source}: not a .pt2 program (not a zip archive)")
        try:
            return torch.export.load(source)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise ValueError(
                f"{source}: not a .pt2 program torch.export can load ({_first_line(exc)})"
            ) from exc
    if source.suffix == ".safetensors":
        try:
            with safe_open(str(source), "pt") as handle:
                metadata = handle.metadata() or {}
            state = load_file(str(source))
        except SafetensorError as exc:
            raise ValueError(f"{source}: not a safetensors file ({_first_line(exc)})") from exc
        outputs, fold = metadata.get("outputs", ""), metadata.get("fold", "none")
        net = load_net(prototxt_beside(source))
        module = convert(net, outputs.split(",") if outputs else None, require_weights=False)
        if fold != "none":  # the same structure the state_dict was saved from
            fold_batchnorm(module, fold)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            details = " ".join(str(exc).split())  # torch lists the keys on several lines
            raise ValueError(
                f"{source}: its tensors do not fit {prototxt_beside(source).name} ({details[:300]})"
            ) from exc
        return module
    raise ValueError(f"{source}: expected a .pt2 or .safetensors file")
