"""Attacks on the output and input guarantees that the first safety tests did not try.

Found by attacking every command as a user would: a long but valid output name, a
symlink loop, two runs writing one new output, a library's multi-line error text,
integer tensors posing as weights, a net whose input has a zero dimension.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from converter.serialize import load_converted
from prototxt import InputError, NetDefinitionError, OutputError, load_net
from prototxt.atomic import atomic_paths, atomic_writer
from senet_repro.assets import CaffePair
from senet_repro.cli._common import MAX_ERROR_CHARS, user_errors
from senet_repro.cli.convert import main as convert_main
from senet_repro.models import load_weights
from tests.cli_assertions import assert_one_line_error
from tests.conftest import TINY_PROTOTXT


def hidden_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_an_output_with_the_longest_valid_name_is_written(tmp_path: Path) -> None:
    """The temporary file's name (hidden, random part, suffix) must stay within NAME_MAX too."""
    for name in ("a" * 243 + ".safetensors", "é" * 120 + ".pt2", "b" * 200 + "." + "c" * 54):
        target = tmp_path / name
        assert len(name.encode()) <= 255
        with atomic_writer(target) as handle:
            handle.write(b"x")
        assert target.read_bytes() == b"x"
    assert hidden_files(tmp_path) == []


def test_a_symlink_loop_is_one_clear_error(tmp_path: Path) -> None:
    loop = tmp_path / "loop.onnx"
    loop.symlink_to(loop.name)
    with pytest.raises(OutputError, match="loop.onnx: cannot write it"), atomic_writer(loop):
        pass
    assert loop.is_symlink() and hidden_files(tmp_path) == []


def test_a_new_output_that_appears_meanwhile_is_not_replaced(tmp_path: Path) -> None:
    """Two runs writing the same new file: the second to finish refuses instead of replacing."""
    target = tmp_path / "out.onnx"
    with pytest.raises(OutputError, match="appeared while it was being written"):
        with atomic_writer(target) as handle:
            handle.write(b"ours")
            target.write_bytes(b"the other run's")
    assert target.read_bytes() == b"the other run's" and hidden_files(tmp_path) == []


def test_files_written_together_all_stay_out_when_one_is_taken(tmp_path: Path) -> None:
    first, second = tmp_path / "net.safetensors", tmp_path / "net.prototxt"
    with pytest.raises(OutputError, match="net.prototxt: appeared"):
        with atomic_paths([first, second]) as (a, b):
            Path(a).write_bytes(b"tensors")
            Path(b).write_text("ours")
            second.write_text("theirs")
    assert not first.exists() and second.read_text() == "theirs"
    assert hidden_files(tmp_path) == []


def test_an_existing_output_is_still_replaced_in_place(tmp_path: Path) -> None:
    """Replacing a file that existed at the start (what --force allows) still works."""
    target = tmp_path / "out.onnx"
    target.write_bytes(b"old")
    with atomic_writer(target) as handle:
        handle.write(b"new")
    assert target.read_bytes() == b"new" and hidden_files(tmp_path) == []


def test_a_multi_line_error_from_a_library_is_shown_on_one_line() -> None:
    @click.command()
    @user_errors
    def command() -> None:
        raise InputError("w.pth: do not fit:\n\tMissing key(s): " + ", ".join(f'"k{i}"' for i in range(5000)))

    result = CliRunner().invoke(command, [])
    line = assert_one_line_error(result, "w.pth: do not fit: Missing key(s)", "more characters")
    assert len(line) < MAX_ERROR_CHARS + 100


def test_integer_tensors_are_not_loaded_as_weights(tmp_path: Path) -> None:
    """load_state_dict casts integers into float parameters without a word: refuse them by key."""
    state = {"conv1.weight": torch.ones(4, 3, 3, 3), "bn.num_batches_tracked": torch.tensor(0)}
    good = tmp_path / "good.safetensors"
    save_file(state, str(good))
    assert set(load_weights(good)) == set(state)
    bad = tmp_path / "bad.safetensors"
    save_file({**state, "conv1.weight": torch.ones(4, 3, 3, 3, dtype=torch.int32)}, str(bad))
    with pytest.raises(InputError, match="'conv1.weight' holds torch.int32"):
        load_weights(bad)


def test_a_generic_safetensors_with_integer_weights_is_refused(tiny_model: CaffePair, tmp_path: Path) -> None:
    converted = tmp_path / "tiny.safetensors"
    done = CliRunner().invoke(
        convert_main, ["caffe2torch", "--caffemodel", str(tiny_model.caffemodel), "-o", str(converted)]
    )
    assert done.exit_code == 0, done.output
    assert isinstance(load_converted(converted), torch.nn.Module)
    state = load_file(str(converted))
    state["conv1.weight"] = state["conv1.weight"].view(torch.int32)  # the same bytes, another dtype
    save_file(state, str(converted))
    with pytest.raises(InputError, match="'conv1.weight' holds torch.int32 values"):
        load_converted(converted)


def test_an_input_with_a_zero_dimension_is_refused_by_name(tmp_path: Path) -> None:
    prototxt = tmp_path / "zero.prototxt"
    prototxt.write_text(TINY_PROTOTXT.replace("dim: 1 dim: 3 dim: 8 dim: 8", "dim: 0 dim: 3 dim: 8 dim: 8"))
    with pytest.raises(NetDefinitionError, match="input 'data' has a dimension of 0 or below"):
        load_net(prototxt)


def test_a_failed_onnx_check_leaves_the_previous_output(tiny_model: CaffePair, tmp_path: Path) -> None:
    """caffe2onnx checks the file in ONNX Runtime before it replaces anything (here with --force)."""
    from prototxt import caffe_pb2

    proto = caffe_pb2.NetParameter()
    proto.ParseFromString(tiny_model.caffemodel.read_bytes())
    blob = next(layer for layer in proto.layer if layer.blobs).blobs[0]
    blob.data[:] = [3e38] * len(blob.data)  # finite weights whose products overflow float32
    overflow = tmp_path / "overflow.caffemodel"
    overflow.write_bytes(proto.SerializeToString())
    output = tmp_path / "x.onnx"
    output.write_bytes(b"previous")
    result = CliRunner().invoke(
        convert_main,
        ["caffe2onnx", "--prototxt", str(tiny_model.prototxt), "--caffemodel", str(overflow)]
        + ["-o", str(output), "--force"],
    )
    assert_one_line_error(result, str(output), "non-finite")
    assert output.read_bytes() == b"previous" and hidden_files(tmp_path) == []


def test_write_onnx_checks_external_data_files_before_placing_them(
    tiny_model: CaffePair, tmp_path: Path
) -> None:
    import onnxlower

    model = onnxlower.lower(load_net(tiny_model.prototxt, tiny_model.caffemodel))
    output = tmp_path / "x.onnx"
    declared = model.declared_shapes()
    checked = onnxlower.check_onnxruntime
    written = onnxlower.write_onnx(
        model, output, external_data=True, check=lambda path: checked(path, declared, label=output)
    )
    assert written == [output, onnxlower.external_data_path(output)]
    assert checked(output, declared).outputs and hidden_files(tmp_path) == []
    before = [path.read_bytes() for path in written]

    def refuse(path: str) -> None:
        checked(path, declared)  # the temporary copy loads with its temporary data
        raise InputError("refused")

    with pytest.raises(InputError, match="refused"):
        onnxlower.write_onnx(model, output, external_data=True, check=refuse)
    assert [path.read_bytes() for path in written] == before and hidden_files(tmp_path) == []


def test_the_demo_never_writes_into_a_folder_of_other_files(tmp_path: Path) -> None:
    """Its steps replace their own earlier files (--force), so --out must be the demo's own folder."""
    from senet_repro import demo

    mine = tmp_path / "models" / "net.onnx"
    mine.parent.mkdir()
    mine.write_bytes(b"my export")
    result = CliRunner().invoke(demo.main, ["--out", str(mine.parent)])
    assert_one_line_error(result, str(mine.parent), "new or empty folder")
    assert [p.name for p in mine.parent.iterdir()] == ["net.onnx"] and mine.read_bytes() == b"my export"
    with pytest.raises(OutputError, match="is not a folder"):
        demo.claim_folder(mine)
    for fresh in (tmp_path / "new" / "out", tmp_path / "empty"):
        (tmp_path / "empty").mkdir(exist_ok=True)
        demo.claim_folder(fresh)
        (fresh / "nsfw.onnx").write_bytes(b"the demo's")
        demo.claim_folder(fresh)  # a rerun: the folder is marked as the demo's


def test_an_output_in_a_read_only_folder_is_refused_before_any_work() -> None:
    """Checked with the other outputs, not found after a long conversion. Root may write
    anywhere, so as root the check runs in a child that drops to the 'nobody' user (in a
    folder outside pytest's private one, which 'nobody' could not enter; imports first)."""
    script = (
        "import os, sys\n"
        "from prototxt import OutputError\n"
        "from prototxt.atomic import check_writable\n"
        "if os.geteuid() == 0: os.setgid(65534); os.setuid(65534)\n"
        "check_writable(sys.argv[1], force=False)\n"
        "for target in sys.argv[2:]:\n"
        "    try:\n"
        "        check_writable(target, force=False)\n"
        "    except OutputError as exc:\n"
        "        print(exc)\n"
    )
    with tempfile.TemporaryDirectory() as name:
        root = Path(name)
        root.chmod(0o777)
        folder = root / "read-only"
        folder.mkdir(mode=0o555)
        folder.chmod(0o555)
        targets = [root / "writable.onnx", folder / "x.onnx", folder / "new" / "deeper" / "x.onnx"]
        done = subprocess.run(
            [sys.executable, "-c", script, *map(str, targets)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and all(f"no permission to write in {folder}" in line for line in lines), lines


def test_fake_imagenet_killed_midway_leaves_the_previous_set_and_no_rest(tmp_path: Path) -> None:
    """The layouts are built in a hidden folder and replace the old ones only once complete."""
    previous = tmp_path / "flat" / "ILSVRC2012_val_00000001.JPEG"
    previous.parent.mkdir()
    previous.write_bytes(b"previous set")
    script = (
        "import sys, time\n"
        "from senet_repro.validate import fake_imagenet\n"
        "jpeg = fake_imagenet._jpeg\n"
        "calls = []\n"
        "def slow(*args, **kwargs):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 3:\n"
        "        print('writing', flush=True)\n"
        "        time.sleep(60)\n"
        "    return jpeg(*args, **kwargs)\n"
        "fake_imagenet._jpeg = slow\n"
        "fake_imagenet.make_fake_imagenet(sys.argv[1])\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    assert process.stdout is not None and process.stdout.readline() == b"writing\n"
    assert len(hidden_files(tmp_path)) == 1  # the staging folder, with two images in it
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    assert process.returncode != 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flat"]
    assert [p.read_bytes() for p in previous.parent.iterdir()] == [b"previous set"]
