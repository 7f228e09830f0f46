"""The net model: layers, blobs, TEST-phase filtering, shapes, and weights.

`load_net` is the one entry point most code needs: it takes a deploy prototxt, a
caffemodel, or both, and returns a `Net` whose layers know their bottoms, tops,
parameters, inferred output shapes and (when weights were given) their blobs,
checked against the shapes Caffe would allocate.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import caffe_pb2
from .caffemodel import CaffeModel, read_caffemodel
from .errors import InputError, NetDefinitionError, WeightsMismatchError
from .shapes import FORK_LAYER_TYPES, REFUSED_TYPES, SHAPE_RULES, Shape, expected_blob_shapes, multiply_adds
from .text import parse_prototxt

# Layers that feed or score training and have no place in a deploy net. (A Python
# layer without bottoms is a data layer too; one with bottoms computes: refused.)
DATA_LAYER_TYPES = frozenset(
    {"Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "DummyData", "AnnotatedData"}
)
TRAINING_LAYER_TYPES = frozenset(
    {
        "SoftmaxWithLoss",
        "Accuracy",
        "EuclideanLoss",
        "HingeLoss",
        "SigmoidCrossEntropyLoss",
        "InfogainLoss",
        "ContrastiveLoss",
        "MultinomialLogisticLoss",
        "Silence",
        "HDF5Output",
    }
)

# V1 layer-type enum -> the type string of the current format.
_V1_TYPES = {
    "ABSVAL": "AbsVal",
    "ACCURACY": "Accuracy",
    "ARGMAX": "ArgMax",
    "BNLL": "BNLL",
    "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution",
    "DATA": "Data",
    "DECONVOLUTION": "Deconvolution",
    "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise",
    "EXP": "Exp",
    "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN",
    "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN",
    "POOLING": "Pooling",
    "POWER": "Power",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split",
    "SLICE": "Slice",
    "TANH": "TanH",
    "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
}
# Parameter fields that V1 and current layers share by name (and message type).
_V1_SHARED_PARAMS = tuple(
    field.name
    for field in caffe_pb2.V1LayerParameter.DESCRIPTOR.fields
    if field.name.endswith("_param") and field.name in caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
)


@dataclass
class Layer:
    """One layer of a net, with everything needed to run or convert it."""

    name: str
    type: str
    bottoms: list[str]
    tops: list[str]
    param: caffe_pb2.LayerParameter
    bottom_shapes: list[Shape] = field(default_factory=list)
    top_shapes: list[Shape] = field(default_factory=list)
    blob_shapes: list[Shape] = field(default_factory=list)
    blobs: list[np.ndarray] = field(default_factory=list)

    @property
    def learnable_parameters(self) -> int:
        """Trainable values: everything but BatchNorm's running statistics."""
        if self.type == "BatchNorm":
            return 0
        return sum(math.prod(shape) for shape in self.blob_shapes)

    @property
    def multiply_adds(self) -> int:
        return multiply_adds(self.param, self.bottom_shapes, self.top_shapes)


@dataclass
class Net:
    """A deploy net: inputs with shapes, layers in execution order, blob shapes."""

    name: str
    inputs: dict[str, Shape]
    layers: list[Layer]
    blob_shapes: dict[str, Shape]
    notes: list[str] = field(default_factory=list)

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer named '{name}' in net '{self.name}'")

    @property
    def outputs(self) -> list[str]:
        """Blobs produced but never consumed afterwards: the net's results."""
        consumed: set[str] = set()
        produced: list[str] = []
        for layer in self.layers:
            consumed.update(b for b in layer.bottoms if b not in layer.tops)
            produced.extend(t for t in layer.tops if t not in produced)
        return [blob for blob in produced if blob not in consumed]

    @property
    def has_weights(self) -> bool:
        return any(layer.blobs for layer in self.layers)

    @property
    def learnable_parameters(self) -> int:
        return sum(layer.learnable_parameters for layer in self.layers)

    @property
    def multiply_adds(self) -> int:
        return sum(layer.multiply_adds for layer in self.layers)

    def weights(self) -> dict[str, list[np.ndarray]]:
        """Layer name -> blobs, for the layers that carry them."""
        return {layer.name: layer.blobs for layer in self.layers if layer.blobs}

    def to_proto(self) -> caffe_pb2.NetParameter:
        """The deploy NetParameter of the kept layers, without blobs.

        Inputs that no Input layer declares (legacy fields, or the image top of a
        dropped data layer) get one, so the result is a self-contained deploy net;
        every input has the net's shape (an `input_shape` given to `build_net` included).
        """
        proto = caffe_pb2.NetParameter(name=self.name)
        declared = {top for layer in self.layers if layer.type == "Input" for top in layer.tops}
        for blob, shape in self.inputs.items():
            if blob not in declared:
                input_layer = proto.layer.add(name=blob, type="Input", top=[blob])
                input_layer.input_param.shape.add(dim=shape)
        for layer in self.layers:
            message = proto.layer.add()
            message.CopyFrom(layer.param)
            del message.blobs[:]
            if layer.type == "Input":
                del message.input_param.shape[:]
                for top in layer.tops:
                    message.input_param.shape.add(dim=self.inputs[top])
        return proto


def unsupported_layers(layers: Sequence[Layer], supported: Container[str]) -> str:
    """'Type: name, name; Type2: ...' for the layers whose type is not in `supported` ('' if none),
    for the registries (converter, onnxlower) to refuse a net in one message."""
    offending: dict[str, list[str]] = {}
    for layer in layers:
        if layer.type not in supported:
            offending.setdefault(layer.type, []).append(layer.name)
    return "; ".join(
        f"{t}: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}"
        for t, names in sorted(offending.items())
    )


def check_convertible(net: Net, outputs: Sequence[str] | None, require_weights: bool) -> list[str]:
    """The blobs to compute (`outputs`, default the net's final blobs), checked to exist, and
    with `require_weights` every layer that owns blobs checked to have them; for the converters."""
    if require_weights:
        missing = [layer.name for layer in net.layers if layer.blob_shapes and not layer.blobs]
        if missing:
            raise WeightsMismatchError(
                f"no weights for {len(missing)} layer(s) that need them "
                f"(first: {missing[0]}); pass a caffemodel, or "
                "require_weights=False for default-initialised layers"
            )
    wanted = list(outputs) if outputs else net.outputs
    unknown = [blob for blob in wanted if blob not in net.blob_shapes]
    if unknown:
        raise NetDefinitionError(f"no blob named {unknown} in net '{net.name}'")
    return wanted


def upgrade_v1_layer(old: caffe_pb2.V1LayerParameter) -> caffe_pb2.LayerParameter:
    """Convert a pre-2015 V1 layer to the current LayerParameter."""
    if old.HasField("layer"):
        raise NetDefinitionError(
            "a V0 layer definition (Caffe before 2014); upgrade the file with Caffe's "
            "tools/upgrade_net_proto_text first",
            layer=old.name or old.layer.name,
        )
    type_name = caffe_pb2.V1LayerParameter.LayerType.Name(old.type)
    new = caffe_pb2.LayerParameter(
        name=old.name,
        type=_V1_TYPES.get(type_name, type_name),
        bottom=old.bottom,
        top=old.top,
        loss_weight=old.loss_weight,
    )
    new.include.extend(old.include)
    new.exclude.extend(old.exclude)
    new.blobs.extend(old.blobs)
    for name in _V1_SHARED_PARAMS:
        if old.HasField(name):
            getattr(new, name).CopyFrom(getattr(old, name))
    return new


def _rule_matches(rule: caffe_pb2.NetStateRule, state: caffe_pb2.NetState) -> bool:
    """Caffe's Net::StateMeetsRule."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    return all(s in stages for s in rule.stage) and not any(s in stages for s in rule.not_stage)


def layer_included(layer: caffe_pb2.LayerParameter, state: caffe_pb2.NetState) -> bool:
    """Caffe's FilterNet: include rules must match (any), exclude rules must not."""
    if layer.include:
        return any(_rule_matches(rule, state) for rule in layer.include)
    return not any(_rule_matches(rule, state) for rule in layer.exclude)


def _all_layers(proto: caffe_pb2.NetParameter) -> list[caffe_pb2.LayerParameter]:
    if proto.layer and proto.layers:
        raise NetDefinitionError("the net mixes current 'layer' and V1 'layers' definitions")
    return list(proto.layer) if proto.layer else [upgrade_v1_layer(v1) for v1 in proto.layers]


def _legacy_inputs(proto: caffe_pb2.NetParameter) -> dict[str, Shape]:
    """Inputs declared with NetParameter.input + input_shape / input_dim."""
    names = list(proto.input)
    if proto.input_shape:
        if len(proto.input_shape) != len(names):
            raise NetDefinitionError(f"{len(names)} inputs but {len(proto.input_shape)} input_shape")
        return {n: tuple(s.dim) for n, s in zip(names, proto.input_shape)}
    if proto.input_dim:
        if len(proto.input_dim) != 4 * len(names):
            raise NetDefinitionError(f"{len(names)} inputs need {4 * len(names)} input_dim values")
        dims = list(proto.input_dim)
        return {n: tuple(dims[4 * i : 4 * i + 4]) for i, n in enumerate(names)}
    if names:
        raise NetDefinitionError(f"inputs {names} are declared without a shape")
    return {}


def _is_data_layer(layer: caffe_pb2.LayerParameter) -> bool:
    return layer.type in DATA_LAYER_TYPES or (layer.type == "Python" and not layer.bottom)


def _data_layer_input(layer: caffe_pb2.LayerParameter) -> tuple[str, Shape] | None:
    """The image input a dropped data layer fed, when its parameters tell the shape."""
    if not layer.top:
        return None
    if layer.HasField("memory_data_param"):
        p = layer.memory_data_param
        return layer.top[0], (1, p.channels, p.height, p.width)
    if layer.transform_param.crop_size:
        size = layer.transform_param.crop_size
        return layer.top[0], (1, 3, size, size)
    return None


def _caffe_rounding(pooling: caffe_pb2.PoolingParameter, layer: str) -> None:
    """The fork field `ceil_mode` as BVLC's `round_mode` (false is FLOOR), in place."""
    rounding = pooling.CEIL if pooling.ceil_mode else pooling.FLOOR
    if pooling.HasField("round_mode") and pooling.round_mode != rounding:
        raise NetDefinitionError(
            f"ceil_mode: {str(pooling.ceil_mode).lower()} contradicts "
            f"round_mode: {pooling.RoundMode.Name(pooling.round_mode)}",
            layer=layer,
        )
    pooling.round_mode = rounding
    pooling.ClearField("ceil_mode")


def _deploy_form(layer: caffe_pb2.LayerParameter, notes: list[str]) -> caffe_pb2.LayerParameter:
    """The layer as a deploy net has it: no phase, BatchNorm on its stored statistics,
    BVLC's fields for fork fields that mean the same (`ceil_mode`).

    A caffemodel embeds the training net, whose BatchNorm layers may say
    `use_global_stats: false`; inference always uses the stored statistics.
    """
    if (
        not layer.HasField("phase")
        and not layer.pooling_param.HasField("ceil_mode")
        and not (
            layer.type == "BatchNorm"
            and layer.batch_norm_param.HasField("use_global_stats")
            and not layer.batch_norm_param.use_global_stats
        )
    ):
        return layer
    deploy = caffe_pb2.LayerParameter()
    deploy.CopyFrom(layer)
    deploy.ClearField("phase")
    if deploy.pooling_param.HasField("ceil_mode"):
        _caffe_rounding(deploy.pooling_param, deploy.name)
    if deploy.type == "BatchNorm" and deploy.batch_norm_param.HasField("use_global_stats"):
        if not deploy.batch_norm_param.use_global_stats:
            deploy.batch_norm_param.use_global_stats = True
            if not any(n.startswith("BatchNorm layers") for n in notes):
                notes.append("BatchNorm layers switched to their stored statistics (inference)")
    return deploy


def build_net(
    proto: caffe_pb2.NetParameter,
    *,
    phase: caffe_pb2.Phase = caffe_pb2.TEST,
    input_shape: Mapping[str, Sequence[int]] | None = None,
) -> Net:
    """Build a deploy `Net` from a NetParameter: filter, find inputs, infer shapes.

    Data, loss and accuracy layers are dropped (their image top becomes an input
    when its shape is known); `input_shape` overrides or supplies input shapes, by
    input blob name ("" for the net's only input).
    """
    state = caffe_pb2.NetState(phase=phase)
    inputs = _legacy_inputs(proto)
    notes: list[str] = []
    kept: list[caffe_pb2.LayerParameter] = []
    all_layers = _all_layers(proto)
    data_inputs: dict[str, Shape] = {}
    # A data layer of another phase (a TRAIN-only MemoryData, say) still tells the
    # image shape when no layer of this phase does.
    for layer in sorted(all_layers, key=lambda candidate: layer_included(candidate, state), reverse=True):
        found = _data_layer_input(layer) if _is_data_layer(layer) else None
        if found:
            data_inputs.setdefault(*found)
    for layer in all_layers:
        if _is_data_layer(layer):
            notes.append(f"dropped data layer '{layer.name}' ({layer.type})")
            continue
        if not layer_included(layer, state):
            continue
        if layer.type in TRAINING_LAYER_TYPES:
            notes.append(f"dropped training layer '{layer.name}' ({layer.type})")
            continue
        if layer.type == "Input":
            shapes = [tuple(s.dim) for s in layer.input_param.shape]
            if len(shapes) not in (1, len(layer.top)):
                raise NetDefinitionError(f"{len(layer.top)} tops but {len(shapes)} shapes", layer=layer.name)
            for i, top in enumerate(layer.top):
                inputs[top] = shapes[i if len(shapes) > 1 else 0]
        kept.append(_deploy_form(layer, notes))
    if not inputs:
        inputs = data_inputs
    image_tops = [layer.top[0] for layer in all_layers if _is_data_layer(layer) and layer.top]
    inputs.update(_given_shapes(input_shape or {}, list(inputs) or list(dict.fromkeys(image_tops))))
    if not inputs:
        raise NetDefinitionError(
            "the net has no input (no Input layer, input declaration or data layer with a crop "
            "size); give its shape (--input-shape N,C,H,W)"
        )
    for blob, shape in inputs.items():
        if any(dim <= 0 for dim in shape):  # nothing to compute, and numpy reductions fail on empty blobs
            raise NetDefinitionError(
                f"input '{blob}' has a dimension of 0 or below: {shape}; "
                "give its shape (--input-shape N,C,H,W)"
            )
    if not kept:
        raise NetDefinitionError("the net has no layers")
    return _infer(proto.name, inputs, kept, notes)


def _given_shapes(given: Mapping[str, Sequence[int]], names: list[str]) -> dict[str, Shape]:
    """`input_shape` resolved against the net's input blobs `names` (its declared inputs, or
    the image tops of its data layers); the key "" stands for the only one."""
    shapes = {name: tuple(int(d) for d in shape) for name, shape in given.items()}
    if "" in shapes:
        if len(names) != 1:
            raise NetDefinitionError(
                f"an input shape without a blob name needs a net with one input; this one has "
                f"{len(names)} ({', '.join(names) or 'none'}): name it, as BLOB=N,C,H,W"
            )
        shapes[names[0]] = shapes.pop("")
    unknown = [name for name in shapes if name not in names]
    if unknown:
        raise NetDefinitionError(
            f"no input blob named {', '.join(unknown)} (the net's inputs: {', '.join(names) or 'none'})"
        )
    return shapes


# farmingyard/caffe-mobilenet's depthwise convolution (ShuffleNet and MobileNet ports): a Convolution
# with one filter per input channel, whatever `group` says; OpenCV's importer reads it the same way.
DEPTHWISE = "ConvolutionDepthwise"


def _depthwise_as_convolution(
    layer: caffe_pb2.LayerParameter, bottoms: list[Shape]
) -> caffe_pb2.LayerParameter:
    """`layer` as the BVLC Convolution it computes: group = channels = num_output."""
    channels = bottoms[0][1] if len(bottoms) == 1 and len(bottoms[0]) > 1 else None
    if channels != layer.convolution_param.num_output:
        raise NetDefinitionError(
            f"{DEPTHWISE} with num_output {layer.convolution_param.num_output} on "
            f"{channels} input channels: only one filter per channel is supported",
            layer=layer.name,
        )
    convolution = caffe_pb2.LayerParameter()
    convolution.CopyFrom(layer)
    convolution.type = "Convolution"
    convolution.convolution_param.group = channels
    return convolution


def _infer(
    name: str, inputs: dict[str, Shape], protos: list[caffe_pb2.LayerParameter], notes: list[str]
) -> Net:
    for proto in protos:
        if proto.type in REFUSED_TYPES:
            reason = REFUSED_TYPES[proto.type]
            if proto.type == "Python":
                reason += f" (module '{proto.python_param.module}', class '{proto.python_param.layer}')"
            raise NetDefinitionError(f"{proto.type} layers cannot be converted: {reason}", layer=proto.name)
    unsupported = sorted(
        {p.type for p in protos if p.type not in SHAPE_RULES and p.type not in ("Input", DEPTHWISE)}
    )
    if unsupported:
        names = [p.name for p in protos if p.type in unsupported]
        named = [
            f"{t} (a layer of the fork {FORK_LAYER_TYPES[t]})" if t in FORK_LAYER_TYPES else t
            for t in unsupported
        ]
        raise NetDefinitionError(
            f"no shape rule for layer type(s) {', '.join(named)} "
            f"(layers: {', '.join(names[:10])}"
            f"{', ...' if len(names) > 10 else ''}). To support one, add "
            "its shape rule to prototxt/shapes.py and its converter to "
            "converter/ops/ (docs/ARCHITECTURE.md, 'Adding a layer type')",
            layer=names[0],
        )
    shapes: dict[str, Shape] = dict(inputs)
    layers: list[Layer] = []
    for proto in protos:
        missing = [b for b in proto.bottom if b not in shapes]
        if missing:
            raise NetDefinitionError(f"unknown bottom blob(s) {missing}", layer=proto.name)
        bottoms = [shapes[b] for b in proto.bottom]
        if proto.type == DEPTHWISE:
            proto = _depthwise_as_convolution(proto, bottoms)
        if proto.type == "Input":
            tops = [shapes[t] for t in proto.top]
        else:
            tops = SHAPE_RULES[proto.type](proto, bottoms)
            if len(tops) != len(proto.top):
                raise NetDefinitionError(
                    f"{proto.type} produces {len(tops)} top(s), {len(proto.top)} named", layer=proto.name
                )
        for top, shape in zip(proto.top, tops):
            shapes[top] = tuple(int(d) for d in shape)
        layers.append(
            Layer(
                name=proto.name,
                type=proto.type,
                bottoms=list(proto.bottom),
                tops=list(proto.top),
                param=proto,
                bottom_shapes=bottoms,
                top_shapes=[shapes[t] for t in proto.top],
                blob_shapes=expected_blob_shapes(proto, bottoms),
            )
        )
    return Net(name=name, inputs=dict(inputs), layers=layers, blob_shapes=shapes, notes=notes)


def _check_finite(layer: Layer, index: int, blob: np.ndarray, source: str) -> None:
    """NaN or infinite weights are an error of the weights file, reported by layer.

    A sum in the blob's own dtype is one fast pass (4x faster than widening float32 to
    float64 on SENet-154's 115 M weights) and is finite whenever every value is; a sum
    that is not (NaN, infinity, or finite values that overflowed) is then counted
    element by element, so an overflow is never mistaken for a bad weight.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(blob.sum()):
            return
    bad = int(blob.size - np.count_nonzero(np.isfinite(blob)))
    if bad:
        raise WeightsMismatchError(
            f"{source}: blob {index} has {bad:,} non-finite value(s) (NaN or infinity)", layer=layer.name
        )


def _fit_blob(layer: Layer, index: int, blob: np.ndarray, expected: Shape) -> np.ndarray:
    """Accept legacy 4-D blob shapes (leading 1s) that hold the expected shape."""
    if tuple(blob.shape) == tuple(expected):
        return blob

    def squeeze(shape: Shape) -> tuple[int, ...]:
        """Drop leading 1s."""
        dims = tuple(shape)
        return dims[next((i for i, d in enumerate(dims) if d != 1), len(dims)) :]

    if blob.size == math.prod(expected) and squeeze(blob.shape) == squeeze(expected):
        return blob.reshape(expected)
    raise WeightsMismatchError(
        f"blob {index} has shape {tuple(blob.shape)}, the prototxt implies {tuple(expected)}",
        layer=layer.name,
    )


def attach_weights(net: Net, blobs: Mapping[str, Sequence[np.ndarray]], *, source: str = "weights") -> Net:
    """Give each layer its blobs by layer name, checking counts and shapes.

    Layers that need weights and get none are an error; blobs for layers the net
    does not have (training-only layers) are ignored with a note.
    """
    missing: list[str] = []
    for layer in net.layers:
        arrays = blobs.get(layer.name)
        if not arrays:
            if layer.blob_shapes:
                missing.append(layer.name)
            continue
        if len(arrays) != len(layer.blob_shapes):
            raise WeightsMismatchError(
                f"{source} has {len(arrays)} blob(s), a {layer.type} layer with these "
                f"parameters needs {len(layer.blob_shapes)}",
                layer=layer.name,
            )
        layer.blobs = [
            _fit_blob(layer, i, np.asarray(a), s) for i, (a, s) in enumerate(zip(arrays, layer.blob_shapes))
        ]
        for index, blob in enumerate(layer.blobs):
            _check_finite(layer, index, blob, source)
    if missing:
        shown = ", ".join(missing[:8]) + (", ..." if len(missing) > 8 else "")
        raise WeightsMismatchError(
            f"{source} has no weights for {len(missing)} layer(s) that need them: {shown}"
        )
    extra = sorted(set(blobs) - {layer.name for layer in net.layers})
    if extra:
        net.notes.append(
            f"ignored blobs of {len(extra)} layer(s) not in the net: "
            f"{', '.join(extra[:8])}{', ...' if len(extra) > 8 else ''}"
        )
    return net


def _refuse_ambiguous_rounding(proto: caffe_pb2.NetParameter) -> None:
    """A binary PoolingParameter field 13 is BVLC's `round_mode` (0 = CEIL) but the fork field
    `ceil_mode` (BVLC PR #3057, 0 = false = floor) in the caffemodels of the forks that have it:
    the two read the same bytes with opposite meanings, so only a prototxt can tell which."""
    stored = [layer.name for layer in proto.layer if layer.pooling_param.HasField("round_mode")]
    stored += [layer.name for layer in proto.layers if layer.pooling_param.HasField("round_mode")]
    if stored:
        raise NetDefinitionError(
            "the caffemodel stores PoolingParameter field 13, which BVLC Caffe reads as round_mode "
            "and forks with ceil_mode as the opposite rounding; give the deploy prototxt as well",
            layer=stored[0],
        )


def _located(exc: NetDefinitionError, prototxt: str | os.PathLike[str]) -> NetDefinitionError:
    """`exc` prefixed with the prototxt and, when it names a layer, the line where that layer is named."""
    where = os.fspath(prototxt)
    if exc.layer is not None:
        text = Path(prototxt).read_text(encoding="utf-8", errors="replace")
        named = re.search(rf"""\bname\s*:\s*["']{re.escape(exc.layer)}["']""", text)
        if named:
            line = text.count("\n", 0, named.start()) + 1
            where += f":{line}"
    located = NetDefinitionError(f"{where}: {exc}")
    located.layer = exc.layer
    return located


def load_net(
    prototxt: str | os.PathLike[str] | None = None,
    caffemodel: str | os.PathLike[str] | CaffeModel | None = None,
    *,
    input_shape: Mapping[str, Sequence[int]] | None = None,
) -> Net:
    """Load a deploy net from a prototxt, a caffemodel, or both (merged by layer name)."""
    model = caffemodel
    if model is not None and not isinstance(model, CaffeModel):
        model = read_caffemodel(model)
    if prototxt is not None:
        proto = parse_prototxt(prototxt)
    elif model is not None:
        proto = model.net
        _refuse_ambiguous_rounding(proto)
    else:
        raise InputError("give a prototxt, a caffemodel, or both")
    try:
        net = build_net(proto, input_shape=input_shape)
    except NetDefinitionError as exc:
        if prototxt is None or type(exc) is not NetDefinitionError:
            raise
        raise _located(exc, prototxt) from None
    if model is not None:
        attach_weights(net, model.blobs, source=os.path.basename(model.path))
    return net
