"""senet-convert: inspect Caffe files and convert them to PyTorch, ONNX and back."""

from __future__ import annotations

import json
from pathlib import Path

import click

from prototxt import Net, load_net

from ._common import user_errors

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def _load_pair(path: Path, weights: Path | None) -> Net:
    """A prototxt (optionally with weights) or a lone caffemodel."""
    if path.suffix == ".caffemodel" and weights is None:
        return load_net(caffemodel=path)
    return load_net(path, weights)


def _layer_rows(net: Net) -> list[dict]:
    return [{
        "layer": layer.name,
        "type": layer.type,
        "bottoms": layer.bottoms,
        "tops": layer.tops,
        "output_shape": list(layer.top_shapes[0]) if layer.top_shapes else [],
        "parameters": layer.learnable_parameters,
        "multiply_adds": layer.multiply_adds,
    } for layer in net.layers]


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
@user_errors
def inspect(file: Path, weights: Path | None, as_json: bool) -> None:
    """Print a layer table of FILE: type, bottoms -> tops, output shape, parameters, MACs.

    FILE is a deploy .prototxt or a .caffemodel (whose embedded net is used, with
    data, loss and accuracy layers dropped). With --weights, every blob of the
    caffemodel is checked against the shape the prototxt implies.
    """
    net = _load_pair(file, weights)
    rows = _layer_rows(net)
    totals = {"layers": len(rows), "parameters": net.learnable_parameters,
              "multiply_adds": net.multiply_adds, "inputs": {k: list(v) for k, v in net.inputs.items()},
              "outputs": {name: list(net.blob_shapes[name]) for name in net.outputs},
              "weights": net.has_weights, "notes": net.notes}
    if as_json:
        click.echo(json.dumps({"net": net.name, "layers": rows, "totals": totals}, indent=1))
        return
    name_width = min(max(len(r["layer"]) for r in rows), 40)
    header = f"{'layer':<{name_width}}  {'type':<12} {'bottoms -> tops':<44} {'output':<18} " \
             f"{'params':>11} {'MACs':>14}"
    click.echo(f"net '{net.name}': {len(rows)} layers")
    click.echo(header)
    click.echo("-" * len(header))
    for r in rows:
        flow = f"{','.join(r['bottoms'])} -> {','.join(r['tops'])}"
        shape = "x".join(str(d) for d in r["output_shape"])
        click.echo(f"{r['layer'][:40]:<{name_width}}  {r['type']:<12} {flow[:44]:<44} {shape:<18} "
                   f"{r['parameters']:>11,} {r['multiply_adds']:>14,}")
    click.echo("-" * len(header))
    click.echo(f"{'total':<{name_width}}  {'':<12} {'':<44} {'':<18} "
               f"{net.learnable_parameters:>11,} {net.multiply_adds:>14,}")
    click.echo(f"inputs: {totals['inputs']}  outputs: {totals['outputs']}  "
               f"GMACs: {net.multiply_adds / 1e9:.3f}  weights: "
               f"{'checked against the prototxt' if net.has_weights else 'none'}")
    for note in net.notes:
        click.echo(f"note: {note}")


def _outputs_option(function):
    return click.option("--outputs", default=None, metavar="BLOB[,BLOB...]",
                        help="Blobs to output (default: the net's final blobs), e.g. "
                             "'pool5/7x7_s1,classifier' for features and logits.")(function)


def _load_for_conversion(prototxt: Path | None, caffemodel: Path) -> Net:
    return load_net(prototxt, caffemodel) if prototxt else load_net(caffemodel=caffemodel)


@main.command("caffe2torch")
@click.option("--prototxt", type=_FILE, help="Deploy prototxt (default: the caffemodel's own net).")
@click.option("--caffemodel", type=_FILE, required=True, help="Trained weights.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Generic net: OUT.pt2 (torch.export) or OUT.safetensors (+ OUT.prototxt).")
@click.option("--fold", type=click.Choice(["none", "bn", "conv"]), default="none", show_default=True,
              help="Fold BatchNorm+Scale into one BatchNorm ('bn') or into the convolution.")
@_outputs_option
@user_errors
def caffe2torch(prototxt: Path | None, caffemodel: Path, output: Path, fold: str,
                outputs: str | None) -> None:
    """Convert a Caffe net to PyTorch, self-check it and save it (no pickle needed to load)."""
    import torch

    from converter import convert
    from converter.fold import fold_batchnorm
    from converter.selfcheck import self_check
    from converter.serialize import save_converted

    net = _load_for_conversion(prototxt, caffemodel)
    module = convert(net, outputs.split(",") if outputs else None, progress=True)
    if fold != "none":
        fold_batchnorm(module, fold)
    shape = next(iter(net.inputs.values()))
    check = self_check(module, net, caffemodel)
    written = save_converted(module, net, output, torch.zeros(tuple(shape)))
    parameters = sum(p.numel() for p in module.parameters())
    click.echo(f"converted {len(module.caffe_layer_modules)} layers of '{net.name}', "
               f"{parameters:,} parameters; outputs {module.caffe_outputs}")
    click.echo(check.summary())
    click.echo("wrote " + ", ".join(str(p) for p in written))


@main.command("caffe2onnx")
@click.option("--prototxt", type=_FILE, help="Deploy prototxt (default: the caffemodel's own net).")
@click.option("--caffemodel", type=_FILE, required=True, help="Trained weights.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The .onnx file to write.")
@click.option("--opset", type=click.IntRange(17, None), default=17, show_default=True)
@click.option("--fp16", is_flag=True, help="Export in float16.")
@_outputs_option
@user_errors
def caffe2onnx(prototxt: Path | None, caffemodel: Path, output: Path, opset: int, fp16: bool,
               outputs: str | None) -> None:
    """Convert a Caffe net straight to ONNX (input 'data', outputs named after Caffe blobs)."""
    from converter import convert

    net = _load_for_conversion(prototxt, caffemodel)
    module = convert(net, outputs.split(",") if outputs else None, progress=True)
    _export_and_compare(module, next(iter(net.inputs.values())), output, opset, fp16)


def _export_and_compare(module, shape, output: Path, opset: int, fp16: bool) -> None:
    import torch

    from converter.onnx_export import compare_onnx, export_onnx

    example = torch.rand(tuple(shape), generator=torch.Generator().manual_seed(0)) * 255 - 117
    export_onnx(module, output, example, opset=opset, fp16=fp16)
    batch = torch.cat([example] * 3) if not fp16 else example
    difference = compare_onnx(output, module, batch)
    click.echo(f"wrote {output} (opset {opset}{', float16' if fp16 else ''}); ONNX Runtime vs "
               f"PyTorch max abs difference {difference:.3e} on batch {batch.shape[0]}")


@main.command("torch2onnx")
@click.argument("converted", type=_FILE)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--input-shape", default="1,3,224,224", show_default=True,
              help="Example input shape for export (the batch axis stays dynamic).")
@click.option("--opset", type=click.IntRange(17, None), default=17, show_default=True)
@click.option("--fp16", is_flag=True, help="Export in float16.")
@user_errors
def torch2onnx(converted: Path, output: Path, input_shape: str, opset: int, fp16: bool) -> None:
    """Export a converted net (.pt2 or .safetensors from caffe2torch) to ONNX."""
    from converter.serialize import load_converted

    module = load_converted(converted)
    shape = tuple(int(d) for d in input_shape.split(","))
    _export_and_compare(module, shape, output, opset, fp16)


@main.command("portable-prototxt")
@click.argument("source", type=_FILE)
@click.argument("target", type=click.Path(dir_okay=False, path_type=Path))
@user_errors
def portable_prototxt(source: Path, target: Path) -> None:
    """Rewrite every Axpy of SOURCE into Reshape + Scale + Eltwise, for stock Caffe and OpenCV.

    OpenCV 4.x maps Axpy with its operands swapped and BVLC Caffe has no Axpy; the
    rewritten prototxt computes the same a * x + y everywhere and keeps every blob
    name, so the original caffemodel loads with it unchanged.
    """
    from prototxt import parse_prototxt, portable_net, write_prototxt

    original = parse_prototxt(source)
    rewritten = portable_net(original)
    count = sum(layer.type == "Axpy" for layer in original.layer)
    write_prototxt(rewritten, target, header=f"{source.name} with {count} Axpy layers rewritten "
                                             "by senet-convert portable-prototxt")
    click.echo(f"rewrote {count} Axpy layer(s); wrote {target}")
