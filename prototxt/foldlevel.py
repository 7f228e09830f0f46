"""How far a converted net's Caffe BatchNorm + Scale pairs are folded (torch-free, for the CLIs)."""

from enum import StrEnum


class FoldLevel(StrEnum):
    """What `fold_batchnorm` has done to a net (its `caffe_fold`), from least to most."""

    NONE = "none"  # Caffe's BatchNorm + Scale as they are
    BN = "bn"  # each pair one affine BatchNorm2d
    CONV = "conv"  # and each of those after a convolution folded into it
