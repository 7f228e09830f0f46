"""senet-analyze complexity: the SENet paper's cost table (Table 2), recomputed."""

from __future__ import annotations

import json

import click

from ._common import user_errors


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:+.2f}%"


def _published(printed: str | None) -> str:
    return "-" if printed is None else printed


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead.")
@user_errors
def complexity(as_json: bool) -> None:
    """Parameters and GFLOPs (multiply-adds, 224x224) of each SE network and its plain
    counterpart, beside the figures of the SENet paper, with the relative difference.

    GFLOPs count the multiply-adds of convolutions and fully connected layers plus
    SE's squeeze (adds) and scale (multiplies); see senet_repro.analysis.complexity
    for why, and for the source of each published figure.
    """
    from senet_repro.analysis.complexity import complexity_table

    rows = complexity_table()
    if as_json:
        click.echo(json.dumps({"input": [1, 3, 224, 224], "rows": [row.as_dict() for row in rows]}, indent=1))
        return
    sources = list(dict.fromkeys(row.paper.source for row in rows))
    header = (
        f"{'network':<24} {'params (M)':>10} {'paper':>6} {'diff':>7}   "
        f"{'GFLOPs':>7} {'paper':>6} {'diff':>7}   {'conv+fc':>7} {'SE ops':>7}  source"
    )
    click.echo(header)
    click.echo("-" * len(header))
    for row in rows:
        cost = row.cost
        click.echo(
            f"{row.network:<24} {cost.parameters / 1e6:>10.2f} "
            f"{_published(row.paper.printed_params_m):>6} {_percent(row.params_difference):>7}   "
            f"{cost.gflops:>7.3f} {_published(row.paper.printed_gflops):>6} "
            f"{_percent(row.gflops_difference):>7}   {cost.conv_fc_macs / 1e9:>7.3f} "
            f"{cost.se_elementwise / 1e9:>7.4f}  [{sources.index(row.paper.source) + 1}]"
        )
    click.echo("-" * len(header))
    click.echo(
        "GFLOPs = multiply-adds of convolutions and fully connected layers (conv+fc) plus "
        "SE's squeeze and scale (SE ops), at 224x224."
    )
    for number, source in enumerate(sources, start=1):
        click.echo(f"[{number}] {source}")
