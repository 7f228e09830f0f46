"""Rewrite SENet's custom Axpy layers into layers every Caffe understands.

Stock BVLC Caffe has no Axpy, and OpenCV 4.x's importer maps Axpy itself with
the operands swapped (it computes bottom[0] * bottom[2] + bottom[1]), so the SE
nets give wrong numbers there without any error. Reshape of the gate to N x C,
`Scale` with two bottoms (axis 0), then `Eltwise` SUM computes the same a * x + y
everywhere: the construction SE-BN-Inception itself uses (Caffe's two-bottom
Scale needs the gate's shape to equal leading axes of x, hence the Reshape).
Blob names are kept and no new layer has blobs, so the original caffemodel loads
unchanged.
"""

from __future__ import annotations

from . import caffe_pb2
from .errors import NetDefinitionError


def portable_net(net: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    """A copy of `net` with every Axpy(a, x, y) as Reshape(a), Scale(x, a), Eltwise(+ y)."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    for layer in net.layer:
        if layer.type != "Axpy":
            out.layer.add().CopyFrom(layer)
            continue
        if len(layer.bottom) != 3 or len(layer.top) != 1:
            raise NetDefinitionError("Axpy takes 3 bottoms and 1 top", layer=layer.name)
        gate, x, y = layer.bottom
        top = layer.top[0]
        flat_gate, scaled = f"{layer.name}/gate_reshape", f"{layer.name}/scaled"
        reshape = out.layer.add(name=flat_gate, type="Reshape", bottom=[gate], top=[flat_gate])
        reshape.reshape_param.shape.dim.extend([0, 0])
        scale = out.layer.add(name=scaled, type="Scale", bottom=[x, flat_gate], top=[scaled])
        scale.scale_param.axis = 0
        add = out.layer.add(name=layer.name, type="Eltwise", bottom=[scaled, y], top=[top])
        add.eltwise_param.operation = caffe_pb2.EltwiseParameter.SUM
    return out
