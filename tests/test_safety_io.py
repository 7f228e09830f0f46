"""What the tools write, and where: atomic, never over an input, a special file or an unasked-for file.

Every output of every command goes through `prototxt.atomic` (temporary file,
then rename) and `senet_repro.cli._common.guard_outputs` (checked before any
work). These tests attack both with the cases a user meets: output = input (by
name, symlink and hard link), FIFOs, sockets, directories, symlinked outputs,
a parent that is a file, existing files without --force, and SIGTERM mid-write.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from converter.onnx_export import MAX_OPSET, MIN_OPSET
from prototxt import OutputError
from prototxt.atomic import atomic_path, atomic_writer
from senet_repro.assets import CaffePair
from senet_repro.cli.convert import main as convert_main
from senet_repro.cli.validate import main as validate_main
from tests.cli_assertions import assert_one_line_error

REPO_ROOT = Path(__file__).resolve().parent.parent


def convert(*args: str | Path) -> Result:
    return CliRunner().invoke(convert_main, [str(arg) for arg in args])


@pytest.fixture
def pair(tiny_model: CaffePair, tmp_path: Path) -> CaffePair:
    """A private copy of the tiny net (net.prototxt, net.caffemodel) in tmp_path."""
    prototxt, caffemodel = tmp_path / "net.prototxt", tmp_path / "net.caffemodel"
    shutil.copy(tiny_model.prototxt, prototxt)
    shutil.copy(tiny_model.caffemodel, caffemodel)
    return CaffePair(prototxt, caffemodel)


def hidden_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ----------------------------------------------------------------------------- the atomic writer


def test_special_files_are_refused_not_replaced(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    folder = tmp_path / "folder"
    folder.mkdir()
    sock_path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(sock_path))
        for target, kind in ((fifo, "a FIFO"), (folder, "a directory"), (sock_path, "a socket")):
            with pytest.raises(OutputError, match=kind), atomic_writer(target) as handle:
                handle.write(b"never")
        assert stat.S_ISSOCK(sock_path.stat().st_mode)
    assert stat.S_ISFIFO(fifo.stat().st_mode) and folder.is_dir()
    assert hidden_files(tmp_path) == []


def test_a_symlinked_output_writes_its_target_and_stays_a_link(tmp_path: Path) -> None:
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    real = real_dir / "model.prototxt"
    real.write_text("old")
    link = tmp_path / "link.prototxt"
    link.symlink_to(real)
    with atomic_writer(link) as handle:
        handle.write(b"new")
    assert link.is_symlink() and real.read_text() == "new"
    assert hidden_files(tmp_path) == [] and hidden_files(real_dir) == []
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "to-fifo").symlink_to(fifo)
    with pytest.raises(OutputError, match="symlink to .* a FIFO"), atomic_path(tmp_path / "to-fifo"):
        pass


def test_a_replaced_file_keeps_its_mode_a_new_one_follows_the_umask(tmp_path: Path) -> None:
    existing = tmp_path / "existing"
    existing.write_text("old")
    existing.chmod(0o640)
    with atomic_writer(existing) as handle:
        handle.write(b"new")
    assert stat.S_IMODE(existing.stat().st_mode) == 0o640 and existing.read_text() == "new"
    mask = os.umask(0o027)
    try:
        with atomic_writer(tmp_path / "fresh") as handle:
            handle.write(b"x")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "fresh").stat().st_mode) == 0o640


def test_a_parent_that_is_a_file_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("keep")
    for target in (tmp_path / "file" / "out.prototxt", tmp_path / "file" / "deeper" / "out.prototxt"):
        with pytest.raises(OutputError, match="is a file, not a folder"), atomic_writer(target):
            pass
    assert (tmp_path / "file").read_text() == "keep"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_write_leaves_no_temporary_file(tmp_path: Path, sig: signal.Signals) -> None:
    """Killed while writing (SIGTERM from a scheduler, Ctrl-C): the old file stays, no hidden rest."""
    target = tmp_path / "weights.bin"
    target.write_bytes(b"previous")
    script = textwrap.dedent(
        f"""
        import sys, time
        from prototxt.atomic import atomic_writer
        with atomic_writer({str(target)!r}) as handle:
            handle.write(b"x" * 1_000_000)
            print("writing", flush=True)
            time.sleep(60)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert process.stdout is not None and process.stdout.readline() == b"writing\n"
    assert len(hidden_files(tmp_path)) == 1  # the temporary file exists while writing
    process.send_signal(sig)
    process.wait(timeout=30)
    assert process.returncode != 0
    assert hidden_files(tmp_path) == [] and target.read_bytes() == b"previous"


# ----------------------------------------------------------------------------- outputs vs inputs


def test_output_equal_to_an_input_is_refused_even_with_force(pair: CaffePair, tmp_path: Path) -> None:
    weights = tmp_path / "w.pth"
    shutil.copy(pair.caffemodel, weights)
    before = weights.read_bytes()
    for extra in ([], ["--force"]):
        line = assert_one_line_error(
            convert("caffe2torch", "--caffemodel", weights, "-o", weights, *extra), "is also an input"
        )
        assert str(weights) in line
    hard = tmp_path / "hard.pt2"
    os.link(weights, hard)
    soft = tmp_path / "soft.pt2"
    soft.symlink_to(weights)
    for alias in (hard, soft):
        assert_one_line_error(
            convert("caffe2torch", "--caffemodel", weights, "-o", alias, "--force"), "is also an input"
        )
    assert weights.read_bytes() == before and hidden_files(tmp_path) == []


def test_portable_prototxt_onto_its_source_is_refused(pair: CaffePair) -> None:
    before = pair.prototxt.read_text()
    assert_one_line_error(
        convert("portable-prototxt", pair.prototxt, pair.prototxt, "--force"), "is also an input"
    )
    assert pair.prototxt.read_text() == before


def test_validate_report_onto_the_weights_is_refused(tmp_path: Path) -> None:
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights")
    data = tmp_path / "data"
    data.mkdir()
    result = CliRunner().invoke(
        validate_main,
        ["--model", "se_resnet50", "--weights", str(weights), "--data", str(data), "--report", str(weights)],
    )
    assert_one_line_error(result, "is also an input")
    assert weights.read_bytes() == b"weights"


def test_the_deploy_prototxt_beside_an_output_never_replaces_the_input_prototxt(pair: CaffePair) -> None:
    """`-o net.safetensors` writes net.prototxt beside it: that is the input here, so nothing is written."""
    before = pair.prototxt.read_text()
    output = pair.prototxt.with_suffix(".safetensors")
    for extra in ([], ["--force"]):
        args: list[str | Path] = [
            "--prototxt",
            pair.prototxt,
            "--caffemodel",
            pair.caffemodel,
            "-o",
            output,
            *extra,
        ]
        line = assert_one_line_error(convert("caffe2torch", *args), "is also an input")
        assert "net.prototxt" in line
    assert pair.prototxt.read_text() == before and not output.exists()


def test_torch2onnx_never_writes_over_the_prototxt_it_reads(pair: CaffePair, tmp_path: Path) -> None:
    converted = tmp_path / "out" / "net.safetensors"
    done = convert("caffe2torch", "--caffemodel", pair.caffemodel, "-o", converted)
    assert done.exit_code == 0, done.output
    beside = converted.with_suffix(".prototxt")
    before = beside.read_text()
    assert_one_line_error(convert("torch2onnx", converted, "-o", beside, "--force"), "is also an input")
    assert beside.read_text() == before


# ----------------------------------------------------------------------------- existing files need --force


def test_existing_outputs_need_force(pair: CaffePair, tmp_path: Path) -> None:
    """No command replaces an existing file unless told to; --force replaces it, keeping its mode."""
    existing = tmp_path / "existing.prototxt"
    existing.write_text("mine")
    existing.chmod(0o600)
    cases: list[list[str | Path]] = [
        ["portable-prototxt", pair.prototxt, existing],
        ["caffe2onnx", "--caffemodel", pair.caffemodel, "-o", existing],
        ["caffe2torch", "--caffemodel", pair.caffemodel, "-o", existing.with_suffix(".safetensors")],
    ]
    for args in cases:
        assert_one_line_error(convert(*args), str(existing), "exists", "--force")
    assert existing.read_text() == "mine" and not existing.with_suffix(".safetensors").exists()
    done = convert("portable-prototxt", pair.prototxt, existing, "--force")
    assert done.exit_code == 0, done.output
    assert "mine" not in existing.read_text() and stat.S_IMODE(existing.stat().st_mode) == 0o600
    report = tmp_path / "report.json"
    report.write_text("{}")
    data = tmp_path / "data"
    data.mkdir()
    result = CliRunner().invoke(
        validate_main,
        [
            "--model",
            "se_resnet50",
            "--weights",
            str(pair.caffemodel),
            "--data",
            str(data),
            "--report",
            str(report),
        ],
    )
    assert_one_line_error(result, "report.json", "exists")
    assert report.read_text() == "{}"


def test_torch2caffe_never_replaces_a_trained_caffemodel(tmp_path: Path) -> None:
    """Random weights only when asked for; an existing release file only with --force."""
    trained = tmp_path / "SE-ResNet-50.caffemodel"
    trained.write_bytes(b"trained weights")
    assert_one_line_error(
        convert("torch2caffe", "--model", "se_resnet50", "-o", tmp_path), "--random-weights"
    )
    assert_one_line_error(
        convert("torch2caffe", "--model", "se_resnet50", "--random-weights", "-o", tmp_path),
        "SE-ResNet-50",
        "exists",
    )
    assert trained.read_bytes() == b"trained weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SE-ResNet-50.caffemodel"]


@pytest.mark.parametrize("special", ["fifo", "directory", "parent-file"])
def test_special_outputs_are_one_line_errors(pair: CaffePair, tmp_path: Path, special: str) -> None:
    if special == "fifo":
        target = tmp_path / "out.prototxt"
        os.mkfifo(target)
        fragment = "a FIFO"
    elif special == "directory":
        target = tmp_path / "out.prototxt"
        target.mkdir()
        fragment = "a directory"
    else:
        (tmp_path / "afile").write_text("keep")
        target = tmp_path / "afile" / "out.prototxt"
        fragment = "is a file, not a folder"
    for extra in ([], ["--force"]):
        assert_one_line_error(convert("portable-prototxt", pair.prototxt, target, *extra), fragment)
    assert special != "fifo" or stat.S_ISFIFO(target.stat().st_mode)
    assert special != "parent-file" or (tmp_path / "afile").read_text() == "keep"


# ----------------------------------------------------------------------------- one-line errors, no allocation


@pytest.mark.parametrize(
    "change",
    [
        ("dim: 8 dim: 8", "dim: 100000 dim: 100000"),  # 120 GB of activations
        ("pad: 1 stride: 2", "pad: 1000000 stride: 2"),  # a 1e6 x 1e6 convolution output
        ("pad: 1 stride: 2", "pad: 4294967295 stride: 2"),  # too big for torch's meta kernels
    ],
    ids=["huge-input", "huge-pad", "uint32-pad"],
)
def test_nets_too_large_for_memory_are_refused_before_allocating(
    pair: CaffePair, tmp_path: Path, change: tuple[str, str]
) -> None:
    huge = tmp_path / "huge.prototxt"
    text = pair.prototxt.read_text()
    assert change[0] in text
    huge.write_text(text.replace(*change))
    for command, output in (("caffe2torch", "x.pt2"), ("caffe2onnx", "x.onnx")):
        result = convert(
            command, "--prototxt", huge, "--caffemodel", pair.caffemodel, "-o", tmp_path / output
        )
        assert_one_line_error(result, "GiB", "--max-memory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.prototxt", "net.caffemodel", "net.prototxt"]


def test_the_memory_limit_is_applied_and_adjustable(pair: CaffePair, tmp_path: Path) -> None:
    """The tiny net needs kilobytes: a limit below that refuses it, the default converts it."""
    args: list[str | Path] = [
        "--prototxt",
        pair.prototxt,
        "--caffemodel",
        pair.caffemodel,
        "-o",
        tmp_path / "x.pt2",
    ]
    assert_one_line_error(convert("caffe2torch", *args, "--max-memory", "1e-9"), "GiB")
    assert convert("caffe2torch", *args).exit_code == 0


@pytest.fixture(scope="module")
def converted(tiny_model: CaffePair, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny net converted to .safetensors (+ .prototxt beside it)."""
    path = tmp_path_factory.mktemp("converted") / "tiny.safetensors"
    done = convert("caffe2torch", "--caffemodel", tiny_model.caffemodel, "-o", path)
    assert done.exit_code == 0, done.output
    return path


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--input-shape", "-1,3,8,8"], ["--input-shape", "positive"]),
        (["--input-shape", "1,3,x,8"], ["--input-shape"]),
        (["--input-shape", "1,3,100000,100000"], ["GiB", "--max-memory"]),
        (["--input-shape", "1,5,8,8"], ["input of shape (1, 5, 8, 8) does not fit the net"]),
        (["--opset", "99"], ["--opset 99", f"supported are {MIN_OPSET}..{MAX_OPSET}"]),
        (["--opset", "5"], ["--opset 5"]),
    ],
)
def test_torch2onnx_bad_shapes_and_opsets(
    converted: Path, tmp_path: Path, args: list[str], fragments: list[str]
) -> None:
    output = tmp_path / "x.onnx"
    assert_one_line_error(convert("torch2onnx", converted, "-o", output, *args), *fragments)
    assert not output.exists() and hidden_files(tmp_path) == []


def test_the_newest_supported_opset_exports_and_runs(converted: Path, tmp_path: Path) -> None:
    """MAX_OPSET is real: onnx, torch's exporter and ONNX Runtime all take it."""
    result = convert("torch2onnx", converted, "-o", tmp_path / "x.onnx", "--opset", str(MAX_OPSET))
    assert result.exit_code == 0, result.output


def test_a_prototxt_given_as_caffemodel_is_named_as_such(pair: CaffePair, tmp_path: Path) -> None:
    commands: list[list[str | Path]] = [
        ["inspect", pair.prototxt, "--weights", pair.prototxt],
        ["caffe2torch", "--caffemodel", pair.prototxt, "-o", tmp_path / "x.pt2"],
    ]
    for command in commands:
        assert_one_line_error(convert(*command), "net.prototxt", "looks like a prototxt")


def test_fake_imagenet_never_deletes_an_existing_folder_without_force(tmp_path: Path) -> None:
    """`python -m senet_repro.validate.fake_imagenet OUT` replaces OUT/flat etc. as a whole."""
    from senet_repro.validate.fake_imagenet import main as fake_main

    keep = tmp_path / "flat" / "mine.JPEG"
    keep.parent.mkdir()
    keep.write_bytes(b"a real image")
    assert_one_line_error(CliRunner().invoke(fake_main, [str(tmp_path)]), "flat", "exists", "--force")
    assert keep.read_bytes() == b"a real image" and sorted(p.name for p in tmp_path.iterdir()) == ["flat"]


def test_a_prototxt_beside_a_safetensors_cannot_make_torch2onnx_allocate(
    converted: Path, tmp_path: Path
) -> None:
    """The prototxt's parameters are allocated before the tensors load: a crafted one is refused first."""
    copy = tmp_path / "tiny.safetensors"
    shutil.copy(converted, copy)
    text = converted.with_suffix(".prototxt").read_text()
    assert "num_output: 5" in text
    copy.with_suffix(".prototxt").write_text(text.replace("num_output: 5", "num_output: 2000000000"))
    result = convert("torch2onnx", copy, "-o", tmp_path / "x.onnx")
    assert_one_line_error(result, "parameters", "GiB", "--max-memory")
    assert not (tmp_path / "x.onnx").exists()
