"""Seeded random-weight, BatchNorm-calibrated caffemodels of real prototxts, cached on disk.

The original SENet caffemodels are not reachable from CI, so tests (and the
benchmark) write caffemodels of the released deploy prototxts with random weights
from `prototxt.random_weights` whose BatchNorm statistics are then measured on one
image-like batch (`converter.calibrate.calibrate_batchnorm`), so every layer sees
activations of order 1 as in a trained net.

    prototxt, caffemodel = make_random_caffemodel(path, out_dir, seed=0, input_hw=(320, 320))

Results are cached in `out_dir` (default `senet_repro.assets.cache_dir()/test-models`) under
a key made of the net name, the seed, the input size and a hash of everything that
determines the bytes (the prototxt text and the source of the weight generator and
calibration), so a change to any of them regenerates instead of reusing stale files.
"""

from __future__ import annotations

import glob
import hashlib
import inspect
import os
from pathlib import Path

import numpy as np

from converter import calibrate
from prototxt import build_net, caffe_pb2, parse_prototxt, random_weights, write_caffemodel, write_prototxt
from senet_repro.assets import cache_dir

CALIBRATION_BATCH = 4


def default_dir() -> Path:
    """Where generated test models live unless told otherwise."""
    return cache_dir() / "test-models"


def with_input_size(proto: caffe_pb2.NetParameter, input_hw: tuple[int, int]) -> caffe_pb2.NetParameter:
    """A copy of `proto` whose inputs (Input layers or legacy fields) are H x W = `input_hw`."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(proto)
    height, width = input_hw
    shapes = [shape for layer in out.layer if layer.type == "Input" for shape in layer.input_param.shape]
    shapes += list(out.input_shape)
    for shape in shapes:
        if len(shape.dim) != 4:
            raise ValueError(f"input shape {list(shape.dim)} is not N x C x H x W")
        shape.dim[2], shape.dim[3] = height, width
    if out.input_dim:
        for start in range(0, len(out.input_dim), 4):
            out.input_dim[start + 2], out.input_dim[start + 3] = height, width
    elif not shapes:
        raise ValueError(f"net '{proto.name}' declares no input shape to resize")
    return out


def _cache_key(name: str, text: str, seed: int, input_hw: tuple[int, int] | None) -> str:
    digest = hashlib.sha256(text.encode())
    for source in (random_weights, calibrate):
        digest.update(inspect.getsource(source).encode())
    size = "native" if input_hw is None else f"{input_hw[0]}x{input_hw[1]}"
    return f"{name}-seed{seed}-{size}-{digest.hexdigest()[:12]}"


def _remove_stale(directory: Path, key: str) -> None:
    """Delete the files of `key`'s net, seed and size made by an older generator (another hash):
    each code change would otherwise leave gigabytes behind in the cache."""
    stem = key.rsplit("-", 1)[0]
    for stale in directory.glob(f"{glob.escape(stem)}-*"):
        if stale.stem.rsplit("-", 1)[0] == stem and stale.stem != key:
            stale.unlink(missing_ok=True)


def make_random_caffemodel(
    prototxt_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    input_hw: tuple[int, int] | None = None,
) -> tuple[Path, Path]:
    """Write (or reuse) a prototxt and a random, calibrated caffemodel of it.

    Returns `(prototxt, caffemodel)` inside `out_dir`; the prototxt is the
    original with its input resized to `input_hw` when given. Weights come from
    `random_blobs(net, seed)`; BatchNorm statistics are measured on a batch of
    CALIBRATION_BATCH `image_like` inputs seeded from `seed`.
    """
    source = Path(prototxt_path)
    proto = parse_prototxt(source)
    if input_hw is not None:
        proto = with_input_size(proto, input_hw)
    key = _cache_key(source.stem, source.read_text(), seed, input_hw)
    directory = Path(out_dir) if out_dir is not None else default_dir()
    prototxt, caffemodel = directory / f"{key}.prototxt", directory / f"{key}.caffemodel"
    if prototxt.is_file() and caffemodel.is_file():
        return prototxt, caffemodel
    directory.mkdir(parents=True, exist_ok=True)
    _remove_stale(directory, key)
    blobs = calibrate.random_calibrated_blobs(build_net(proto), seed, CALIBRATION_BATCH)
    write_caffemodel(
        caffemodel, proto, {name: [np.asarray(a) for a in arrays] for name, arrays in blobs.items()}
    )
    write_prototxt(proto, prototxt)
    return prototxt, caffemodel
