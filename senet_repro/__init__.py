"""senet-repro: the original Caffe SENet releases in PyTorch and ONNX, exactly.

Builds on `prototxt` (Caffe files) and `converter` (generic Caffe -> PyTorch/ONNX).
"""

__version__ = "0.1.0"
