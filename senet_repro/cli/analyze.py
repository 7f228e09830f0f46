"""senet-analyze: reproduce the SENet paper's analyses on the converted networks."""

from __future__ import annotations

import click

from .analyze_complexity import complexity
from .analyze_excitations import excitations


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Analyses from the SENet paper: the cost table and the excitation study."""


main.add_command(complexity)
main.add_command(excitations)
