"""Class orders and label files: the devkit <-> torchvision permutation from every source."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from senet_repro import imagenet
from senet_repro.imagenet import (
    ClassOrder,
    LabelError,
    imagenet_classes,
    permutation_devkit_to_torchvision,
)
from senet_repro.validate.fake_imagenet import make_fake_imagenet, write_devkit_archive, write_meta_mat
from tests.conftest import unavailable

REPO_ROOT = Path(__file__).resolve().parent.parent
SENET_LABEL_FILE = REPO_ROOT.parent / "shared" / "senet-caffe" / imagenet.SENET_LABELS


@pytest.fixture(scope="module")
def senet_labels() -> dict[str, int]:
    if not SENET_LABEL_FILE.is_file():
        unavailable(
            f"the SENet label file is not at {SENET_LABEL_FILE} "
            "(it sits next to the repository, in ../shared/senet-caffe/)"
        )
    return imagenet.read_labels_file(SENET_LABEL_FILE)


def test_real_label_file_joined_with_imagenet_classes(senet_labels: dict[str, int]) -> None:
    assert len(senet_labels) == imagenet.NUM_VAL_IMAGES
    first = "ILSVRC2012_val_00000001.JPEG"
    assert senet_labels[first] == 489
    assert imagenet.imagenet_classes_val_labels()[first] == 65
    permutation = permutation_devkit_to_torchvision(devkit_labels=senet_labels)
    assert permutation[489] == 65
    assert sorted(permutation) == list(range(1000))
    # The built-in devkit order is exactly what the two files imply.
    devkit, torchvision = imagenet_classes(ClassOrder.DEVKIT), imagenet_classes(ClassOrder.TORCHVISION)
    assert devkit.permutation_to(torchvision) == permutation
    assert devkit.wnid(489) == torchvision.wnid(65) == "n01751748"
    assert devkit.name(489) == torchvision.name(65) == "sea snake"


def test_orders_agree_with_imagenet_classes_and_the_devkit_convention() -> None:
    devkit, torchvision = imagenet_classes(ClassOrder.DEVKIT), imagenet_classes(ClassOrder.TORCHVISION)
    assert devkit.wnid(0) == "n02119789" and devkit.name(0) == "kit fox"
    assert torchvision.wnid(0) == "n01440764" and torchvision.name(0) == "tench"
    assert list(torchvision.wnids) == sorted(devkit.wnids)
    package = imagenet._package_json("imagenet1k_to_21k.json")
    assert [package[str(i)] for i in range(1000)] == list(torchvision.wnids)


def test_permutation_from_a_fake_devkit_meta_mat(tmp_path: Path) -> None:
    """A meta.mat in the devkit's structure, written by scipy, gives the same permutation."""
    archive = tmp_path / imagenet.DEVKIT_ARCHIVE
    write_devkit_archive(archive, ground_truth=[490, 1, 1000])
    devkit = imagenet.read_devkit(archive)
    devkit.meta.check_standard()
    assert devkit.ground_truth == {
        "ILSVRC2012_val_00000001.JPEG": 489,
        "ILSVRC2012_val_00000002.JPEG": 0,
        "ILSVRC2012_val_00000003.JPEG": 999,
    }
    permutation = permutation_devkit_to_torchvision(devkit.meta)
    assert permutation == imagenet_classes(ClassOrder.DEVKIT).permutation_to(
        imagenet_classes(ClassOrder.TORCHVISION)
    )
    assert permutation[489] == 65


def test_torchvision_parses_our_fake_devkit_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision's own devkit parser reads the fake archive as it reads the real one."""
    tv_imagenet = pytest.importorskip("torchvision.datasets.imagenet")
    monkeypatch.setattr(tv_imagenet, "_verify_archive", lambda *args: None)  # the md5 is the real file's
    write_devkit_archive(tmp_path / imagenet.DEVKIT_ARCHIVE, ground_truth=[490, 1, 1000])
    tv_imagenet.parse_devkit_archive(str(tmp_path))
    wnid_to_classes, val_wnids = tv_imagenet.load_meta_file(str(tmp_path))
    devkit = imagenet_classes(ClassOrder.DEVKIT)
    assert list(wnid_to_classes) == list(devkit.wnids)
    assert val_wnids == [devkit.wnid(489), devkit.wnid(0), devkit.wnid(999)]
    assert wnid_to_classes["n02119789"] == ("kit fox", "Vulpes macrotis")


def test_a_small_devkit_with_a_known_permutation() -> None:
    """Leaves in ID order n03, n01, n04, n02 -> sorted positions 2, 0, 3, 1; inner nodes skipped."""
    buffer = io.BytesIO()
    write_meta_mat(
        buffer,
        ["n00000003", "n00000001", "n00000004", "n00000002"],
        ["c", "a", "d", "b"],
        internal_nodes=[("n00000009", "root", (1, 2, 3, 4))],
    )
    meta = imagenet.read_meta_mat(io.BytesIO(buffer.getvalue()))
    assert meta.wnids == ("n00000003", "n00000001", "n00000004", "n00000002")
    assert permutation_devkit_to_torchvision(meta) == [2, 0, 3, 1]
    with pytest.raises(LabelError, match="devkit order"):
        meta.check_standard()


def test_a_meta_mat_with_gaps_in_the_ids_or_without_synsets_is_refused() -> None:
    from scipy.io import savemat

    synsets = np.zeros(
        (2, 1), dtype=[(field, object) for field in ("ILSVRC2012_ID", "WNID", "words", "num_children")]
    )
    synsets[0, 0] = (1.0, "n00000001", "a", 0.0)
    synsets[1, 0] = (3.0, "n00000003", "c", 0.0)
    buffer = io.BytesIO()
    savemat(buffer, {"synsets": synsets})  # type: ignore[arg-type]  # documented; scipy-stubs 1.17 omit it
    with pytest.raises(LabelError, match="not exactly 1..2"):
        imagenet.read_meta_mat(io.BytesIO(buffer.getvalue()))
    buffer = io.BytesIO()
    savemat(buffer, {"something": np.zeros(3)})  # type: ignore[arg-type]  # as above
    with pytest.raises(LabelError, match="synsets"):
        imagenet.read_meta_mat(io.BytesIO(buffer.getvalue()))


def test_joins_that_are_not_bijections_are_refused() -> None:
    with pytest.raises(LabelError, match="maps to torchvision class"):
        permutation_devkit_to_torchvision(
            devkit_labels={"a": 0, "b": 0, "c": 1}, torchvision_labels={"a": 5, "b": 6, "c": 7}
        )
    with pytest.raises(LabelError, match="without a partner"):
        permutation_devkit_to_torchvision(devkit_labels={"a": 0, "b": 1}, torchvision_labels={"a": 1})
    with pytest.raises(LabelError, match="bijection"):
        permutation_devkit_to_torchvision(devkit_labels={"a": 0, "b": 1}, torchvision_labels={"a": 1, "b": 1})
    imagenet.check_bijection([1, 2, 0], 3)
    with pytest.raises(LabelError):
        imagenet.check_bijection([0, 0, 1], 3)


def test_class_lookup_by_wnid_index_and_name() -> None:
    classes = imagenet_classes(ClassOrder.DEVKIT)
    assert classes.index("n02119789") == classes.index(0) == classes.index("kit fox") == 0
    assert classes.index("Vulpes macrotis") == 0
    assert classes.index("kit fox, Vulpes macrotis") == 0
    assert classes.index("489") == 489
    with pytest.raises(LabelError, match="ambiguous"):
        classes.index("crane")  # the bird and the machine
    with pytest.raises(LabelError, match="unknown"):
        classes.index("unicorn")
    with pytest.raises(LabelError, match="not one of"):
        classes.index("n99999999")
    with pytest.raises(LabelError, match="outside"):
        classes.index(1000)
    with pytest.raises(LabelError, match="unknown class order"):
        imagenet_classes("alphabetical")


def test_both_label_file_formats(tmp_path: Path) -> None:
    fake = make_fake_imagenet(tmp_path, num_classes=3, images_per_class=2)
    senet = imagenet.read_labels_file(fake.layouts["flat"] / imagenet.SENET_LABELS)
    ground_truth = imagenet.read_labels_file(fake.layouts["flat"] / Path(imagenet.GROUND_TRUTH).name)
    assert senet == ground_truth == {image.name: image.devkit_index for image in fake.images}
    bad = tmp_path / "bad.txt"
    bad.write_text("ILSVRC2012_val_00000001.JPEG 3\nILSVRC2012_val_00000002.JPEG x\n")
    with pytest.raises(LabelError, match=r"bad.txt:2"):
        imagenet.read_labels_file(bad)
    bad.write_text("5\n1001\n")
    with pytest.raises(LabelError, match=r"bad.txt:2: expected an ILSVRC2012_ID"):
        imagenet.read_labels_file(bad)


def test_validation_file_names() -> None:
    assert imagenet.val_image_name(1) == "ILSVRC2012_val_00000001.JPEG"
    assert imagenet.val_image_number("ILSVRC2012_val_00050000.JPEG") == 50000
    assert imagenet.val_image_number("n01440764_1.JPEG") is None
