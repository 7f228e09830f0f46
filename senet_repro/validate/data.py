"""Finding an ImageNet validation set on disk, in any of three layouts, and loading it.

Every layout ends up as the same thing: image paths sorted by file name, each with its
class as an ILSVRC2012 devkit index (ILSVRC2012_ID - 1). The harness maps that to the
network's own class order later, so a layout never decides the order a network sees.

- `torchvision`: torchvision's ImageNet root, `val/<wnid>/*.JPEG` next to the devkit
  (`ILSVRC2012_devkit_t12.tar.gz`, the extracted folder, or torchvision's `meta.bin`). When
  the devkit has its ground-truth file, every image's folder is checked against it, which
  catches a val folder sorted with the wrong script.
- `imagefolder`: `val/<wnid>/*.JPEG` (or `<wnid>/*.JPEG`) without a devkit.
- `flat`: `ILSVRC2012_val_*.JPEG` files in one folder with a labels file: the SENet
  release's `ILSVRC2017_val.txt`, the devkit's ground truth, or a devkit that holds it.
- `list`: any label set (Places365, ...): a Caffe image list, `relative/path label` per line
  as Caffe's ImageData layer reads it, labels already in the network's output order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image  # imported here, before workers fork

from senet_repro import imagenet
from senet_repro.transforms import CaffePreprocess

from .errors import ValidateError


class FolderLayout(StrEnum):
    """How a validation set's images and labels are arranged on disk (tried in this order)."""

    TORCHVISION = "torchvision"  # torchvision's ImageNet: val/<wnid>/ beside the devkit
    IMAGEFOLDER = "imagefolder"  # one folder per WordNet id
    FLAT = "flat"  # all images in one folder, labels from a file
    LIST = "list"  # a Caffe image list (path label), labels already output indices


OUTPUT_ORDER = "output"
"""`ValSet.label_order` of a Caffe image list: its labels are the network's output indices."""
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
_LABEL_FILES = (imagenet.SENET_LABELS, Path(imagenet.GROUND_TRUTH).name)
# Decoded pixels allowed per image (PIL's default bomb limit): a 634-byte JPEG can claim
# 30000 x 30000 and take gigabytes to decode. ImageNet's largest image has ~10 M pixels.
MAX_IMAGE_PIXELS = 89_478_485


@dataclass(frozen=True)
class ValSet:
    """A validation set: image paths sorted by file name, labels in `label_order`.

    `label_order` is imagenet.ClassOrder.DEVKIT (ImageNet layouts: devkit indices, mapped to the
    network's class order later) or OUTPUT_ORDER (a Caffe list: the network's own indices).
    """

    layout: FolderLayout
    root: Path
    paths: tuple[Path, ...]
    labels: tuple[int, ...]
    label_source: str
    label_order: str = imagenet.ClassOrder.DEVKIT

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def names(self) -> list[str]:
        return [path.name for path in self.paths]

    def subset(self, classes: Iterable[int] | None = None, limit: int | None = None) -> ValSet:
        """Only images of `classes` (devkit indices), then only the first `limit` of them."""
        keep: Sequence[int] = range(len(self))
        if classes is not None:
            wanted = set(classes)
            keep = [i for i in keep if self.labels[i] in wanted]
        if limit is not None:
            keep = keep[:limit]
        return dataclasses.replace(
            self, paths=tuple(self.paths[i] for i in keep), labels=tuple(self.labels[i] for i in keep)
        )


def _images_in(folder: Path) -> list[Path]:
    """Image files in `folder` (scandir: no stat per file, which matters for 50,000 on NFS).

    AppleDouble files (`._name`, macOS's resource forks on foreign file systems) are not images.
    """
    with os.scandir(folder) as entries:
        return [
            Path(e.path)
            for e in entries
            if e.is_file() and Path(e.name).suffix.lower() in IMAGE_SUFFIXES and not e.name.startswith("._")
        ]


def _class_folders(folder: Path) -> list[Path]:
    """Sub-folders named like wnids (an empty list when there are none)."""
    if not folder.is_dir():
        return []
    with os.scandir(folder) as entries:
        return [Path(e.path) for e in entries if e.is_dir() and imagenet.is_wnid(e.name)]


def _sorted(pairs: Iterable[tuple[Path, int]], layout: FolderLayout, root: Path, source: str) -> ValSet:
    ordered = sorted(pairs, key=lambda pair: (pair[0].name, str(pair[0])))
    if not ordered:
        raise ValidateError(f"{root}: the {layout} layout was recognised but holds no images")
    return ValSet(layout, root, tuple(p for p, _ in ordered), tuple(label for _, label in ordered), source)


def _folder_samples(folders: Sequence[Path]) -> list[tuple[Path, int]]:
    classes = imagenet.imagenet_classes(imagenet.ClassOrder.DEVKIT)
    return [(path, classes.index(folder.name)) for folder in folders for path in _images_in(folder)]


def _torchvision_devkit_meta(root: Path) -> tuple[imagenet.DevkitMeta | None, dict[str, int] | None, str]:
    """Devkit classes (and ground truth) of a torchvision root, from the devkit or meta.bin."""
    devkit_path = imagenet.find_devkit(root)
    if devkit_path is not None:
        devkit = imagenet.read_devkit(devkit_path)
        return devkit.meta, devkit.ground_truth, f"devkit {devkit_path.name}"
    meta_bin = root / "meta.bin"
    if meta_bin.is_file():
        try:
            wnid_to_classes, _ = torch.load(meta_bin, weights_only=True)
        except Exception as exc:  # torch.load raises many types for a foreign file
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]  # torch adds advice lines
            raise ValidateError(f"{meta_bin} is not torchvision's ImageNet meta.bin: {reason}") from None
        words = tuple(", ".join(names) for names in wnid_to_classes.values())
        return imagenet.DevkitMeta(tuple(wnid_to_classes), words), None, "torchvision meta.bin"
    return None, None, ""


def _open_torchvision(root: Path) -> ValSet | None:
    folders = _class_folders(root / "val")
    if not folders:
        return None
    meta, ground_truth, source = _torchvision_devkit_meta(root)
    if meta is None:
        return None
    meta.check_standard()
    valset = _sorted(_folder_samples(folders), FolderLayout.TORCHVISION, root, f"folder names ({source})")
    if ground_truth is not None:
        wrong = [
            path.name
            for path, label in zip(valset.paths, valset.labels)
            if ground_truth.get(path.name, label) != label
        ]
        if wrong:
            raise ValidateError(
                f"{root}/val: {len(wrong)} image(s) sit in a folder that contradicts the "
                f"devkit ground truth, e.g. {wrong[0]}; the val folder was sorted wrongly"
            )
    return valset


def _open_imagefolder(root: Path) -> ValSet | None:
    for folder in (root / "val", root):
        folders = _class_folders(folder)
        if folders:
            return _sorted(_folder_samples(folders), FolderLayout.IMAGEFOLDER, folder, "folder names")
    return None


def _find_labels(folder: Path) -> tuple[dict[str, int], str] | None:
    for name in _LABEL_FILES:
        if (folder / name).is_file():
            return imagenet.read_labels_file(folder / name), str(folder / name)
    devkit_path = imagenet.find_devkit(folder)
    if devkit_path is not None:
        devkit = imagenet.read_devkit(devkit_path)
        if devkit.ground_truth is not None:
            devkit.meta.check_standard()
            return devkit.ground_truth, f"ground truth in {devkit_path}"
    return None


def _open_flat(root: Path, labels_file: Path | None) -> ValSet | None:
    for folder in (root, root / "val"):
        if not folder.is_dir():
            continue
        images = [p for p in _images_in(folder) if imagenet.val_image_number(p.name) is not None]
        if not images:
            continue
        found = (
            (imagenet.read_labels_file(labels_file), str(labels_file))
            if labels_file
            else _find_labels(folder) or (_find_labels(root) if folder != root else None)
        )
        if found is None:
            raise ValidateError(
                f"{folder} holds ILSVRC2012_val_*.JPEG files but no labels: put "
                f"{' or '.join(_LABEL_FILES)} or the devkit next to them, or pass --labels"
            )
        labels, source = found
        unlabelled = [p.name for p in images if p.name not in labels]
        if unlabelled:
            raise ValidateError(
                f"{source} has no label for {len(unlabelled)} image(s), e.g. {sorted(unlabelled)[0]}"
            )
        return _sorted(((p, labels[p.name]) for p in images), FolderLayout.FLAT, folder, source)
    return None


def _text_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text without the line break) of the non-blank lines of a UTF-8 text file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValidateError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return [(number, line.rstrip("\r")) for number, line in enumerate(text.split("\n"), 1) if line.strip()]


def _is_index(text: str) -> bool:
    return text.isascii() and text.isdigit()


def read_image_list(path: Path) -> list[tuple[str, int]]:
    """(file name, label) of each line of a Caffe image list, split at the last space as ImageData does."""
    entries = []
    for number, line in _text_lines(path):
        name, _, label = line.rpartition(" ")
        if not name or not _is_index(label):
            raise ValidateError(f"{path}:{number}: expected 'relative/path label' (label >= 0), got {line!r}")
        entries.append((name, int(label)))
    if not entries:
        raise ValidateError(f"{path} lists no images")
    return entries


def _open_list(root: Path, labels_file: Path | None) -> ValSet:
    if labels_file is None:
        raise ValidateError(
            "the list layout needs --labels: a Caffe image list, 'relative/path label' per line"
        )
    samples = [(root / name, label) for name, label in read_image_list(labels_file)]
    missing = [str(path) for path, _ in samples if not path.is_file()]
    if missing:
        raise ValidateError(
            f"{labels_file} lists {len(missing)} image(s) not found under {root}, e.g. {missing[0]}"
        )
    valset = _sorted(samples, FolderLayout.LIST, root, str(labels_file))
    return dataclasses.replace(valset, label_order=OUTPUT_ORDER)


def read_label_set(path: Path) -> tuple[str, ...]:
    """Class names in output order, one per line (`/a/airfield 0` or `n01440764 tench`).

    A line ending in an integer gives its index, which must be its position.
    """
    names: list[str] = []
    for number, line in _text_lines(path):
        text = line.strip()
        head, _, tail = text.rpartition(" ")
        if head and _is_index(tail):
            if int(tail) != len(names):
                raise ValidateError(f"{path}:{number}: class index {tail}, expected {len(names)}")
            text = head.strip()
        names.append(text)
    if not names:
        raise ValidateError(f"{path} names no classes")
    return tuple(names)


def open_valset(root: str | Path, *, layout: str = "auto", labels_file: str | Path | None = None) -> ValSet:
    """Recognise the layout of `root` (or use `layout`) and list its images with labels."""
    root = Path(root)
    if not root.is_dir():
        raise ValidateError(f"{root} is not a folder")
    if layout not in ("auto", *FolderLayout):
        raise ValidateError(f"unknown layout {layout!r}; choose auto or one of {', '.join(FolderLayout)}")
    labels_path = Path(labels_file) if labels_file is not None else None
    if labels_path is not None and not labels_path.is_file():
        raise ValidateError(f"labels file {labels_path} does not exist")
    openers = {
        FolderLayout.TORCHVISION: lambda: _open_torchvision(root),
        FolderLayout.IMAGEFOLDER: lambda: _open_imagefolder(root),
        FolderLayout.FLAT: lambda: _open_flat(root, labels_path),
        FolderLayout.LIST: lambda: _open_list(root, labels_path),
    }
    if layout != "auto":
        order = [FolderLayout(layout)]
    elif labels_path is not None:
        order = [FolderLayout.FLAT]
    else:
        order = [name for name in FolderLayout if name != FolderLayout.LIST]  # a list file is never guessed
    for name in order:
        valset = openers[name]()
        if valset is not None:
            return valset
    raise ValidateError(
        f"no ImageNet validation set {'in the ' + layout + ' layout ' if layout != 'auto' else ''}found in "
        f"{root}: expected val/<wnid>/*.JPEG with the devkit ({imagenet.DEVKIT_ARCHIVE} or meta.bin) "
        f"[torchvision], val/<wnid>/*.JPEG or <wnid>/*.JPEG [imagefolder], or ILSVRC2012_val_*.JPEG "
        f"with {' or '.join(_LABEL_FILES)} [flat]"
    )


@contextlib.contextmanager
def quiet_torchvision_io() -> Iterator[None]:
    """torchvision 0.29 deprecates its image codecs in favour of torchcodec, warning on every call.

    They remain in every torchvision this project supports (<= 0.29) and decode twice as
    fast as PIL here with identical pixels, so the per-image warning is silenced.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def read_bytes(path: Path) -> torch.Tensor:
    """A file's bytes as a uint8 tensor (what the decoders take).

    Read by Python, not `torchvision.io.read_file`, which cannot open a name that
    is not valid UTF-8; the size the header declares is checked (`check_pixels`).
    """
    data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    check_pixels(data)
    return data


def check_pixels(data: torch.Tensor) -> None:
    """ValueError when the image header declares more than MAX_IMAGE_PIXELS, before anything is decoded.

    A few hundred bytes of JPEG can claim 30000 x 30000 pixels: the decoder would
    allocate 2.7 GB per image and worker. PIL reads only the header here.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data.numpy().tobytes())) as image:
                width, height = image.size
        except Image.DecompressionBombError as exc:  # over twice PIL's limit, which is ours
            pixels = str(exc).split("(", 1)[-1].split(" ", 1)[0]
            raise ValueError(f"{pixels} pixels exceed the {MAX_IMAGE_PIXELS:,}-pixel cap") from None
        except OSError:
            return  # not an image PIL knows: the decoder reports what is wrong with it
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(f"{width}x{height} exceeds the {MAX_IMAGE_PIXELS:,}-pixel cap")


def read_image(path: Path) -> torch.Tensor:
    """Decode an image file to uint8 CHW RGB with libjpeg-turbo (same pixels as OpenCV/PIL)."""
    with quiet_torchvision_io():
        return decode_image(read_bytes(path), mode=ImageReadMode.RGB)


def short_error(exc: BaseException) -> str:
    """The useful last part of a decoder message (torchvision prefixes its source location)."""
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return text.rsplit(".cpp:", 1)[-1].split(", ", 1)[-1] if ".cpp:" in text else text


class ValImages(Dataset):
    """Items (image, label, index into the ValSet, error message or "").

    With `raw=False` the image is the 8-bit crops, views x 3 x crop x crop (normalisation
    happens on the device, so workers ship 4x less data); with `raw=True` it is the file's bytes, for
    decoding on the GPU. An unreadable file gives a blank image and its error message,
    so one bad file never stops a worker.
    """

    def __init__(
        self, valset: ValSet, preprocess: CaffePreprocess, indices: Sequence[int], *, raw: bool = False
    ) -> None:
        self.valset = valset
        self.preprocess = preprocess
        self.indices = list(indices)
        self.raw = raw

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int, int, str]:
        index = self.indices[item]
        path = self.valset.paths[index]
        label = self.valset.labels[index]
        try:
            image = read_bytes(path) if self.raw else self.preprocess.resize_views(read_image(path))
            return image, label, index, ""
        except (OSError, RuntimeError, ValueError) as exc:
            crop = self.preprocess.crop
            blank = torch.zeros(
                0 if self.raw else (self.preprocess.num_views, 3, crop, crop), dtype=torch.uint8
            )
            return blank, label, index, short_error(exc) or "unreadable"


def collate(
    batch: list[tuple[torch.Tensor, int, int, str]],
) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor, torch.Tensor, list[str]]:
    """Stack crops (or keep raw byte tensors as a list); labels and indices as int64."""
    images, labels, indices, errors = zip(*batch)
    same_shape = all(image.shape == images[0].shape for image in images) and images[0].dim() == 4
    return (
        torch.stack(images) if same_shape else list(images),
        torch.tensor(labels),
        torch.tensor(indices),
        list(errors),
    )
