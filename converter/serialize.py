"""Save and load converted generic nets without pickle.

Two forms: `.pt2` (torch.export, a self-contained program with a dynamic batch)
and `.safetensors` (the state_dict) written next to the deploy prototxt it came
from; loading the latter re-converts the prototxt and fills in the tensors.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from prototxt import ConversionError, InputError, Net, load_net, write_prototxt
from prototxt.atomic import atomic_path, atomic_paths

from .fold import fold_batchnorm
from .graph import CaffeGraphModule, convert, require_traceable
from .memory import check_memory


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
    module: CaffeGraphModule, net: Net, path: str | os.PathLike[str], example: torch.Tensor
) -> list[Path]:
    """Save as `.pt2` or `.safetensors` (+ `.prototxt` beside it); returns files written."""
    target = Path(path)
    if target.suffix == ".pt2":
        require_traceable(module, "a .pt2 program")
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
            "fold": str(module.caffe_fold),
        }
        written = written_by_save(target)
        with atomic_paths(written) as (tensors, prototxt):  # both appear together
            save_file(state, tensors, metadata=metadata)
            write_prototxt(net.to_proto(), prototxt)
        return written
    raise ConversionError(f"{target}: the output must end in .pt2 or .safetensors")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# Everything `torch.export.save` writes for a program of plain tensors, relative to the archive's
# one top folder. torch.export.load would also accept, and run code from, AOTInductor shared
# libraries (data/aotinductor/), legacy pickled weights (data/weights/<model>.pt) and pickled
# or torchbind constants (custom_obj_*, opaque_obj_*); none of them match.
_PT2_ENTRY = re.compile(
    r"archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id|models/[^/]+\.json"
    r"|extra/[^/]+|data/sample_inputs/[^/]+\.pt"
    r"|data/weights/(weight_\d+|[^/]+_weights_config\.json)"
    r"|data/constants/(tensor_\d+|[^/]+_constants_config\.json)"
)
_PAYLOAD = {"weights": re.compile(r"weight_\d+"), "constants": re.compile(r"tensor_\d+")}


def _check_payload_config(source: Path, name: str, text: bytes) -> None:
    """Each entry of a weights/constants config must be a plain tensor, never `use_pickle`."""
    kind = "weights" if name.endswith("_weights_config.json") else "constants"
    try:
        entries = json.loads(text)["config"]
        plain = {
            key: entry.get("use_pickle") is False
            and isinstance(entry.get("tensor_meta"), dict)
            and bool(_PAYLOAD[kind].fullmatch(str(entry.get("path_name"))))
            for key, entry in entries.items()
        }
    except (ValueError, KeyError, TypeError, AttributeError):
        raise InputError(f"{source}: refusing it, {name} is not a .pt2 payload table") from None
    for key, is_plain in plain.items():
        if not is_plain:
            raise InputError(
                f"{source}: refusing it, {kind} entry '{key}' is not a plain tensor "
                "(a pickled payload, which could run code when loaded)"
            )


def check_pt2_archive(path: str | os.PathLike[str]) -> None:
    """Refuse a `.pt2` from which `torch.export.load` could run code; reads only the zip, before torch.

    Accepted: the graph (JSON), weights and constants stored as raw tensor bytes,
    and sample inputs that load with `torch.load(weights_only=True)` (torch falls
    back to full unpickling for those when that fails).
    """
    source = Path(path)
    try:
        with zipfile.ZipFile(source) as archive:
            names = archive.namelist()
            root = names[0].split("/", 1)[0] + "/" if names else ""
            for name in names:
                inner = name[len(root) :] if name.startswith(root) else name
                if not name.startswith(root) or not _PT2_ENTRY.fullmatch(inner):
                    raise InputError(
                        f"{source}: refusing it, it holds '{name}', which is not part of a .pt2 of "
                        "plain tensors (could run code when loaded)"
                    )
                if inner.endswith("_config.json"):
                    _check_payload_config(source, inner, archive.read(name))
                elif inner.startswith("data/sample_inputs/"):
                    try:
                        torch.load(io.BytesIO(archive.read(name)), weights_only=True)
                    except Exception as exc:  # the safe unpickler raises many types
                        raise InputError(
                            f"{source}: refusing it, {inner} is not plain tensors ({_first_line(exc)})"
                        ) from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{source}: not a .pt2 program ({_first_line(exc)})") from None


def load_converted(
    path: str | os.PathLike[str], *, max_memory_gib: float | None = None
) -> CaffeGraphModule | torch.export.ExportedProgram:
    """Load what `save_converted` wrote; never unpickles arbitrary objects (see `check_pt2_archive`).

    A `.pt2` gives the ExportedProgram (call `.module()` to run it), a
    `.safetensors` the re-converted GraphModule. A file that is not what its
    suffix says, or tensors that do not fit the prototxt beside them, raise a
    one-line InputError; so do prototxt parameters beyond `max_memory_gib`.
    """
    source = Path(path)
    if source.suffix == ".pt2":
        if not zipfile.is_zipfile(source):
            raise InputError(f"{source}: not a .pt2 program (not a zip archive)")
        check_pt2_archive(source)
        try:
            return torch.export.load(source)
        except (RuntimeError, KeyError, ValueError, AssertionError) as exc:
            raise InputError(
                f"{source}: not a .pt2 program torch.export can load ({_first_line(exc)})"
            ) from exc
    if source.suffix == ".safetensors":
        try:
            with safe_open(str(source), "pt") as handle:
                metadata = handle.metadata() or {}
            state = load_file(str(source))
        except SafetensorError as exc:
            raise InputError(f"{source}: not a safetensors file ({_first_line(exc)})") from exc
        outputs, fold = metadata.get("outputs", ""), metadata.get("fold", "none")
        net = load_net(prototxt_beside(source))
        if max_memory_gib is not None:  # the prototxt's parameters are allocated before the tensors load
            check_memory(4 * net.learnable_parameters, max_memory_gib, f"the parameters of {net.name!r}")
        module = convert(net, outputs.split(",") if outputs else None, require_weights=False)
        if fold != "none":  # the same structure the state_dict was saved from
            fold_batchnorm(module, fold)
        expected = module.state_dict()
        for key, value in state.items():  # load_state_dict would cast integers into weights silently
            if key in expected and value.is_floating_point() != expected[key].is_floating_point():
                raise InputError(
                    f"{source}: '{key}' holds {value.dtype} values, the net needs {expected[key].dtype}"
                )
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            details = " ".join(str(exc).split())  # torch lists the keys on several lines
            raise InputError(
                f"{source}: its tensors do not fit {prototxt_beside(source).name} ({details[:300]})"
            ) from exc
        return module
    raise InputError(f"{source}: expected a .pt2 or .safetensors file")
