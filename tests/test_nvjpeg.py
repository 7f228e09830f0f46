"""The --gpu-decode path with nvJPEG replaced by a recorder that decodes on the CPU.

No GPU is needed: what is tested is the order of synchronisation and decoding, the
routing of files nvJPEG must not see, and which failures stop the run. The same path on a
real GPU runs in `make gpu-check`.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.io import decode_jpeg as cpu_decode_jpeg

from senet_repro.transforms import CaffePreprocess
from senet_repro.validate import ValidateError, nvjpeg

CPU = torch.device("cpu")


def encoded(mode: str = "RGB", fmt: str = "JPEG", size: tuple[int, int] = (60, 40)) -> torch.Tensor:
    pixels = torch.randint(
        0, 256, (size[1], size[0], len(mode)), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    image = Image.fromarray(pixels.squeeze(-1).numpy() if mode == "L" else pixels.numpy(), mode=mode)
    out = io.BytesIO()
    image.save(out, format=fmt)
    return torch.frombuffer(bytearray(out.getvalue()), dtype=torch.uint8)


class FakeCuda:
    """Records synchronisations and decodes; decodes on the CPU; fails as told."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: dict[int, str] | None = None) -> None:
        self.log: list[str] = []
        self.fail = fail or {}  # call number -> RuntimeError message
        self.calls = 0
        stream = type("Stream", (), {"synchronize": lambda _: self.log.append("sync stream")})()
        monkeypatch.setattr(nvjpeg.torch.cuda, "current_stream", lambda device=None: stream)
        monkeypatch.setattr(nvjpeg.torch.cuda, "synchronize", lambda device=None: self.log.append("sync"))
        monkeypatch.setattr(nvjpeg, "decode_jpeg", self.decode)

    def decode(self, data: torch.Tensor | list[torch.Tensor], mode: object, device: object) -> object:
        self.calls += 1
        if isinstance(data, list) and not data:
            raise ValueError("Expected a non empty list of tensors")  # torchvision's behaviour
        self.log.append(f"decode {len(data) if isinstance(data, list) else 1}")
        if self.calls in self.fail:
            raise RuntimeError(self.fail[self.calls])
        return cpu_decode_jpeg(data, mode=mode)


def test_header_parsing_routes_cmyk_truncated_and_non_jpeg_files_to_the_cpu() -> None:
    rgb, grey, cmyk = encoded("RGB"), encoded("L"), encoded("CMYK")
    assert nvjpeg.read_header(rgb.numpy().tobytes()) == nvjpeg.JpegHeader(40, 60, 3)
    header = nvjpeg.read_header(cmyk.numpy().tobytes())
    assert header is not None and header.components == 4
    assert nvjpeg.read_header(encoded(fmt="PNG").numpy().tobytes()) is None
    assert nvjpeg.gpu_decodable(rgb.numpy().tobytes()) and nvjpeg.gpu_decodable(grey.numpy().tobytes())
    assert not nvjpeg.gpu_decodable(cmyk.numpy().tobytes())
    assert not nvjpeg.gpu_decodable(rgb.numpy().tobytes()[:-100])  # truncated: no end-of-image marker


def test_stream_is_synchronised_before_every_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = FakeCuda(monkeypatch)
    decoder = nvjpeg.GpuJpegDecoder(CPU, CaffePreprocess())
    cuda.log.clear()
    decoder.decode([encoded(), encoded()], ["", ""])
    decoder.decode([encoded()], [""])
    assert cuda.log == ["sync stream", "decode 2", "sync", "sync stream", "decode 1", "sync"]


def test_gpu_crops_equal_the_cpu_paths_and_routes_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = FakeCuda(monkeypatch)
    preprocess = CaffePreprocess()
    decoder = nvjpeg.GpuJpegDecoder(CPU, preprocess)
    files = [encoded(), encoded("CMYK"), encoded(fmt="PNG"), encoded(), encoded()[:300].clone()]
    errors = [""] * len(files)
    crops = decoder.decode(files, errors)
    assert cuda.log[-3:] == ["sync stream", "decode 2", "sync"]  # only the two complete RGB JPEGs
    assert crops.shape == (5, 1, 3, 224, 224)
    for i in (0, 2, 3):  # the PNG went to the CPU decoder
        expected = preprocess.resize_views(nvjpeg.decode_image(files[i], mode=nvjpeg.ImageReadMode.RGB))
        assert torch.equal(crops[i], expected), i
    assert errors[:4] == ["", "", "", ""] and errors[4]  # CMYK decoded by libjpeg; truncated unreadable
    assert decoder.routes == {"gpu": 2, "cpu": 2}


def test_a_batch_with_no_readable_file_does_not_call_the_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = FakeCuda(monkeypatch)
    decoder = nvjpeg.GpuJpegDecoder(CPU, CaffePreprocess())
    empty = torch.zeros(0, dtype=torch.uint8)
    errors = ["cannot read", "cannot read"]
    crops = decoder.decode([empty, empty], errors)
    assert crops.shape[0] == 2 and cuda.calls == 1  # the start-up probe only
    assert errors == ["cannot read", "cannot read"]


def test_a_file_nvjpeg_rejects_falls_back_and_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    # call 1: the probe; call 2: the batch fails; calls 3, 4: one by one, the second file fails.
    FakeCuda(monkeypatch, fail={2: "nvjpegDecodeJpeg failed: 6", 4: "nvjpegJpegStreamParse failed: 6"})
    decoder = nvjpeg.GpuJpegDecoder(CPU, CaffePreprocess())
    errors = ["", ""]
    decoder.decode([encoded(), encoded()], errors)
    assert errors == ["", ""] and decoder.routes == {"gpu": 1, "cpu fallback": 1, "cpu": 1}


@pytest.mark.parametrize(
    "fail, stage",
    [
        ({1: "Failed to initialize nvjpeg with default backend: 5"}, "start"),
        ({2: "CUDA error: out of memory"}, "batch"),
        ({2: "bitstream", 3: "CUDA error: an illegal memory access was encountered"}, "file"),
    ],
)
def test_a_broken_gpu_decoder_stops_the_run(monkeypatch: pytest.MonkeyPatch, fail: dict, stage: str) -> None:
    FakeCuda(monkeypatch, fail=fail)
    with pytest.raises(ValidateError, match="--gpu-decode: nvJPEG") as caught:
        decoder = nvjpeg.GpuJpegDecoder(CPU, CaffePreprocess())
        decoder.decode([encoded(), encoded()], ["", ""])
    assert "\n" not in str(caught.value) and (stage != "start" or "cannot decode" in str(caught.value))


def test_onnxruntime_cuda_refuses_without_a_cuda_provider(tmp_path: Path) -> None:
    from senet_repro.validate.backends import OnnxRuntimeBackend

    with pytest.raises(ValidateError, match="no CUDA execution provider"):
        OnnxRuntimeBackend(tmp_path / "any.onnx", torch.device("cuda", 0))


@pytest.mark.parametrize("tf32", [False, True])
def test_onnxruntime_cuda_provider_gets_tf32_and_a_silent_cpu_fallback_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tf32: bool
) -> None:
    import onnxruntime as ort

    from senet_repro.validate.backends import OnnxRuntimeBackend

    asked = []

    class Session:  # what onnxruntime does when the CUDA provider fails to start: runs on the CPU
        def __init__(self, path: str, providers: list) -> None:
            asked.extend(providers)

        def get_providers(self) -> list[str]:
            return ["CPUExecutionProvider"]

    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    monkeypatch.setattr(ort, "InferenceSession", Session)
    with pytest.raises(ValidateError, match="could not start its CUDA provider"):
        OnnxRuntimeBackend(tmp_path / "any.onnx", torch.device("cuda", 0), tf32=tf32)
    assert asked[0] == ("CUDAExecutionProvider", {"device_id": 0, "use_tf32": int(tf32)})
