"""Save and load converted generic nets without pickle.

Two forms: `.pt2` (torch.export, a self-contained program with a dynamic batch)
and `.safetensors` (the state_dict) written next to the deploy prototxt it came
from; loading the latter re-converts the prototxt and fills in the tensors.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import fx, nn

from prototxt import Net, load_net, write_prototxt

from .graph import convert


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def prototxt_beside(path: Path) -> Path:
    return path.with_suffix(".prototxt")


def save_converted(module: fx.GraphModule, net: Net, path: str | os.PathLike[str],
                   example: torch.Tensor) -> list[Path]:
    """Save as `.pt2` or `.safetensors` (+ `.prototxt` beside it); returns files written."""
    target = Path(path)
    if target.suffix == ".pt2":
        # A batch of 1 would be specialised as a constant; trace with 2.
        example = example[:1].expand(2, *example.shape[1:]).contiguous()
        batch = torch.export.Dim("batch", min=1)
        program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
        _atomic(target, lambda tmp: torch.export.save(program, tmp))
        return [target]
    if target.suffix == ".safetensors":
        state = {k: v.contiguous() for k, v in module.state_dict().items()}
        _atomic(target, lambda tmp: save_file(state, tmp, metadata={
            "format": "senet-repro-generic", "outputs": ",".join(module.caffe_outputs)}))
        write_prototxt(net.to_proto(), prototxt_beside(target))
        return [target, prototxt_beside(target)]
    raise ValueError(f"{target}: the output must end in .pt2 or .safetensors")


def load_converted(path: str | os.PathLike[str]) -> nn.Module | torch.export.ExportedProgram:
    """Load what `save_converted` wrote; never unpickles arbitrary objects.

    A `.pt2` gives the ExportedProgram (call `.module()` to run it), a
    `.safetensors` the re-converted GraphModule.
    """
    source = Path(path)
    if source.suffix == ".pt2":
        return torch.export.load(source)
    if source.suffix == ".safetensors":
        from safetensors import safe_open
        with safe_open(str(source), "pt") as handle:
            outputs = (handle.metadata() or {}).get("outputs", "")
        net = load_net(prototxt_beside(source))
        module = convert(net, outputs.split(",") if outputs else None, require_weights=False)
        module.load_state_dict(load_file(str(source)), strict=True)
        return module
    raise ValueError(f"{source}: expected a .pt2 or .safetensors file")

