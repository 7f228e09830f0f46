"""A miniature ImageNet validation set, in all three layouts, with a network whose answers are known.

The set has a few real ImageNet classes and small JPEGs named like the real ones
(`ILSVRC2012_val_00000001.JPEG`, ...). Its devkit is faithful in structure: a `meta.mat`
written with scipy.io.savemat holding the `synsets` struct array as the real devkit does
(the 1000 leaf synsets with their real ILSVRC2012_IDs, WNIDs and words, plus a few
internal nodes that readers must skip), and the validation ground-truth file, packed as
`ILSVRC2012_devkit_t12.tar.gz`. The same images are written as a torchvision ImageNet
root, an ImageFolder tree and a flat folder with `ILSVRC2017_val.txt` and the ground truth.

Every image is one uniform grey level that encodes a number (its `code`).
`KnownAnswerNet` reads the code back from the preprocessed tensor and returns a row
of a score table; `known_answer_net` fills that table so that each image's true class
lands at a chosen rank. The expected top-1/top-5 errors are therefore known exactly,
and a label in the wrong class order lands at a different rank and changes them.

    python -m senet_repro.validate.fake_imagenet OUT --known-answer-onnx OUT/known.onnx
    senet-validate --backend onnxruntime --weights OUT/known.onnx --data OUT/flat   # 30.00 % / 10.00 %
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import click
import numpy as np
import torch
from PIL import Image
from torch import nn

from converter.onnx_export import export_onnx
from prototxt import InputError, OutputError
from prototxt.atomic import scratch_dir
from senet_repro import imagenet
from senet_repro.cli._common import OUTPUT, force_option, guard_outputs, user_errors
from senet_repro.transforms import CAFFE_MEAN_BGR

MAX_CODES = 64
_CODE_STEP = 4  # grey levels between codes: JPEG and resizing may move a level by one, never by two
_INTERNAL_NODES = (  # (wnid, words, children as ILSVRC2012_IDs); a mock of the devkit's upper hierarchy
    ("n00001740", "entity", (1002, 1003)),
    ("n00021939", "artifact, artefact", tuple(range(400, 1001))),
    ("n00015388", "animal, animate being, beast, brute, creature, fauna", tuple(range(1, 400))),
)


def code_grey(code: int) -> int:
    """Grey level (0..255) of the images that carry `code`."""
    return _CODE_STEP * code + _CODE_STEP // 2


@dataclass(frozen=True)
class FakeImage:
    name: str
    wnid: str
    devkit_index: int
    code: int
    size: tuple[int, int]  # height, width


@dataclass(frozen=True)
class FakeImageNet:
    root: Path
    images: tuple[FakeImage, ...]
    layouts: dict[str, Path]  # layout name -> the folder to hand to senet-validate --data

    def labels(self, order: str = imagenet.ClassOrder.DEVKIT) -> list[int]:
        """True class of each image in the given class order."""
        classes = imagenet.imagenet_classes(order)
        return [classes.index(image.wnid) for image in self.images]


def write_meta_mat(
    target: Path | IO[bytes],
    wnids: Sequence[str],
    words: Sequence[str],
    *,
    internal_nodes: Sequence[tuple[str, str, Sequence[int]]] = (),
) -> None:
    """A devkit meta.mat: struct array `synsets` (N x 1) with the devkit's eight fields.

    Leaves get ILSVRC2012_ID 1..len(wnids) in the given order and num_children 0; each
    internal node gets the next ID and its children.
    """
    from scipy.io import savemat

    fields = [
        "ILSVRC2012_ID",
        "WNID",
        "words",
        "gloss",
        "num_children",
        "children",
        "wordnet_height",
        "num_train_images",
    ]
    synsets = np.zeros((len(wnids) + len(internal_nodes), 1), dtype=[(f, object) for f in fields])
    for i, (wnid, text) in enumerate(zip(wnids, words)):
        synsets[i, 0] = (
            float(i + 1),
            wnid,
            text,
            f"fake gloss of {text}",
            0.0,
            np.zeros((1, 0)),
            0.0,
            1300.0,
        )
    for j, (wnid, text, children) in enumerate(internal_nodes):
        child_ids = np.asarray([children], dtype=np.float64)
        synsets[len(wnids) + j, 0] = (
            float(len(wnids) + j + 1),
            wnid,
            text,
            f"fake gloss of {text}",
            float(len(children)),
            child_ids,
            1.0 + j,
            0.0,
        )
    # savemat documents file objects too; scipy-stubs 1.17 type paths only.
    savemat(target, {"synsets": synsets})  # type: ignore[arg-type]


def write_devkit_archive(path: Path, ground_truth: Sequence[int]) -> None:
    """ILSVRC2012_devkit_t12.tar.gz with the standard meta.mat and `ground_truth` (ILSVRC2012_IDs)."""
    classes = imagenet.imagenet_classes(imagenet.ClassOrder.DEVKIT)
    meta = io.BytesIO()
    write_meta_mat(meta, classes.wnids, classes.words, internal_nodes=_INTERNAL_NODES)
    members = {
        imagenet.META_MAT: meta.getvalue(),
        imagenet.GROUND_TRUTH: "".join(f"{i}\n" for i in ground_truth).encode(),
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{imagenet.DEVKIT_DIR}/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    path.write_bytes(buffer.getvalue())


def _jpeg(grey: int, size: tuple[int, int], greyscale: bool) -> bytes:
    height, width = size
    pixels = np.full((height, width) if greyscale else (height, width, 3), grey, dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=95)
    return out.getvalue()


# The folders `make_fake_imagenet` (re)creates under its root, one per layout.
LAYOUT_FOLDERS = ("torchvision", "imagefolder", "flat")


def make_fake_imagenet(
    root: str | Path, *, num_classes: int = 5, images_per_class: int = 5, seed: int = 0
) -> FakeImageNet:
    """Write the miniature set under `root` in the three layouts and describe it."""
    root = Path(root)
    total = num_classes * images_per_class
    if not 0 < total <= MAX_CODES:
        raise InputError(f"{total} images requested; the grey-level code allows 1..{MAX_CODES}")
    rng = np.random.default_rng(seed)
    classes = imagenet.imagenet_classes(imagenet.ClassOrder.DEVKIT)
    chosen = sorted(rng.choice(len(classes), size=num_classes, replace=False).tolist())
    labels = rng.permutation(np.repeat(chosen, images_per_class)).tolist()
    codes = rng.permutation(MAX_CODES)[:total].tolist()
    images = []
    for number, (label, code) in enumerate(zip(labels, codes), start=1):
        size = (int(rng.integers(12, 48)), int(rng.integers(12, 48)))
        images.append(FakeImage(imagenet.val_image_name(number), classes.wnid(label), label, code, size))

    layouts = {name: root / name for name in LAYOUT_FOLDERS}
    with scratch_dir(root) as staging:  # built completely, then each layout replaces its folder
        built = {name: staging / name for name in LAYOUT_FOLDERS}
        for k, image in enumerate(images):
            data = _jpeg(code_grey(image.code), image.size, greyscale=k % 7 == 3)
            for target in (
                built["torchvision"] / "val" / image.wnid,
                built["imagefolder"] / "val" / image.wnid,
                built["flat"],
            ):
                target.mkdir(parents=True, exist_ok=True)
                (target / image.name).write_bytes(data)
        ground_truth = [image.devkit_index + 1 for image in images]
        write_devkit_archive(built["torchvision"] / imagenet.DEVKIT_ARCHIVE, ground_truth)
        (built["flat"] / imagenet.SENET_LABELS).write_text(
            "".join(f"{image.name} {image.devkit_index}\n" for image in images)
        )
        (built["flat"] / Path(imagenet.GROUND_TRUTH).name).write_text("".join(f"{i}\n" for i in ground_truth))
        for name, folder in layouts.items():
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(built[name], folder)
    return FakeImageNet(root, tuple(images), layouts)


class KnownAnswerNet(nn.Module):
    """Reads an image's grey-level code from the Caffe-preprocessed input and returns table[code].

    The input is BGR minus `mean_bgr`; adding the means back and averaging over
    everything recovers the grey level, which is rounded to the nearest code.
    """

    table: torch.Tensor
    mean: torch.Tensor

    def __init__(self, table: torch.Tensor, mean_bgr: Sequence[float] = CAFFE_MEAN_BGR) -> None:
        super().__init__()
        self.register_buffer("table", table.float())
        self.register_buffer("mean", torch.tensor(mean_bgr, dtype=torch.float32).view(1, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grey = (x.float().mean(dim=(2, 3)) + self.mean).mean(dim=1)
        code = torch.round((grey - _CODE_STEP // 2) / _CODE_STEP).long().clamp(0, self.table.shape[0] - 1)
        return self.table[code]


def known_answer_net(
    fake: FakeImageNet,
    ranks: Sequence[int],
    *,
    order: str = imagenet.ClassOrder.DEVKIT,
    num_classes: int = imagenet.NUM_CLASSES,
    seed: int = 0,
) -> KnownAnswerNet:
    """A net (classes in `order`) under which image k's true class has exactly ranks[k] classes above it.

    Scores are distinct within a row, so top-k never depends on tie-breaking.
    """
    if len(ranks) != len(fake.images):
        raise ValueError(f"{len(ranks)} ranks for {len(fake.images)} images")
    rng = np.random.default_rng(seed)
    table = np.stack([rng.permutation(num_classes) for _ in range(MAX_CODES)]).astype(np.float32)
    for image, label, rank in zip(fake.images, fake.labels(order), ranks):
        others = np.delete(np.arange(num_classes), label)
        above = rng.choice(others, size=rank, replace=False)
        below = np.setdiff1d(others, above)
        row = np.empty(num_classes, dtype=np.float32)
        row[label] = 0.0
        row[above] = 1.0 + rng.permutation(rank)
        row[below] = -1.0 - rng.permutation(len(below))
        table[image.code] = row
    return KnownAnswerNet(torch.from_numpy(table))


def expected_errors(ranks: Sequence[int]) -> tuple[int, int]:
    """(top-1 wrong, top-5 wrong) image counts implied by the ranks."""
    return sum(rank >= 1 for rank in ranks), sum(rank >= 5 for rank in ranks)


def demo_ranks(count: int) -> list[int]:
    """A fixed pattern of ranks: 30 % wrong at top-1, 10 % at top-5 (for 10 images or multiples)."""
    return [(0, 0, 1, 0, 4, 0, 0, 7, 0, 0)[k % 10] for k in range(count)]


@click.command()
@click.argument("out", type=OUTPUT)
@click.option("--classes", "num_classes", default=5, show_default=True, help="Number of classes.")
@click.option("--per-class", default=4, show_default=True, help="Images per class.")
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--known-answer-onnx",
    type=OUTPUT,
    help="Also write the known-answer network (demo_ranks) as ONNX here.",
)
@force_option
@user_errors
def main(
    out: Path, num_classes: int, per_class: int, seed: int, known_answer_onnx: Path | None, force: bool
) -> None:
    """Write a miniature ImageNet validation set to OUT in the three layouts.

    OUT/torchvision, OUT/imagefolder and OUT/flat are replaced as a whole, so an
    existing one is only replaced with --force.
    """
    guard_outputs([known_answer_onnx] if known_answer_onnx else [], force=force)
    existing = [out / name for name in LAYOUT_FOLDERS if (out / name).exists()]
    if existing and not force:
        raise OutputError(f"{existing[0]}: exists; refusing to replace a folder without --force")
    fake = make_fake_imagenet(out, num_classes=num_classes, images_per_class=per_class, seed=seed)
    for name, folder in fake.layouts.items():
        click.echo(f"{name:12s} {folder}")
    if known_answer_onnx is not None:
        ranks = demo_ranks(len(fake.images))
        export_onnx(
            known_answer_net(fake, ranks),
            known_answer_onnx,
            torch.zeros(2, 3, 224, 224),
            output_names=["classifier"],
        )
        top1, top5 = expected_errors(ranks)
        click.echo(
            f"{known_answer_onnx}: expected top-1 error {100 * top1 / len(ranks):.2f} %, "
            f"top-5 error {100 * top5 / len(ranks):.2f} %"
        )


if __name__ == "__main__":
    main()
