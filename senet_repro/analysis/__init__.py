"""Analyses of the SE networks that reproduce the SENet paper's tables."""

from .complexity import (
    REFERENCES,
    Cost,
    PaperFigure,
    Reference,
    Row,
    complexity_table,
    count_cost,
    network_costs,
    plain_counterpart,
)

__all__ = [
    "REFERENCES",
    "Cost",
    "PaperFigure",
    "Reference",
    "Row",
    "complexity_table",
    "count_cost",
    "network_costs",
    "plain_counterpart",
]
