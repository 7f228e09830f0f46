"""GPU JPEG decoding (nvJPEG through torchvision) that is ordered, honest and bounded.

Three things the plain `decode_jpeg(device="cuda")` call gets wrong for a validation run:

- Ordering: torchvision allocates the outputs on the caller's stream but decodes on a
  private stream that does not wait for it. With the previous batch's forward still
  queued, the caching allocator can hand the decoder memory those kernels still read
  (seen upstream on GPUs with hardware JPEG engines, H100/H200). We synchronise the
  caller's stream before every decode, and the decoder's work before the crops are used.
- Routing: nvJPEG cannot decode CMYK/YCCK (four-component) JPEGs, and its hardware path
  may return garbage for a truncated file instead of an error. Such files, and anything
  that is not a baseline/progressive JPEG, go to the CPU decoder, so they give exactly
  what the CPU path gives.
- Failures: a decoder that cannot initialise, a driver error or an out-of-memory is the
  GPU decoder being broken, not a bad file: that stops the run with one line. Only
  per-file format problems fall back to the CPU decoder, and they are counted.

Memory needs nothing here: `data.read_bytes` already refused any file whose header
declares more than the pixel cap, before its bytes reach either decoder.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
from torchvision.io import ImageReadMode, decode_image, decode_jpeg, encode_jpeg

from senet_repro.transforms import CaffePreprocess

from .data import quiet_torchvision_io, short_error
from .errors import ValidateError

# Start-of-frame markers (SOF0..SOF15 less DHT 0xC4, JPG 0xC8, DAC 0xCC): the frame header
# holds the image size and the number of colour components.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field (TEM, RST0..7, SOI, EOI).
_STANDALONE = frozenset([0x01, *range(0xD0, 0xDA)])
# Words in torchvision's messages when the nvJPEG library, CUDA or the device fails, as
# opposed to one file's bitstream (csrc/io/image/cuda/decode_jpegs_cuda.cpp).
_DECODER_FAULTS = ("initialize nvjpeg", "create nvjpeg", "cuda error", "out of memory", "driver")


@dataclass(frozen=True)
class JpegHeader:
    """What the frame header says: size and colour components."""

    height: int
    width: int
    components: int


def read_header(data: bytes) -> JpegHeader | None:
    """The frame header of a JPEG byte string, or None when it is not a well-formed JPEG."""
    if data[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker in _SOF_MARKERS:
            if pos + 10 > len(data) or length < 8:
                return None
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            return JpegHeader(height, width, data[pos + 9])
        if marker == 0xDA:  # start of scan before any frame header
            return None
        pos += 2 + length
    return None


def gpu_decodable(data: bytes) -> bool:
    """Whether nvJPEG gives what libjpeg would: a complete 1- or 3-component JPEG."""
    header = read_header(data)
    return (
        header is not None
        and header.components in (1, 3)
        and data.rstrip(b"\x00").endswith(b"\xff\xd9")  # truncated files go to the CPU decoder
    )


def is_decoder_fault(exc: BaseException) -> bool:
    """A failure of nvJPEG/CUDA itself rather than of one file's contents."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    message = str(exc).lower()
    return any(word in message for word in _DECODER_FAULTS)


@dataclass
class GpuJpegDecoder:
    """Decodes batches of file bytes on `device` and crops their views there; counts routes."""

    device: torch.device
    preprocess: CaffePreprocess
    routes: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        """Decode a known-good JPEG once: a broken decoder stops the run before it starts."""
        probe = encode_jpeg(torch.full((3, 16, 16), 128, dtype=torch.uint8))
        try:
            with quiet_torchvision_io():
                decode_jpeg([probe], mode=ImageReadMode.RGB, device=self.device)
            torch.cuda.synchronize(self.device)
        except (RuntimeError, ValueError) as exc:
            raise ValidateError(
                f"--gpu-decode: nvJPEG cannot decode on {self.device}: {short_error(exc)}; "
                "run without --gpu-decode"
            ) from None

    def decode(self, raw: list[torch.Tensor], errors: list[str]) -> torch.Tensor:
        """uint8 views (N, views, 3, crop, crop) on the device; unreadable files get a blank and an error."""
        crop = self.preprocess.crop
        blank = torch.zeros(self.preprocess.num_views, 3, crop, crop, dtype=torch.uint8, device=self.device)
        crops = [blank] * len(raw)
        readable = [i for i, message in enumerate(errors) if not message]
        on_gpu, on_cpu = [], []
        for i in readable:
            if gpu_decodable(raw[i].numpy().tobytes()):
                on_gpu.append(i)
            else:
                on_cpu.append(i)
        images = self._decode_gpu([raw[i] for i in on_gpu]) if on_gpu else []
        for i, image in zip(on_gpu, images):
            if image is None:
                self.routes["cpu fallback"] += 1
                on_cpu.append(i)
            else:
                self.routes["gpu"] += 1
                crops[i] = self.preprocess.resize_views(image)
        for i in on_cpu:
            try:
                with quiet_torchvision_io():
                    image = decode_image(raw[i], mode=ImageReadMode.RGB)
                self.routes["cpu"] += 1
                crops[i] = self.preprocess.resize_views(image.to(self.device))
            except (RuntimeError, ValueError) as exc:
                errors[i] = short_error(exc) or "unreadable"
        return torch.stack(crops)

    def _decode_gpu(self, raw: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """One nvJPEG call for the batch, one per file when the batch fails; None where a file fails."""
        torch.cuda.current_stream(self.device).synchronize()  # see the module docstring: ordering
        try:
            with quiet_torchvision_io():
                images: list[torch.Tensor | None] = list(
                    decode_jpeg(raw, mode=ImageReadMode.RGB, device=self.device)
                )
        except RuntimeError as exc:
            self._raise_if_fault(exc)
            images = [self._decode_one(data) for data in raw]
        torch.cuda.synchronize(self.device)  # the decoder's private stream is done before use
        return images

    def _decode_one(self, data: torch.Tensor) -> torch.Tensor | None:
        try:
            with quiet_torchvision_io():
                return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError as exc:
            self._raise_if_fault(exc)
            return None

    def _raise_if_fault(self, exc: RuntimeError) -> None:
        if is_decoder_fault(exc):
            raise ValidateError(
                f"--gpu-decode: nvJPEG failed on {self.device}: {short_error(exc)}; run without --gpu-decode"
            ) from None
