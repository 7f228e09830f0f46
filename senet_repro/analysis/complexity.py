"""Parameters and multiply-adds of the SE networks and their plain counterparts (SENet Table 2).

How it counts, and why:

* On our PyTorch modules, run once on the meta device at 1x3x224x224 (no
  memory, no arithmetic), with forward hooks. The plain counterpart is the same
  module with every SE module replaced by `nn.Identity` (`plain_counterpart`),
  i.e. exactly the Caffe network without its SE branches (for the SE-ResNets:
  the original Caffe ResNets with the stride on the first 1x1 convolution).
  Counting modules rather than prototxt layers gives a plain network one can
  also build and run; the tests check that the convolution and fully connected
  count of each SE network equals `prototxt.Net.multiply_adds` of the released
  prototxt to the multiply-add.
* `conv_fc_macs`: multiply-adds of the convolutions and fully connected layers
  (the convention of the ResNet and ResNeXt papers), including SE's two 1x1
  convolutions.
* `se_elementwise`: SE's squeeze (global average pooling, one add per element
  of the gated map) and scale (one multiply per element). The paper's SE rows
  include such element-wise work: SE's fully connected layers alone add only
  0.0025 GFLOPs to ResNet-50 (3.8605, which would print as 3.86), while the
  paper's SE-ResNet-50 is 3.87; with squeeze and scale it is 3.8715. So
  `gflops` = (conv_fc_macs + se_elementwise) / 1e9.
* BatchNorm, ReLU, pooling outside SE and the residual additions are not
  counted; the paper's plain ResNet-50 (3.86) matches our 3.858 without them.

Every row is within 0.3 % of the paper (`tests/test_complexity.py` holds them
to 1 %). The rest is the paper's rounding to two decimals and an unstated
counting rule: its plain ResNet-101/152 and ResNeXt-50/101 are 0.01-0.02
GFLOPs above our count, about what the residual additions (one add per output
element of each block: 0.009, 0.013, 0.006, 0.009 G) would add, but adding
those everywhere would put SE-ResNet-50 at 3.88, off its published 3.87, so no
single rule reproduces every printed digit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from senet_repro.models import get_model, list_models, weights_for
from senet_repro.models.blocks import SEModule
from senet_repro.models.weights import PaperFigure


@dataclass(frozen=True)
class Cost:
    """Parameters and operations of one network at one input size."""

    parameters: int
    conv_fc_macs: int
    se_elementwise: int

    @property
    def gflops(self) -> float:
        """Multiply-adds as the paper counts them, in billions."""
        return (self.conv_fc_macs + self.se_elementwise) / 1e9


@dataclass(frozen=True)
class Row:
    """One line of the table: our count beside the paper's."""

    network: str
    model: str
    se: bool
    cost: Cost
    paper: PaperFigure

    @property
    def gflops_difference(self) -> float | None:
        """(ours - paper) / paper, or None where the paper gives no figure."""
        return None if self.paper.gflops is None else self.cost.gflops / self.paper.gflops - 1

    @property
    def params_difference(self) -> float | None:
        if self.paper.params_m is None:
            return None
        return self.cost.parameters / 1e6 / self.paper.params_m - 1

    def as_dict(self) -> dict:
        return {
            "network": self.network,
            "model": self.model,
            "se": self.se,
            **asdict(self.cost),
            "gflops": self.cost.gflops,
            "paper_gflops": self.paper.gflops,
            "gflops_difference": self.gflops_difference,
            "paper_params_m": self.paper.params_m,
            "params_difference": self.params_difference,
            "source": self.paper.source,
        }


def plain_counterpart(model: nn.Module) -> nn.Module:
    """`model` with every SE module replaced by identity, in place: the network without SE."""
    found = [
        (parent, name)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, SEModule)
    ]
    for parent, name in found:
        setattr(parent, name, nn.Identity())
    return model


def count_cost(model: nn.Module, input_size: int = 224) -> Cost:
    """Parameters and operations of `model` on one input_size x input_size image.

    Runs on the meta device: shapes propagate, nothing is computed. `model` may
    live on any device; it is moved to meta for the count and not given back,
    so pass a throwaway copy (e.g. one built under `torch.device("meta")`).
    """
    model = model.to("meta").eval()
    counts = {"conv_fc": 0, "se": 0}

    def on_layer(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            counts["conv_fc"] += output[0].numel() * per_output
        elif isinstance(module, nn.Linear):
            counts["conv_fc"] += module.in_features * module.out_features

    def on_se(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        counts["se"] += 2 * inputs[0][0].numel()  # squeeze: adds; scale: multiplies

    handles = [
        module.register_forward_hook(on_se if isinstance(module, SEModule) else on_layer)
        for module in model.modules()
        if isinstance(module, (nn.Conv2d, nn.Linear, SEModule))
    ]
    try:
        with torch.no_grad():
            model(torch.empty(1, 3, input_size, input_size, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return Cost(
        parameters=sum(p.numel() for p in model.parameters()),
        conv_fc_macs=counts["conv_fc"],
        se_elementwise=counts["se"],
    )


def network_costs(model_name: str, input_size: int = 224) -> tuple[Cost, Cost]:
    """(SE network, plain counterpart) costs of one of our networks."""

    def build() -> nn.Module:
        with torch.device("meta"):
            return get_model(model_name)

    # Counted outside the device context, whose per-call dispatch would triple the time.
    return count_cost(build(), input_size), count_cost(plain_counterpart(build()), input_size)


def complexity_table() -> list[Row]:
    """Plain and SE rows for all seven networks at 224x224, beside the paper's figures."""
    rows = []
    for model in list_models():
        reference = weights_for(model).paper
        se_cost, plain_cost = network_costs(model)
        rows.append(Row(reference.plain_name, model, False, plain_cost, reference.plain))
        rows.append(Row(reference.se_name, model, True, se_cost, reference.se))
    return rows
