"""Analyses of the SE networks that reproduce the SENet paper's tables."""

from .complexity import (
    Cost,
    Row,
    complexity_table,
    count_cost,
    network_costs,
    plain_counterpart,
)

__all__ = [
    "Cost",
    "Row",
    "complexity_table",
    "count_cost",
    "network_costs",
    "plain_counterpart",
]
