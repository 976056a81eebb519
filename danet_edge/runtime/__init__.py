"""Runtime: inference backends (PyTorch, ONNX Runtime, TensorRT) and the video/image pipeline.

``from danet_edge.runtime import open_backend`` imports neither tensorrt nor a CUDA API; the
TensorRT backend imports them when it is opened.
"""

from .backends import (BACKENDS, Backend, OnnxRuntimeBackend, Prediction, TensorRTBackend, TorchBackend,
                       open_backend, segment_frames)

__all__ = ["BACKENDS", "Backend", "OnnxRuntimeBackend", "Prediction", "TensorRTBackend", "TorchBackend",
           "open_backend", "segment_frames"]
