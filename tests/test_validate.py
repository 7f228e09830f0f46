"""senet-validate on a miniature ImageNet made here, with a network whose answers are known."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from converter.onnx_export import export_onnx
from senet_repro import imagenet
from senet_repro.cli.validate import main as validate_cli
from senet_repro.transforms import CaffePreprocess
from senet_repro.validate import (
    EvalOptions,
    EvalResult,
    TorchBackend,
    ValidateError,
    correct_at_k,
    evaluate,
    load_backend,
    open_valset,
)
from senet_repro.validate.fake_imagenet import (
    FakeImageNet,
    expected_errors,
    known_answer_net,
    make_fake_imagenet,
)
from tests.conftest import unavailable

REPO_ROOT = Path(__file__).resolve().parent.parent
SENET_CAFFE_DIR = REPO_ROOT.parent / "shared" / "senet-caffe"
CPU = torch.device("cpu")
# Rank of the true class among the scores, per image: 5 images wrong at top-1, 1 at top-5
# (20 % / 4 %, next to SE-ResNeXt-50's published 20.97 % / 5.54 %).
RANKS = [0, 0, 1, 0, 0, 2, 0, 0, 0, 4, 0, 0, 0, 0, 7, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0]
TOP1_WRONG, TOP5_WRONG = expected_errors(RANKS)


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> FakeImageNet:
    """25 images (not divisible by 2) of 5 classes, in the three layouts."""
    return make_fake_imagenet(tmp_path_factory.mktemp("imagenet"), num_classes=5, images_per_class=5)


@pytest.fixture(scope="module")
def known_onnx(fake: FakeImageNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The known-answer network exported to ONNX (input 'data', dynamic batch)."""
    return export_onnx(
        known_answer_net(fake, RANKS),
        tmp_path_factory.mktemp("onnx") / "known.onnx",
        torch.zeros(2, 3, 224, 224),
        output_names=["classifier"],
    )


def run(
    net: torch.nn.Module,
    data: Path,
    *,
    workers: int = 0,
    strict: bool = False,
    label_map: list[int] | None = None,
) -> EvalResult:
    options = EvalOptions(batch_size=4, workers=workers, progress=False, keep_predictions=True, strict=strict)
    return evaluate(
        TorchBackend(net, CPU), open_valset(data), CaffePreprocess(), options=options, label_map=label_map
    )


def counts(result: EvalResult) -> tuple[int, int, int]:
    return result.images, result.images - result.top1_correct, result.images - result.top5_correct


def test_each_layout_is_recognised_with_the_same_images_and_labels(fake: FakeImageNet) -> None:
    valsets = {name: open_valset(folder) for name, folder in fake.layouts.items()}
    assert {name: valset.layout for name, valset in valsets.items()} == {name: name for name in valsets}
    expected_names = [image.name for image in fake.images]
    expected_labels = tuple(image.devkit_index for image in fake.images)
    for valset in valsets.values():
        assert valset.names == expected_names
        assert valset.labels == expected_labels


def test_three_layouts_give_identical_and_exactly_expected_results(fake: FakeImageNet) -> None:
    net = known_answer_net(fake, RANKS)
    results = {
        name: run(net, folder, workers=2 if name == "torchvision" else 0)
        for name, folder in fake.layouts.items()
    }
    for name, result in results.items():
        assert counts(result) == (25, TOP1_WRONG, TOP5_WRONG), name
        assert result.top1_error == pytest.approx(20.0) and result.top5_error == pytest.approx(4.0)
        assert result.predictions == results["flat"].predictions, name
        assert result.unreadable == []


def test_a_wrong_label_order_is_caught(fake: FakeImageNet) -> None:
    """A network in the torchvision order scores right only once labels are mapped to that order."""
    net = known_answer_net(fake, RANKS, order=imagenet.ClassOrder.TORCHVISION)
    unmapped = run(net, fake.layouts["flat"])
    assert counts(unmapped) != (25, TOP1_WRONG, TOP5_WRONG)
    permutation = imagenet.imagenet_classes(imagenet.ClassOrder.DEVKIT).permutation_to(
        imagenet.imagenet_classes(imagenet.ClassOrder.TORCHVISION)
    )
    mapped = run(net, fake.layouts["flat"], label_map=permutation)
    assert counts(mapped) == (25, TOP1_WRONG, TOP5_WRONG)


def test_flat_folder_with_the_devkit_ground_truth_or_the_devkit(fake: FakeImageNet, tmp_path: Path) -> None:
    flat = fake.layouts["flat"]
    by_senet_file = open_valset(flat)
    by_ground_truth = open_valset(flat, labels_file=flat / Path(imagenet.GROUND_TRUTH).name)
    assert by_ground_truth.labels == by_senet_file.labels
    assert "ILSVRC2017_val.txt" in by_senet_file.label_source
    only_devkit = tmp_path / "flat"
    only_devkit.mkdir()
    for image in fake.images:
        shutil.copy(flat / image.name, only_devkit)
    shutil.copy(fake.layouts["torchvision"] / imagenet.DEVKIT_ARCHIVE, only_devkit)
    by_devkit = open_valset(only_devkit)
    assert by_devkit.layout == "flat" and by_devkit.labels == by_senet_file.labels
    assert imagenet.DEVKIT_ARCHIVE in by_devkit.label_source


def test_torchvision_root_with_meta_bin_is_the_one_torchvision_reads(
    fake: FakeImageNet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchvision parses the fake devkit into meta.bin; we read that root, and so does torchvision."""
    import torchvision.datasets.imagenet as tv_imagenet

    monkeypatch.setattr(tv_imagenet, "_verify_archive", lambda *args: None)  # the md5 is the real archive's
    root = tmp_path / "tv"
    shutil.copytree(fake.layouts["torchvision"], root)
    tv_imagenet.parse_devkit_archive(str(root))
    (root / imagenet.DEVKIT_ARCHIVE).unlink()
    valset = open_valset(root)
    assert valset.layout == "torchvision" and "meta.bin" in valset.label_source
    assert valset.labels == open_valset(fake.layouts["flat"]).labels
    theirs = tv_imagenet.ImageNet(str(root), split="val")
    devkit = imagenet.imagenet_classes(imagenet.ClassOrder.DEVKIT)
    ours = {path.name: devkit.wnid(label) for path, label in zip(valset.paths, valset.labels)}
    assert {Path(path).name: theirs.wnids[target] for path, target in theirs.samples} == ours


def test_limit_and_class_subset(fake: FakeImageNet) -> None:
    net = known_answer_net(fake, RANKS)
    valset = open_valset(fake.layouts["imagefolder"])
    two_classes = sorted({image.devkit_index for image in fake.images})[:2]
    subset = valset.subset(two_classes, limit=7)
    chosen = [k for k, image in enumerate(fake.images) if image.devkit_index in two_classes][:7]
    assert subset.names == [fake.images[k].name for k in chosen]
    options = EvalOptions(batch_size=3, workers=0, progress=False)
    result = evaluate(TorchBackend(net, CPU), subset, CaffePreprocess(), options=options)
    assert counts(result) == (7, *expected_errors([RANKS[k] for k in chosen]))


def test_clear_errors_when_no_layout_fits(fake: FakeImageNet, tmp_path: Path) -> None:
    with pytest.raises(ValidateError, match=r"no ImageNet validation set found in .*torchvision.*flat"):
        open_valset(tmp_path)
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    shutil.copy(fake.layouts["flat"] / fake.images[0].name, unlabelled)
    with pytest.raises(ValidateError, match="no labels"):
        open_valset(unlabelled)
    foreign = tmp_path / "foreign" / "val" / "n99999999"
    foreign.mkdir(parents=True)
    shutil.copy(fake.layouts["flat"] / fake.images[0].name, foreign)
    with pytest.raises(imagenet.LabelError, match="n99999999 is not one of the 1000 classes"):
        open_valset(tmp_path / "foreign")
    with pytest.raises(ValidateError, match="in the torchvision layout"):
        open_valset(fake.layouts["flat"], layout="torchvision")


def test_a_wrongly_sorted_torchvision_val_folder_is_refused(fake: FakeImageNet, tmp_path: Path) -> None:
    root = tmp_path / "tv"
    shutil.copytree(fake.layouts["torchvision"], root)
    first, other = fake.images[0], next(i for i in fake.images if i.wnid != fake.images[0].wnid)
    shutil.move(root / "val" / first.wnid / first.name, root / "val" / other.wnid / first.name)
    with pytest.raises(ValidateError, match="contradicts the devkit ground truth"):
        open_valset(root)


def test_a_truncated_jpeg_is_reported_counted_and_fails_strict(fake: FakeImageNet, tmp_path: Path) -> None:
    data = tmp_path / "flat"
    shutil.copytree(fake.layouts["flat"], data)
    victim = fake.images[0]  # top-1 correct by construction
    assert RANKS[0] == 0
    jpeg = (data / victim.name).read_bytes()
    (data / victim.name).write_bytes(jpeg[: len(jpeg) // 2])
    result = run(known_answer_net(fake, RANKS), data, workers=2)
    assert [name for name, _ in result.unreadable] == [victim.name]
    assert "truncated" in result.unreadable[0][1]
    assert counts(result) == (25, TOP1_WRONG + 1, TOP5_WRONG + 1)
    with pytest.raises(ValidateError, match=f"unreadable image {victim.name}"):
        run(known_answer_net(fake, RANKS), data, strict=True)


def test_caffe_accuracy_rule_for_ties_and_non_finite_scores() -> None:
    logits = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0], [float("nan"), 5.0, 0.0]])
    labels = torch.tensor([1, 2, 1])
    correct = correct_at_k(logits, labels, ks=(1, 2))
    assert correct.tolist() == [[True, True], [False, True], [False, False]]


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(validate_cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_cli_table_report_and_check(fake: FakeImageNet, known_onnx: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    common = [
        "--model",
        "se_resnext50",
        "--backend",
        "onnxruntime",
        "--weights",
        str(known_onnx),
        "--data",
        str(fake.layouts["torchvision"]),
        "--device",
        "cpu",
        "--workers",
        "0",
        "--batch-size",
        "8",
    ]
    code, out, err = invoke(*common, "--report", str(report), "--check", "--tolerance", "2", "--tf32")
    assert code == 0, err
    assert "20.00 %     20.97 %     -0.97 pp" in out and "4.00 %      5.54 %     -1.54 pp" in out
    assert "PASS" in out and "partial run: 25 of 50000" in out
    data = json.loads(report.read_text())
    assert data["results"]["images"] == 25 and data["results"]["top1_correct"] == 25 - TOP1_WRONG
    published = {key: data["published"][key] for key in ("top1_error", "top5_error", "protocol")}
    assert published == {"top1_error": 20.97, "top5_error": 5.54, "protocol": "center-crop"}
    assert data["weights"]["sha256"] == hashlib.sha256(known_onnx.read_bytes()).hexdigest()
    assert data["data"]["layout"] == "torchvision" and data["class_order"] == "devkit"
    # What ran, not what was asked: TF32 exists only on CUDA, and the CPU decoder read every image.
    assert data["precision"]["tf32"] is False
    assert data["preprocessing"]["decoder"] == {"name": "libjpeg-turbo (torchvision.io, CPU)", "images": 25}
    assert {"torch", "torchvision", "onnxruntime", "device", "python"} <= set(data["environment"])
    code, out, _ = invoke(*common, "--check")
    assert code == 1 and "FAIL" in out


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "no ImageNet validation set found"),
        (["--check"], "--check needs a published figure"),
        (["--model", "resnet9000"], "unknown model"),
        (["--classes", "unicorn"], "class name 'unicorn' is unknown"),
        (["--resize", "200"], "at most resize"),
        (["--gpu-decode"], "--gpu-decode needs --device cuda"),
    ],
)
def test_cli_bad_input_is_one_line_with_exit_code_2(
    known_onnx: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    code, _, err = invoke(
        "--backend",
        "onnxruntime",
        "--weights",
        str(known_onnx),
        "--data",
        str(tmp_path),
        "--device",
        "cpu",
        *args,
    )
    assert code == 2, err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_unloadable_weights(fake: FakeImageNet, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx file")
    code, _, err = invoke(
        "--backend",
        "onnxruntime",
        "--weights",
        str(garbage),
        "--data",
        str(fake.layouts["flat"]),
        "--device",
        "cpu",
    )
    assert code == 2 and "onnxruntime cannot load it" in err and "Traceback" not in err


def test_cli_reports_unreadable_images_and_strict_fails(
    fake: FakeImageNet, known_onnx: Path, tmp_path: Path
) -> None:
    data = tmp_path / "flat"
    shutil.copytree(fake.layouts["flat"], data)
    victim = fake.images[3].name
    (data / victim).write_bytes((data / victim).read_bytes()[:200])
    common = [
        "--backend",
        "onnxruntime",
        "--weights",
        str(known_onnx),
        "--data",
        str(data),
        "--device",
        "cpu",
        "--workers",
        "0",
    ]
    code, out, err = invoke(*common)
    assert code == 0 and f"unreadable: {victim}" in err
    assert [line.split()[-1] for line in out.splitlines() if line.startswith("unreadable")] == ["1"]
    code, _, err = invoke(*common, "--strict")
    assert code == 2 and victim in err and "Traceback" not in err


@pytest.mark.slow
def test_torchrun_two_processes_count_exactly_like_one(
    fake: FakeImageNet, known_onnx: Path, tmp_path: Path
) -> None:
    """25 images on 2 gloo ranks: disjoint shards of 13 and 12, all-reduced, same counts as 1 process."""
    args = [
        "--backend",
        "onnxruntime",
        "--weights",
        str(known_onnx),
        "--data",
        str(fake.layouts["flat"]),
        "--device",
        "cpu",
        "--workers",
        "0",
        "--batch-size",
        "4",
        "--report",
    ]
    code, _, err = invoke(*args, str(tmp_path / "one.json"))
    assert code == 0, err
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "senet_repro.cli.validate",
        *args,
        str(tmp_path / "two.json"),
    ]
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("top-1 error") == 1  # only rank 0 reports
    single, double = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    assert double["environment"]["world_size"] == 2 and single["environment"]["world_size"] == 1
    assert double["results"]["images"] == single["results"]["images"] == 25
    for key in ("top1_correct", "top5_correct"):
        assert double["results"][key] == single["results"][key]
    assert single["results"]["top1_correct"] == 25 - TOP1_WRONG


@pytest.mark.slow
def test_torch_graph_and_onnxruntime_backends_agree(fake: FakeImageNet, tmp_path: Path) -> None:
    """One random-weight SE-ResNet-50 caffemodel, run as clean model, converted graph and ONNX."""
    try:
        import prototxt
        from prototxt.random_weights import random_blobs
        from senet_repro.models import caffe_to_state_dict
    except ImportError as exc:
        pytest.skip(f"needs converter (ONNX export), prototxt.random_weights and senet_repro.models: {exc}")
    deploy = SENET_CAFFE_DIR / "SE-ResNet-50.prototxt"
    if not deploy.is_file():
        unavailable(f"SE-ResNet-50.prototxt is not in {SENET_CAFFE_DIR}")
    blobs = random_blobs(prototxt.load_net(deploy), seed=0)
    caffemodel = tmp_path / "se_resnet50.caffemodel"
    prototxt.write_caffemodel(caffemodel, prototxt.parse_prototxt(deploy), blobs)
    state_dict = tmp_path / "se_resnet50.pth"
    torch.save(caffe_to_state_dict("se_resnet50", blobs), state_dict)
    graph = load_backend("graph", weights=caffemodel, prototxt=deploy, device=CPU)
    assert isinstance(graph, TorchBackend)
    onnx_path = export_onnx(graph.module, tmp_path / "se_resnet50.onnx", torch.zeros(1, 3, 224, 224))
    backends = {
        "torch": load_backend("torch", model="se_resnet50", weights=state_dict, device=CPU),
        "graph": graph,
        "onnxruntime": load_backend("onnxruntime", weights=onnx_path, device=CPU),
    }

    batch = CaffePreprocess().normalise(torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8))
    logits = {name: backend(batch) for name, backend in backends.items()}
    scale = logits["graph"].abs().max()
    for name, value in logits.items():
        assert (value - logits["graph"]).abs().max() <= 1e-4 * scale, name
    assert (logits["graph"][0] - logits["graph"][1]).abs().max() > 0.01 * scale  # input-sensitive

    valset = open_valset(fake.layouts["flat"]).subset(limit=2)
    options = EvalOptions(batch_size=2, workers=0, progress=False, keep_predictions=True)
    results = {
        name: evaluate(backend, valset, CaffePreprocess(), options=options)
        for name, backend in backends.items()
    }
    expected = results["graph"].predictions
    assert expected is not None
    for name, result in results.items():
        assert counts(result) == counts(results["graph"]) and result.predictions is not None, name
        top1 = {image: top[0] for image, top in result.predictions.items()}
        assert top1 == {image: top[0] for image, top in expected.items()}, name


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_decode_and_cuda_give_the_cpu_counts(fake: FakeImageNet) -> None:
    net = known_answer_net(fake, RANKS)
    valset = open_valset(fake.layouts["flat"])
    for gpu_decode in (False, True):
        options = EvalOptions(batch_size=8, workers=2, progress=False, gpu_decode=gpu_decode)
        result = evaluate(TorchBackend(net, torch.device("cuda")), valset, CaffePreprocess(), options=options)
        assert counts(result) == (25, TOP1_WRONG, TOP5_WRONG), gpu_decode
