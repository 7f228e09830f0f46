"""The three ways the harness runs a network on a batch of preprocessed images.

- `torch`: the clean model of `senet_repro.models` with converted weights.
- `graph`: the generic torch.fx graph that `converter` builds from the prototxt and
  caffemodel themselves -- no model code of ours in between.
- `onnxruntime`: an exported `.onnx` (input named `data`), on the CUDA execution provider
  when onnxruntime-gpu is installed and a GPU was asked for, else on the CPU one.

Each backend takes float32 NCHW BGR batches on `backend.device` and returns float32
logits (N, classes) on any device. A checkpoint or ONNX file whose senet-repro header
says it expects torchvision's normalisation gets the batch converted to it
(`caffe_to_torchvision_input`); the class order it declares is `backend.class_order`
(None: not declared), which the harness maps the labels to.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from senet_repro import imagenet
from senet_repro.models.checkpoint import Header, caffe_to_torchvision_input

from .errors import ValidateError

BACKENDS = ("torch", "graph", "onnxruntime")
_ONNX_FLOATS = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16}


class Backend(Protocol):
    name: str
    device: torch.device
    description: str
    tf32: bool  # whether TF32 arithmetic actually ran (only ever on CUDA)
    class_order: imagenet.ClassOrder | None  # what the weights declare (None: nothing)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor: ...


class TorchBackend:
    """An nn.Module in eval mode; channels-last on CUDA, optional autocast and torch.compile."""

    def __init__(
        self,
        module: nn.Module,
        device: torch.device,
        *,
        amp: bool = False,
        channels_last: bool | None = None,
        compile: bool = False,
        name: str = "torch",
        class_order: imagenet.ClassOrder | None = None,
    ) -> None:
        self.name = name
        self.class_order = class_order
        self.device = device
        self.amp = amp
        self.tf32 = device.type == "cuda" and torch.backends.cudnn.allow_tf32
        self.channels_last = device.type == "cuda" if channels_last is None else channels_last
        self.module = module.eval().to(device)
        if self.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        if compile:  # compiles on the first batch (tens of seconds); pays off over a whole val set
            self.module = torch.compile(self.module, dynamic=False)  # type: ignore[assignment]
        extras = [what for what, on in (("channels_last", self.channels_last), ("compiled", compile)) if on]
        self.description = f"{name} (PyTorch {torch.__version__}{''.join(', ' + e for e in extras)})"

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        with torch.autocast(self.device.type, dtype=dtype, enabled=self.amp):
            out = self.module(batch)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.float()


class OnnxRuntimeBackend:
    """An ONNX file in an onnxruntime session; I/O binding keeps CUDA batches on the GPU."""

    name = "onnxruntime"

    def __init__(
        self,
        path: str | os.PathLike[str],
        device: torch.device,
        *,
        output: str | None = None,
        tf32: bool = False,
    ) -> None:
        import onnxruntime as ort

        providers: list = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ValidateError(
                    "--device cuda: this onnxruntime has no CUDA execution provider "
                    "(install senet-repro[gpu] instead of senet-repro[cpu])"
                )
            # ONNX Runtime's CUDA provider runs convolutions in TF32 unless told not to:
            # --tf32 decides, as it does for PyTorch.
            options = {"device_id": device.index or 0, "use_tf32": int(tf32)}
            providers.insert(0, ("CUDAExecutionProvider", options))
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ValidateError(f"{path}: onnxruntime cannot load it: {reason}") from None
        provider = self.session.get_providers()[0]
        if device.type == "cuda" and provider != "CUDAExecutionProvider":  # CUDA failed to start
            raise ValidateError(
                f"--device cuda: onnxruntime could not start its CUDA provider ({provider} ran)"
            )
        self.device = device
        self.tf32 = tf32 and device.type == "cuda"
        inputs = {i.name: i.type for i in self.session.get_inputs()}
        if "data" not in inputs:
            raise ValidateError(
                f"{path}: expected an input named 'data' (as senet-convert exports), found {list(inputs)}"
            )
        if inputs["data"] not in _ONNX_FLOATS:
            raise ValidateError(f"{path}: input 'data' is {inputs['data']}, expected float or float16")
        self.input_dtype = _ONNX_FLOATS[inputs["data"]]
        outputs = [o.name for o in self.session.get_outputs()]
        if output is not None and output not in outputs:
            raise ValidateError(f"{path}: no output {output!r}; outputs are {outputs}")
        self.output = output or outputs[0]
        header = Header.parse(self.session.get_modelmeta().custom_metadata_map, str(path))
        self.class_order = header.class_order if header is not None else None
        self.torchvision_input = header is not None and header.normalisation == "torchvision"
        self.description = f"onnxruntime {ort.__version__} ({provider}, output {self.output!r})"

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.torchvision_input:
            batch = caffe_to_torchvision_input(batch)
        batch = batch.to(self.input_dtype).contiguous()  # an --fp16 export takes float16 input
        if batch.device.type != "cuda":
            return torch.from_numpy(self.session.run([self.output], {"data": batch.numpy()})[0]).float()
        device_id = batch.device.index or 0
        torch.cuda.current_stream(batch.device).synchronize()  # onnxruntime uses its own stream
        binding = self.session.io_binding()
        element_type = np.float16 if self.input_dtype == torch.float16 else np.float32
        binding.bind_input("data", "cuda", device_id, element_type, tuple(batch.shape), batch.data_ptr())
        binding.bind_output(self.output, "cuda", device_id)
        self.session.run_with_iobinding(binding)
        return torch.from_numpy(binding.get_outputs()[0].numpy()).float()


def class_scores(out: torch.Tensor) -> torch.Tensor:
    """N x classes scores (fully convolutional classifiers such as SqueezeNet give N x classes x 1 x 1)."""
    if out.dim() < 2 or any(size != 1 for size in out.shape[2:]):
        raise ValidateError(f"the scored output has shape {tuple(out.shape)}; expected N x classes (x 1 x 1)")
    return out.flatten(1)


def _logits_blob(prototxt: Path) -> str | None:
    """The blob before a final Softmax: ranking on logits avoids ties of underflowed probabilities."""
    from prototxt import load_net

    last = load_net(prototxt).layers[-1]
    return last.bottoms[0] if last.type == "Softmax" else None


def load_backend(
    kind: str,
    *,
    weights: str | os.PathLike[str],
    device: torch.device,
    model: str | None = None,
    prototxt: str | os.PathLike[str] | None = None,
    output: str | None = None,
    amp: bool = False,
    tf32: bool = False,
    fold: bool = True,
    compile: bool = False,
) -> Backend:
    """Build backend `kind` from a weights file (.pth/.safetensors, .caffemodel or .onnx).

    The torch backend runs `converter.fold.fast_eval` of the model (BatchNorm folded into
    the convolutions, channels_last) unless `fold` is False; `compile` wraps the torch and
    graph backends in torch.compile.
    """
    weights = Path(weights)
    if not weights.is_file():
        raise ValidateError(f"weights file {weights} does not exist")
    if kind == "torch":
        from senet_repro.models import read_checkpoint

        checkpoint = read_checkpoint(weights, model)
        module = checkpoint.network()
        if fold:
            from converter.fold import fast_eval

            module = fast_eval(module)  # traced: the input conversion goes on the result
        backend = TorchBackend(
            checkpoint.take_caffe_input(module),
            device,
            amp=amp,
            channels_last=True if fold else None,
            compile=compile,
            class_order=checkpoint.header.class_order,
        )
        backend.description += f"; {checkpoint.describe()}"
        return backend
    if kind == "graph":
        if prototxt is None:
            raise ValidateError("the graph backend needs --prototxt (and the caffemodel as --weights)")
        try:
            from converter import convert_caffe
        except ImportError as exc:
            raise ValidateError(f"the graph backend needs the converter package: {exc}") from None
        blob = output or _logits_blob(Path(prototxt))
        graph = convert_caffe(prototxt, weights, outputs=[blob] if blob else None)
        return TorchBackend(graph, device, amp=amp, compile=compile, name="graph")
    if kind == "onnxruntime":
        if compile:
            raise ValidateError("--compile applies to the torch and graph backends")
        if amp:
            raise ValidateError("--amp applies to the torch and graph backends; export with --fp16 instead")
        return OnnxRuntimeBackend(weights, device, output=output, tf32=tf32)
    raise ValidateError(f"unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}")


def check_backend(backend: Backend, crop: int, num_classes: int | None, batch_size: int, source: str) -> None:
    """Refuse, before any image is read, a network that cannot score `crop` x `crop` batches.

    An ONNX file with a fixed input size or batch is told apart first (the clearest
    message); then one blank crop runs through the backend, which must give one score
    per class of the label set (`num_classes`; None: any number).
    """
    if isinstance(backend, OnnxRuntimeBackend):
        batch, _, *size = backend.session.get_inputs()[0].shape
        fixed = [dim for dim in size if isinstance(dim, int)]
        if fixed and fixed != [crop] * len(size):
            raise ValidateError(
                f"{source} takes a fixed {'x'.join(str(d) for d in size)} input, not {crop}x{crop} "
                "crops: choose --crop (and --resize) to fit it"
            )
        if isinstance(batch, int) and (batch != 1 or batch_size != 1):  # a last batch may be short
            raise ValidateError(
                f"{source} takes a fixed batch of {batch}: use --batch-size {batch}"
                if batch == 1
                else f"{source} takes a fixed batch of {batch}: export it with a dynamic batch axis"
            )
    try:
        with torch.inference_mode():
            out = backend(torch.zeros(1, 3, crop, crop, device=backend.device))
    except Exception as exc:  # three libraries, each with its own error types
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValidateError(f"{source} does not run on {crop}x{crop} crops ({reason})") from None
    out = class_scores(out)
    if num_classes is not None and out.shape[1] != num_classes:
        raise ValidateError(
            f"{source} gives scores of shape {tuple(out.shape[1:])} per image, "
            f"the label set has {num_classes} classes"
        )
