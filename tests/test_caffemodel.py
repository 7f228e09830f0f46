"""Binary .caffemodel reading and writing: exact, zero-copy, atomic, clear errors."""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

import numpy as np
import pytest

import prototxt.atomic
from prototxt import (
    CaffemodelFormatError,
    PrototxtSyntaxError,
    caffe_pb2,
    load_net,
    parse_caffemodel_buffer,
    parse_prototxt,
    read_caffemodel,
    write_caffemodel,
)
from senet_repro.assets import CaffePair

# Values whose bits a lossy path would change: signed zero, infinities, a NaN
# with a payload, denormals, extremes.
SPECIAL_F32 = np.array(
    [0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45, 3.4028235e38, 1.1754944e-38], dtype=np.float32
)
NAN_PAYLOAD_F32 = np.array([0x7FC12345, 0xFFA00001], dtype=np.uint32).view(np.float32)


def _bits(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array).tobytes()


def _files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def _small_net() -> caffe_pb2.NetParameter:
    return caffe_pb2.NetParameter(
        name="blobs",
        layer=[
            caffe_pb2.LayerParameter(name="a", type="Convolution"),
            caffe_pb2.LayerParameter(name="b", type="InnerProduct"),
            caffe_pb2.LayerParameter(name="c", type="ReLU"),
        ],
    )


def test_round_trip_float32_bit_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    weight.ravel()[: SPECIAL_F32.size] = SPECIAL_F32
    weight.ravel()[-2:] = NAN_PAYLOAD_F32
    blobs = {
        "a": [weight, rng.standard_normal(8).astype(np.float32)],
        "b": [
            rng.standard_normal((10, 72)).astype(np.float32)[:, ::2],  # not contiguous
            np.zeros((0,), np.float32),
        ],
    }
    path = tmp_path / "m.caffemodel"
    write_caffemodel(path, _small_net(), blobs)
    model = read_caffemodel(path)
    assert list(model.blobs) == ["a", "b"]
    for name, arrays in blobs.items():
        for written, read in zip(arrays, model.blobs[name], strict=True):
            assert read.dtype == np.float32 and read.shape == written.shape
            assert _bits(read) == _bits(written)
    assert [layer.name for layer in model.net.layer] == ["a", "b", "c"]
    assert not any(layer.blobs for layer in model.net.layer)


def test_round_trip_float64_is_double_data(tmp_path: Path) -> None:
    values = np.random.default_rng(1).standard_normal((4, 5))
    values.ravel()[:3] = [-0.0, np.inf, 5e-324]
    path = tmp_path / "d.caffemodel"
    write_caffemodel(path, _small_net(), {"b": [values]})
    stored = caffe_pb2.NetParameter.FromString(path.read_bytes()).layer[1].blobs[0]
    assert len(stored.double_data) == 20 and not stored.data
    read = read_caffemodel(path).blobs["b"][0]
    assert read.dtype == np.float64 and _bits(read) == _bits(values)


def test_protobuf_reads_what_we_write(tmp_path: Path) -> None:
    """Our streaming writer produces what protobuf itself considers the same message."""
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    path = tmp_path / "p.caffemodel"
    write_caffemodel(path, _small_net(), {"a": [array]})
    parsed = caffe_pb2.NetParameter.FromString(path.read_bytes())
    assert list(parsed.layer[0].blobs[0].shape.dim) == [2, 3, 4]
    assert np.array_equal(np.array(parsed.layer[0].blobs[0].data, np.float32), array.ravel())
    assert parsed.layer[2] == _small_net().layer[2]


def test_legacy_shapes_written_with_protobuf() -> None:
    net = _small_net()
    values = np.random.default_rng(2).standard_normal(2 * 3 * 4 * 5)
    net.layer[0].blobs.add(num=2, channels=3, height=4, width=5, data=values.astype(np.float32).tolist())
    net.layer[0].blobs.add(num=1, channels=1, height=1, width=2, double_data=values[:2].tolist())
    net.layer[1].blobs.add(width=3, num=1, channels=1, height=1, data=[1.0, 2.0, 3.0])
    model = parse_caffemodel_buffer(net.SerializeToString())
    weight, bias = model.blobs["a"]
    assert weight.shape == (2, 3, 4, 5) and weight.dtype == np.float32
    assert _bits(weight) == _bits(values.astype(np.float32).reshape(2, 3, 4, 5))
    assert bias.shape == (1, 1, 1, 2) and bias.dtype == np.float64
    assert _bits(bias) == _bits(values[:2].reshape(1, 1, 1, 2))
    assert model.blobs["b"][0].tolist() == [[[[1.0, 2.0, 3.0]]]]


def test_legacy_shape_wins_over_shape_like_caffe() -> None:
    net = _small_net()
    net.layer[0].blobs.add(
        shape=caffe_pb2.BlobShape(dim=[6]), num=1, channels=1, height=2, width=3, data=[1, 2, 3, 4, 5, 6]
    )
    assert parse_caffemodel_buffer(net.SerializeToString()).blobs["a"][0].shape == (1, 1, 2, 3)


def test_unpacked_values_keep_their_order() -> None:
    """Old writers may store repeated floats unpacked; values interleave in file order."""

    def field(number: int, wire: int) -> bytes:
        return bytes([number << 3 | wire])

    def packed(*values: float) -> bytes:
        payload = struct.pack(f"<{len(values)}f", *values)
        return field(5, 2) + bytes([len(payload)]) + payload

    def unpacked(value: float) -> bytes:
        return field(5, 5) + struct.pack("<f", value)

    blob = packed(1.0, 2.0) + unpacked(3.0) + unpacked(4.0) + packed(5.0) + unpacked(6.0)
    layer = b"\x0a\x01a" + field(7, 2) + bytes([len(blob)]) + blob
    data = b"\xa2\x06" + bytes([len(layer)]) + layer
    assert parse_caffemodel_buffer(data).blobs["a"][0].tolist() == [1, 2, 3, 4, 5, 6]


def test_v1_file_reads_the_same_as_current_format(
    v1_model: tuple[Path, dict], tiny_model: CaffePair, tmp_path: Path
) -> None:
    path, expected = v1_model
    model = read_caffemodel(path)
    assert model.net.layers and not model.net.layer
    net = load_net(caffemodel=model)
    assert [layer.type for layer in net.layers] == [
        "Convolution",
        "ReLU",
        "Pooling",
        "InnerProduct",
        "Softmax",
    ]
    assert net.inputs == {"data": (1, 3, 8, 8)}
    for name, arrays in expected.items():
        got = net.layer(name).blobs
        assert [a.shape for a in got] == [a.shape for a in arrays]
        assert all(_bits(g) == _bits(a) for g, a in zip(got, arrays, strict=True))
    # The same weights in a current-format file give the same net and blobs.
    current = tmp_path / "current.caffemodel"
    write_caffemodel(current, net.to_proto(), net.weights())
    again = load_net(caffemodel=current, input_shape=net.inputs)
    assert again.blob_shapes == net.blob_shapes
    for name, arrays in net.weights().items():
        assert all(_bits(g) == _bits(a) for g, a in zip(again.layer(name).blobs, arrays, strict=True))


def test_arrays_are_read_only_zero_copy_views_of_the_file(tiny_model: CaffePair) -> None:
    model = read_caffemodel(tiny_model.caffemodel)
    for arrays in model.blobs.values():
        for array in arrays:
            assert not array.flags.owndata and not array.flags.writeable
            root: object = array
            while isinstance(root, np.ndarray):
                root = root.base
            assert isinstance(root, memoryview) and isinstance(root.obj, mmap.mmap)
            with pytest.raises(ValueError, match="read-only"):
                array[...] = 0


def test_real_model_blobs_equal_protobuf_parse(nsfw_model: CaffePair) -> None:
    """Our wire-format walk agrees with protobuf's own parser on the real 23 MB file."""
    ours = read_caffemodel(nsfw_model.caffemodel)
    reference = caffe_pb2.NetParameter.FromString(nsfw_model.caffemodel.read_bytes())
    with_blobs = [layer for layer in reference.layer if layer.blobs]
    assert [layer.name for layer in with_blobs] == list(ours.blobs)
    for layer in with_blobs:
        for blob, array in zip(layer.blobs, ours.blobs[layer.name], strict=True):
            assert array.shape == tuple(blob.shape.dim)
            assert _bits(array) == _bits(np.array(blob.data, dtype=np.float32))
    stripped = caffe_pb2.NetParameter()
    stripped.CopyFrom(reference)
    for layer in stripped.layer:
        del layer.blobs[:]
    assert ours.net == stripped


def test_real_model_write_read_round_trip(nsfw_model: CaffePair, tmp_path: Path) -> None:
    model = read_caffemodel(nsfw_model.caffemodel)
    copy = tmp_path / "copy.caffemodel"
    write_caffemodel(copy, model.net, model.blobs)
    again = read_caffemodel(copy)
    assert again.net == model.net
    for name, arrays in model.blobs.items():
        assert all(_bits(a) == _bits(b) for a, b in zip(arrays, again.blobs[name], strict=True))


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.001, 0.3, 0.9999])
def test_truncated_file(tiny_model: CaffePair, tmp_path: Path, fraction: float) -> None:
    data = tiny_model.caffemodel.read_bytes()
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(data[: max(1, int(len(data) * fraction))])
    with pytest.raises(CaffemodelFormatError, match="truncated") as caught:
        read_caffemodel(cut)
    assert str(caught.value).startswith(str(cut))


def test_truncated_real_model(nsfw_model: CaffePair, tmp_path: Path) -> None:
    data = nsfw_model.caffemodel.read_bytes()
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CaffemodelFormatError, match=r"byte \d+.*truncated"):
        load_net(nsfw_model.prototxt, cut)


@pytest.mark.parametrize(
    "content",
    [
        b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + bytes(range(256)),
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        b'name: "SE-ResNet-50"\nlayer {\n  name: "data"\n  type: "Input"\n}\n',
        b"PK\x03\x04\x14\x00\x00\x00\x08\x00",
        bytes(64),
    ],
    ids=["jpeg", "png", "prototxt", "zip", "zeros"],
)
def test_wrong_file_type(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "wrong.caffemodel"
    path.write_bytes(content)
    with pytest.raises(CaffemodelFormatError) as caught:
        read_caffemodel(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and "\n" not in message


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.caffemodel"
    empty.touch()
    with pytest.raises(CaffemodelFormatError, match="empty"):
        read_caffemodel(empty)
    with pytest.raises(CaffemodelFormatError, match="cannot read file"):
        read_caffemodel(tmp_path / "absent.caffemodel")
    with pytest.raises(CaffemodelFormatError, match="cannot read file"):
        read_caffemodel(tmp_path)


def test_corrupt_blobs_name_their_layer() -> None:
    net = _small_net()
    net.layer[1].blobs.add(shape=caffe_pb2.BlobShape(dim=[2, 3]), data=[1.0] * 5)
    with pytest.raises(CaffemodelFormatError, match=r"\(2, 3\) does not match its 5 .*layer 'b'"):
        parse_caffemodel_buffer(net.SerializeToString())
    net = _small_net()
    net.layer[0].blobs.add(data=[1.0], double_data=[2.0])
    with pytest.raises(CaffemodelFormatError, match="both float and double"):
        parse_caffemodel_buffer(net.SerializeToString())
    net = _small_net()
    net.layer[0].blobs.add(shape=caffe_pb2.BlobShape(dim=[1] * 33), data=[1.0])
    with pytest.raises(CaffemodelFormatError, match="33 axes"):
        parse_caffemodel_buffer(net.SerializeToString())
    net = _small_net()
    net.layer[0].blobs.add(num=-1, channels=1, height=1, width=1, data=[1.0])
    with pytest.raises(CaffemodelFormatError, match=r"\(-1, 1, 1, 1\)"):
        parse_caffemodel_buffer(net.SerializeToString())


def test_duplicate_layer_names_with_blobs() -> None:
    net = _small_net()
    net.layer[0].blobs.add(data=[1.0])
    net.layer[1].name = "a"
    net.layer[1].blobs.add(data=[2.0])
    with pytest.raises(CaffemodelFormatError, match="two layers named 'a'"):
        parse_caffemodel_buffer(net.SerializeToString())


def test_non_utf8_layer_name() -> None:
    data = _small_net().SerializeToString().replace(b"\x0a\x01a", b"\x0a\x01\xff")
    with pytest.raises(CaffemodelFormatError, match="not UTF-8"):
        parse_caffemodel_buffer(data)


# --- the writer ------------------------------------------------------------------------------


class _Unconvertible:
    """An array-like whose conversion fails, as a bad tensor would half-way through a net."""

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        raise RuntimeError("conversion failed")


def test_writer_failure_leaves_existing_file_untouched(tmp_path: Path) -> None:
    path = tmp_path / "model.caffemodel"
    path.write_bytes(b"previous contents")
    blobs = {"a": [np.ones(3, np.float32)], "b": [_Unconvertible()]}
    with pytest.raises(RuntimeError, match="conversion failed"):
        write_caffemodel(path, _small_net(), blobs)  # type: ignore[arg-type]
    assert path.read_bytes() == b"previous contents"
    assert _files(tmp_path) == ["model.caffemodel"]


def test_writer_failure_during_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure after bytes went to disk (here: fsync) removes the partial file."""

    def failing_fsync(fd: int) -> None:
        assert os.fstat(fd).st_size > 1000  # the payload was really being written
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(prototxt.atomic.os, "fsync", failing_fsync)
    path = tmp_path / "model.caffemodel"
    blobs = {"a": [np.ones((16, 16), np.float32)]}
    with pytest.raises(OSError, match="No space left"):
        write_caffemodel(path, _small_net(), blobs)
    assert _files(tmp_path) == []
    path.write_bytes(b"previous contents")
    with pytest.raises(OSError):
        write_caffemodel(path, _small_net(), blobs)
    assert path.read_bytes() == b"previous contents"
    assert _files(tmp_path) == ["model.caffemodel"]


def test_writer_replaces_on_success(tmp_path: Path) -> None:
    path = tmp_path / "model.caffemodel"
    path.write_bytes(b"previous contents")
    write_caffemodel(path, _small_net(), {"c": [np.ones(2, np.float32)]})
    assert read_caffemodel(path).blobs["c"][0].tolist() == [1.0, 1.0]
    assert _files(tmp_path) == ["model.caffemodel"]


def test_writer_rejects_blobs_of_unknown_layers(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not in the net"):
        write_caffemodel(tmp_path / "x.caffemodel", _small_net(), {"zz": [np.ones(1)]})
    assert _files(tmp_path) == []


def test_prototxt_given_as_caffemodel_and_back(tiny_model: CaffePair) -> None:
    with pytest.raises(CaffemodelFormatError):
        read_caffemodel(tiny_model.prototxt)
    with pytest.raises(PrototxtSyntaxError):
        parse_prototxt(tiny_model.caffemodel)


def test_the_test_model_cache_drops_older_generators_files(tmp_path: Path) -> None:
    """A regenerated model replaces the same net, seed and size made by older code, and only that:
    CI's disk would otherwise fill with one copy of every net per code change."""
    from tests.caffe_factory import _remove_stale

    names = [
        "SE-ResNet-50-seed0-native-aaaaaaaaaaaa.caffemodel",  # older generator: removed
        "SE-ResNet-50-seed0-native-aaaaaaaaaaaa.prototxt",  # older generator: removed
        "SE-ResNet-50-seed0-native-bbbbbbbbbbbb.caffemodel",  # the current key: kept
        "SE-ResNet-50-seed0-225x225-aaaaaaaaaaaa.caffemodel",  # another size: kept
        "SE-ResNet-50-seed1-native-aaaaaaaaaaaa.caffemodel",  # another seed: kept
        "SE-ResNet-50-seed0-native-x-aaaaaaaaaaaa.caffemodel",  # another net's name: kept
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    _remove_stale(tmp_path, "SE-ResNet-50-seed0-native-bbbbbbbbbbbb")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:])
