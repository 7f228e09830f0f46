"""Figures of the excitation study as the paper draws them: mean gate per channel, a curve per class.

Matplotlib's object API with the Agg canvas (no pyplot): no global backend switch, no
figure registry to leak from, and it runs headless. Every curve carries a gid
(`gate-curve-<wnid>` in a layer's figure, `gate-curve-<layer>-<wnid>` in the overview)
that the SVG keeps as the element id, so the curves of a saved figure can be counted.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from prototxt.atomic import atomic_path

from .excitations import ExcitationResult, SELayer

FORMATS = ("png", "svg")


def legend_labels(result: ExcitationResult) -> list[str]:
    """Class names, with the WordNet id added where two chosen classes share a name (e.g. 'crane')."""
    counts = Counter(c.name for c in result.classes)
    return [c.name if counts[c.name] == 1 else f"{c.name} ({c.wnid})" for c in result.classes]


def file_stem(layer_name: str) -> str:
    """A layer name as a file name (module paths keep their dots)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", layer_name)


def _draw(ax: Axes, result: ExcitationResult, layer: SELayer, gid_prefix: str) -> None:
    gates = result.mean_gates[layer.name]
    channels = range(layer.channels)
    for choice, label, row in zip(result.classes, legend_labels(result), gates):
        (line,) = ax.plot(channels, row, linewidth=0.8, label=label)
        line.set_gid(f"{gid_prefix}{choice.wnid}")
    ax.set_xlim(0, max(layer.channels - 1, 1))
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("channel index")
    ax.set_ylabel("mean gate")
    ax.grid(alpha=0.3, linewidth=0.5)


def _figure(
    width: float,
    height: float,
    *,
    left: float,
    right: float,
    bottom: float,
    top: float,
    wspace: float = 0.0,
    hspace: float = 0.0,
) -> Figure:
    """A figure with fixed margins in inches: constrained layout measures every tick label on each
    save and took most of the command's time (tens of seconds for the default six layers)."""
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    figure.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        bottom=bottom / height,
        top=1 - top / height,
        wspace=wspace,
        hspace=hspace,
    )
    return figure


def plot_layer(result: ExcitationResult, layer: SELayer) -> Figure:
    """One layer: a curve per class over the channel index, the layer in the title, classes in the legend."""
    figure = _figure(10.0, 3.6, left=0.7, right=2.2, bottom=0.55, top=0.4)
    ax = figure.add_subplot()
    _draw(ax, result, layer, "gate-curve-")
    ax.set_title(f"{layer.name} ({layer.path}, {layer.channels} channels)")
    figure.legend(loc="upper left", bbox_to_anchor=(1 - 2.1 / 10.0, 1 - 0.4 / 3.6), fontsize="small")
    return figure


def plot_overview(result: ExcitationResult, title: str = "") -> Figure:
    """All chosen layers, three panels a row, the title above and one legend for all below."""
    columns = min(3, len(result.layers))
    rows = math.ceil(len(result.layers) / columns)
    height = 3.0 * rows + 1.0
    figure = _figure(
        5.0 * columns, height, left=0.7, right=0.2, bottom=1.0, top=0.7, wspace=0.25, hspace=0.45
    )
    for index, layer in enumerate(result.layers):
        ax = figure.add_subplot(rows, columns, index + 1)
        _draw(ax, result, layer, f"gate-curve-{file_stem(layer.name)}-")
        ax.set_title(layer.name)
    handles, labels = figure.axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncols=min(len(labels), 6), frameon=False)
    if title:
        figure.suptitle(title)
    return figure


def _stem_paths(stem: Path) -> list[Path]:
    return [stem.with_name(f"{stem.name}.{fmt}") for fmt in FORMATS]


def save_figure(figure: Figure, stem: Path) -> list[Path]:
    """`stem`.png (150 dpi) and `stem`.svg, each written atomically."""
    paths = _stem_paths(stem)
    for path in paths:
        with atomic_path(path) as tmp:
            figure.savefig(
                tmp,
                format=path.suffix[1:],
                dpi=150,
                metadata={"Date": None} if path.suffix == ".svg" else None,
            )
    return paths


def figure_paths(layers: list[SELayer], out: Path) -> list[Path]:
    """The files `write_figures` writes for `layers`."""
    stems = [file_stem(layer.name) for layer in layers] + ["overview"]
    return [path for stem in stems for path in _stem_paths(out / stem)]


def write_figures(result: ExcitationResult, out: Path, title: str = "") -> list[Path]:
    """A figure per layer (<layer>.png/.svg) and the overview (overview.png/.svg) in `out`."""
    paths = []
    for layer in result.layers:
        paths += save_figure(plot_layer(result, layer), out / file_stem(layer.name))
    paths += save_figure(plot_overview(result, title), out / "overview")
    return paths
