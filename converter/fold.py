"""Fold Caffe's BatchNorm + Scale pairs, for speed, without changing the numbers.

Caffe splits batch normalisation into BatchNorm (statistics only) and Scale
(gamma, beta). `fold_batchnorm(gm, "bn")` merges each pair into one affine
`nn.BatchNorm2d`; `"conv"` additionally folds that into the convolution before
it, removing the normalisation entirely. Rewrites are done on the fx graph and
folded weights computed in float64, so the result differs from the unfolded net
only by float32 round-off.

`fast_eval(module)` is the fastest exact eval form of a converted graph or of any
module torch.fx can trace (the clean SENets): everything folded into the
convolutions, in channels_last memory format (oneDNN and cuDNN then skip their
per-layer layout reorders). bench/results/convert.md measures what each step buys.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from prototxt import FoldLevel

from .graph import CaffeGraphModule
from .modules import Affine, pair, running_statistics


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _target(node: fx.Node) -> str:
    """The submodule path of a call_module node (fx types targets loosely)."""
    if not isinstance(node.target, str):
        raise TypeError(f"node {node.name} calls {node.target!r}, not a submodule")
    return node.target


def _module(gm: fx.GraphModule, node: fx.Node | None) -> nn.Module | None:
    """The submodule a node calls; None for other nodes and ones already folded away."""
    if node is None or node.op != "call_module" or node.graph is not gm.graph:
        return None
    try:
        return gm.get_submodule(_target(node))  # dotted in a traced nn.Module
    except AttributeError:
        return None


def _drop(gm: fx.GraphModule, node: fx.Node) -> None:
    """Remove a single-input node, wiring its users to its input."""
    source = node.args[0]
    if not isinstance(source, fx.Node):
        raise TypeError(f"node {node.name} has no input node to wire its users to")
    node.replace_all_uses_with(source)
    target = _target(node)
    gm.graph.erase_node(node)
    gm.delete_submodule(target)


@torch.no_grad()
def _merge_scale(gm: fx.GraphModule) -> int:
    merged = 0
    for node in list(gm.graph.nodes):
        norm = _module(gm, node)
        if not isinstance(norm, nn.BatchNorm2d) or norm.affine:
            continue
        scale_node = _only_user(node)
        scale = _module(gm, scale_node)
        if scale_node is None or not isinstance(scale, Affine) or scale.weight is None:
            continue
        if scale.view != (1, norm.num_features, 1, 1) or scale_node.args != (node,):
            continue
        fused = nn.BatchNorm2d(norm.num_features, eps=norm.eps, affine=True).eval()
        mean, var = running_statistics(norm)
        fused_mean, fused_var = running_statistics(fused)
        fused_mean.copy_(mean)
        fused_var.copy_(var)
        fused.weight.copy_(scale.weight.reshape(-1))
        if scale.bias is not None:
            fused.bias.copy_(scale.bias.reshape(-1))
        else:
            fused.bias.zero_()
        fused.requires_grad_(False)
        gm.add_submodule(_target(node), fused)
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
        if norm_node is None or not isinstance(norm, nn.BatchNorm2d) or not norm.affine:
            continue
        if norm_node.args != (node,) or isinstance(conv.padding, str):
            continue
        mean, var = running_statistics(norm)
        inv_std = (var.double() + norm.eps).rsqrt()
        factor = norm.weight.double() * inv_std
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(factor)
        fused = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            pair(conv.kernel_size),
            pair(conv.stride),
            pair(conv.padding),
            pair(conv.dilation),
            conv.groups,
            bias=True,
        )
        fused.weight.copy_((conv.weight.double() * factor.view(-1, 1, 1, 1)).float())
        fused.bias = nn.Parameter(((bias - mean.double()) * factor + norm.bias.double()).float())
        fused.requires_grad_(False)
        gm.add_submodule(_target(node), fused)
        _drop(gm, norm_node)
        merged += 1
    return merged


def fold_batchnorm(gm: CaffeGraphModule, into: FoldLevel | str = FoldLevel.BN) -> CaffeGraphModule:
    """Fold BatchNorm+Scale pairs of a converted net in place; returns `gm`.

    into="bn": each pair becomes one `nn.BatchNorm2d(affine=True)`.
    into="conv": and each of those after a convolution is folded into it.
    Sets `gm.caffe_fold`, so that a saved state_dict can be loaded into the same structure.
    """
    if into not in (FoldLevel.BN, FoldLevel.CONV):
        raise ValueError(f"into must be 'bn' or 'conv', not {into!r}")
    _merge_scale(gm)
    if into == FoldLevel.CONV:
        _merge_into_conv(gm)
    gm.graph.lint()
    gm.recompile()
    # Folding into the convolution subsumes folding into BatchNorm, whatever the order.
    levels = list(FoldLevel)
    gm.caffe_fold = max(FoldLevel(into), FoldLevel(gm.caffe_fold), key=levels.index)
    return gm


def fast_eval(module: nn.Module, *, channels_last: bool = True) -> fx.GraphModule:
    """`module` in eval mode with every BatchNorm (and Caffe Scale) folded into the convolution
    before it, in channels_last memory format; give it channels_last inputs for full speed.

    A converted net is folded in place (`fold_batchnorm(gm, "conv")`); any other module is
    traced with torch.fx first and left unchanged (the traced copy shares what it does not fold).
    """
    module.eval()
    if isinstance(module, CaffeGraphModule):
        graph: fx.GraphModule = fold_batchnorm(module, FoldLevel.CONV)
    else:
        graph = fx.symbolic_trace(module)
        _merge_into_conv(graph)
        graph.graph.lint()
        graph.recompile()
    if channels_last:
        graph.to(memory_format=torch.channels_last)
    return graph.eval()
