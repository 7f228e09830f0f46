"""Text prototxt: the SENet files parse, errors say file:line:column and layer."""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor

from prototxt import (
    PrototxtSyntaxError,
    caffe_pb2,
    format_prototxt,
    parse_prototxt,
    parse_prototxt_text,
    write_prototxt,
)
from senet_repro.assets import CaffePair
from tests.conftest import BVLC_CAFFE_TARBALL, CAFFE_ZOO_DIR, SENET_CAFFE_DIR, require_shared

SENET_NAMES = [
    "SE-BN-Inception",
    "SE-ResNet-50",
    "SE-ResNet-101",
    "SE-ResNet-152",
    "SE-ResNeXt-50",
    "SE-ResNeXt-101",
    "SENet-154",
]


@pytest.mark.parametrize("name", SENET_NAMES)
def test_senet_prototxt_parses(senet_prototxts: dict[str, Path], name: str) -> None:
    net = parse_prototxt(senet_prototxts[name])
    assert net.name.startswith(name.split("-")[0]) and len(net.layer) > 200
    assert net.layer[0].type == "Input"
    assert len({layer.name for layer in net.layer}) == len(net.layer)


def test_all_seven_present(senet_prototxts: dict[str, Path]) -> None:
    assert sorted(senet_prototxts) == sorted(SENET_NAMES)


def _syntax_error(text: str) -> PrototxtSyntaxError:
    with pytest.raises(PrototxtSyntaxError) as caught:
        parse_prototxt_text(text, source="deploy.prototxt")
    return caught.value


def test_syntax_error_names_file_line_column_and_layer() -> None:
    text = (
        'name: "n"\n'
        "layer {\n"
        '  name: "conv1"\n'
        '  type: "Convolution"\n'
        "  convolution_param { num_output: 64 kernel_size: }\n"
        "}\n"
    )
    error = _syntax_error(text)
    assert (error.path, error.line, error.column) == ("deploy.prototxt", 5, 51)
    assert error.layer == "conv1"
    assert str(error).startswith("deploy.prototxt:5:51: ")
    assert str(error).endswith("(in layer 'conv1')")
    assert "\n" not in str(error)


def test_unknown_field_is_an_error_with_its_name() -> None:
    error = _syntax_error('layer { name: "relu" type: "ReLU"\n  negative_slop: 0.1 }\n')
    assert (error.line, error.column, error.layer) == (2, 3, "relu")
    assert "unknown field 'negative_slop' in LayerParameter: in neither BVLC Caffe nor a" in str(error)


def test_a_fork_field_we_do_not_read_names_its_fork() -> None:
    error = _syntax_error('layer { name: "up" type: "Upsample"\n upsample_param { scale: 2 } }')
    assert (error.line, error.layer) == (2, "up")
    assert "unknown field 'upsample_param' in LayerParameter: defined by the fork SegNet" in str(error)
    assert "\n" not in str(error)


def test_unknown_enum_value() -> None:
    error = _syntax_error('layer {\n name: "p" type: "Pooling"\n pooling_param { pool: MAXIMUM } }')
    assert (error.line, error.layer) == (3, "p")
    assert "MAXIMUM" in str(error)


def test_layer_name_found_after_the_error_and_past_nested_names() -> None:
    # ParamSpec has a `name` of its own; the layer's name comes last here.
    error = _syntax_error('layer { param { name: "w" } type: "Scale" bogus: 1 name: "real" }')
    assert error.layer == "real"


def test_braces_in_strings_and_comments_do_not_confuse_the_layer_lookup() -> None:
    text = (
        'layer { name: "a}" type: "ReLU" }  # }}} layer {\n'
        "layer: {\n"
        '  name: "b"  # the colon before { is legal too\n'
        "  oops: 1\n"
        "}\n"
    )
    assert _syntax_error(text).layer == "b"


def test_error_outside_layers_names_no_layer() -> None:
    error = _syntax_error('layer { name: "a" type: "ReLU" }\nbogus: 1\n')
    assert (error.line, error.layer) == (2, None)
    assert "(in layer" not in str(error)


def test_unclosed_layer() -> None:
    error = _syntax_error('layer {\n  name: "last"\n  type: "ReLU"\n')
    assert error.layer == "last"
    assert "Expected" in str(error)


def test_parse_file_errors_carry_the_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.prototxt"
    bad.write_text('layer {\n  name: "x"\n  type: ReLU\n}\n')
    with pytest.raises(PrototxtSyntaxError, match=r"bad\.prototxt:3:\d+: .*\(in layer 'x'\)"):
        parse_prototxt(bad)


def test_binary_file_as_prototxt(tmp_path: Path) -> None:
    binary = tmp_path / "weights.prototxt"
    binary.write_bytes(b"\n\x05tiny\xa2\x06\xff\xfe\x00")
    with pytest.raises(PrototxtSyntaxError, match="not a text prototxt"):
        parse_prototxt(binary)
    nul = tmp_path / "nul.prototxt"
    nul.write_bytes(b'name: "x"\x00\n')
    with pytest.raises(PrototxtSyntaxError, match="NUL"):
        parse_prototxt(nul)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PrototxtSyntaxError, match="cannot read file"):
        parse_prototxt(tmp_path / "absent.prototxt")


def test_legacy_input_fields_parse() -> None:
    net = parse_prototxt_text('input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 224\ninput_dim: 224\n')
    assert list(net.input) == ["data"] and list(net.input_dim) == [1, 3, 224, 224]
    net = parse_prototxt_text('input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }')
    assert [list(shape.dim) for shape in net.input_shape] == [[1, 3, 8, 8]]


def test_v1_layers_parse() -> None:
    net = parse_prototxt_text(
        'layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv"'
        " convolution_param { num_output: 4 kernel_size: 3 }"
        " blobs_lr: 1 weight_decay: 1 }"
    )
    assert net.layers[0].type == caffe_pb2.V1LayerParameter.CONVOLUTION


def test_format_and_write_round_trip(tiny_model: CaffePair, tmp_path: Path) -> None:
    net = parse_prototxt(tiny_model.prototxt)
    net.layer[1].blobs.add(data=[1.0, 2.0])
    assert "blobs" not in format_prototxt(net)
    path = tmp_path / "out" / "tiny.prototxt"
    write_prototxt(net, path, header="written by a test\nsecond line")
    text = path.read_text()
    assert text.startswith("# written by a test\n# second line\n")
    again = parse_prototxt(path)
    del net.layer[1].blobs[:]
    assert again == net
    assert [p.name for p in tmp_path.joinpath("out").iterdir()] == ["tiny.prototxt"]


def test_senet_format_round_trip(senet_prototxts: dict[str, Path]) -> None:
    net = parse_prototxt(senet_prototxts["SE-BN-Inception"])
    assert parse_prototxt_text(format_prototxt(net)) == net


# --- the whole schema: BVLC's caffe.proto and the forks' fields -------------------------------

_FIELD = re.compile(r"^\s*(optional|repeated|required)\s+([\w.]+)\s+(\w+)\s*=\s*(\d+)")
_SCALARS = {
    "float": FieldDescriptor.TYPE_FLOAT,
    "double": FieldDescriptor.TYPE_DOUBLE,
    "int32": FieldDescriptor.TYPE_INT32,
    "int64": FieldDescriptor.TYPE_INT64,
    "uint32": FieldDescriptor.TYPE_UINT32,
    "uint64": FieldDescriptor.TYPE_UINT64,
    "bool": FieldDescriptor.TYPE_BOOL,
    "string": FieldDescriptor.TYPE_STRING,
    "bytes": FieldDescriptor.TYPE_BYTES,
}


def _bvlc_fields() -> dict[tuple[str, str], tuple[str, str, int]]:
    """(message, field) -> (label, type, number) of every field in BVLC's caffe.proto."""
    tarball = require_shared(BVLC_CAFFE_TARBALL, "the BVLC Caffe source tarball")
    with tarfile.open(tarball) as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith("src/caffe/proto/caffe.proto"))
        text = archive.extractfile(member).read().decode()  # type: ignore[union-attr]
    fields: dict[tuple[str, str], tuple[str, str, int]] = {}
    scopes: list[str] = []  # the enclosing message (and enum) names
    for line in text.splitlines():
        code = line.split("//")[0]
        if opened := re.match(r"^\s*(?:message|enum)\s+(\w+)\s*{", code):
            scopes.append(opened.group(1))
        elif found := _FIELD.match(code):
            label, kind, name, number = found.groups()
            fields[(".".join(scopes), name)] = (label, kind, int(number))
        scopes = scopes[: len(scopes) - code.count("}")]
    return fields


def test_every_bvlc_field_is_declared_with_caffes_number_and_type() -> None:
    fields = _bvlc_fields()
    assert len(fields) == 423  # every field of the 9b89154 file: the parser missed none
    for (message, name), (label, kind, number) in fields.items():
        descriptor = caffe_pb2.DESCRIPTOR.message_types_by_name[message.split(".")[0]]
        for nested in message.split(".")[1:]:
            descriptor = descriptor.nested_types_by_name[nested]
        field = descriptor.fields_by_name.get(name)
        assert field is not None, f"{message}.{name} missing"
        assert field.number == number, f"{message}.{name}"
        assert (field.is_repeated, field.is_required) == (label == "repeated", label == "required"), name
        expected = _SCALARS.get(kind)
        if expected is not None:
            assert field.type == expected, f"{message}.{name}"
        else:
            target = field.message_type or field.enum_type
            assert target is not None and target.name == kind.split(".")[-1], f"{message}.{name}"


@pytest.mark.parametrize(
    ("message", "name", "number"),
    [
        # weiliu89/caffe at branch ssd, src/caffe/proto/caffe.proto.
        ("LayerParameter", "permute_param", 202),
        ("LayerParameter", "prior_box_param", 203),
        ("LayerParameter", "detection_output_param", 204),
        ("LayerParameter", "norm_param", 206),
        ("DetectionOutputParameter", "nms_param", 4),
        ("DetectionOutputParameter", "code_type", 6),
        ("DetectionOutputParameter", "keep_top_k", 7),
        ("DetectionOutputParameter", "variance_encoded_in_target", 8),
        ("DetectionOutputParameter", "confidence_threshold", 9),
        ("PriorBoxParameter", "offset", 13),
    ],
)
def test_ssd_fork_fields_carry_the_forks_numbers(message: str, name: str, number: int) -> None:
    assert caffe_pb2.DESCRIPTOR.message_types_by_name[message].fields_by_name[name].number == number


def _shared_prototxts() -> list[Path]:
    zoo = sorted(CAFFE_ZOO_DIR.rglob("*.prototxt")) if CAFFE_ZOO_DIR.is_dir() else []
    senet = sorted(SENET_CAFFE_DIR.glob("*.prototxt")) if SENET_CAFFE_DIR.is_dir() else []
    return zoo + senet


def test_every_shared_prototxt_parses() -> None:
    """The public zoo's deploy and train/val nets and the SENets: BVLC and fork fields."""
    require_shared(CAFFE_ZOO_DIR, "the public Caffe model-zoo prototxts")
    paths = _shared_prototxts()
    assert any(path.parent.name == "places365" for path in paths)
    for path in paths:
        assert parse_prototxt(path).layer, path
