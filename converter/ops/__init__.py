"""Converters for each Caffe layer type; importing this package registers them."""

from . import activation, arithmetic, conv, norm, pooling, ssd, tensor  # noqa: F401
