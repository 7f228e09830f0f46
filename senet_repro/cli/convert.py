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
