"""Fold Caffe's BatchNorm + Scale pairs, for speed, without changing the numbers.

Caffe splits batch normalisation into BatchNorm (statistics only) and Scale
(gamma, beta). `fold_batchnorm(gm, "bn")` merges each pair into one affine
`nn.BatchNorm2d`; `"conv"` additionally folds that into the convolution before
it, removing the normalisation entirely. Rewrites are done on the fx graph and
folded weights computed in float64, so the result differs from the unfolded net
only by float32 round-off.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import fx, nn

from .modules import Affine

# What `fold_batchnorm` has done to a net (its `caffe_fold`), from least to most.
FOLD_LEVELS = ("none", "bn", "conv")


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _module(gm: fx.GraphModule, node: fx.Node | None) -> nn.Module | None:
    """The submodule a node calls; None for other nodes and ones already folded away."""
    if node is None or node.op != "call_module" or node.graph is not gm.graph:
        return None
    return getattr(gm, node.target, None)


def _drop(gm: fx.GraphModule, node: fx.Node) -> None:
    """Remove a single-input node, wiring its users to its input."""
    node.replace_all_uses_with(node.args[0])
    target = node.target
    gm.graph.erase_node(node)
    gm.delete_submodule(target)


def _is_channel_affine(module: nn.Module | None, channels: int) -> bool:
    return isinstance(module, Affine) and module.weight is not None and module.view == (1, channels, 1, 1)


@torch.no_grad()
def _merge_scale(gm: fx.GraphModule) -> int:
    merged = 0
    for node in list(gm.graph.nodes):
        norm = _module(gm, node)
        if not isinstance(norm, nn.BatchNorm2d) or norm.affine:
            continue
        scale_node = _only_user(node)
        scale = _module(gm, scale_node)
        if not _is_channel_affine(scale, norm.num_features) or scale_node.args != (node,):
            continue
        fused = nn.BatchNorm2d(norm.num_features, eps=norm.eps, affine=True).eval()
        fused.running_mean.copy_(norm.running_mean)
        fused.running_var.copy_(norm.running_var)
        fused.weight.copy_(scale.weight.reshape(-1))
        fused.bias.copy_(scale.bias.reshape(-1) if scale.bias is not None else 0)
        fused.requires_grad_(False)
        gm.add_submodule(node.target, fused)
        _drop(gm, scale_node)
        merged += 1
    return merged


@torch.no_grad()
def _merge_into_conv(gm: fx.GraphModule) -> int:
    merged = 0
    for node in list(gm.graph.nodes):
        conv = _module(gm, node)
        if not isinstance(conv, nn.Conv2d):
            continue
        norm_node = _only_user(node)
        norm = _module(gm, norm_node)
        if not isinstance(norm, nn.BatchNorm2d) or not norm.affine or norm_node.args != (node,):
            continue
        inv_std = (norm.running_var.double() + norm.eps).rsqrt()
        factor = norm.weight.double() * inv_std
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(factor)
        fused = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            bias=True,
        )
        fused.weight.copy_((conv.weight.double() * factor.view(-1, 1, 1, 1)).float())
        fused.bias.copy_(((bias - norm.running_mean.double()) * factor + norm.bias.double()).float())
        fused.requires_grad_(False)
        gm.add_submodule(node.target, fused)
        _drop(gm, norm_node)
        merged += 1
    return merged


def fold_batchnorm(gm: fx.GraphModule, into: Literal["bn", "conv"] = "bn") -> fx.GraphModule:
    """Fold BatchNorm+Scale pairs of a converted net in place; returns `gm`.

    into="bn": each pair becomes one `nn.BatchNorm2d(affine=True)`.
    into="conv": and each of those after a convolution is folded into it.
    Sets `gm.caffe_fold`, so that a saved state_dict can be loaded into the same structure.
    """
    if into not in ("bn", "conv"):
        raise ValueError(f"into must be 'bn' or 'conv', not {into!r}")
    _merge_scale(gm)
    if into == "conv":
        _merge_into_conv(gm)
    gm.graph.lint()
    gm.recompile()
    # Folding into the convolution subsumes folding into BatchNorm, whatever the order.
    gm.caffe_fold = max(into, getattr(gm, "caffe_fold", "none"), key=FOLD_LEVELS.index)
    return gm
