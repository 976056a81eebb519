"""Runtime: inference backends (PyTorch, ONNX Runtime, TensorRT) and the video/image pipeline.

``from danet_edge.runtime import open_backend`` imports neither tensorrt nor a CUDA API; the
TensorRT backend imports them when it is opened.
"""

from .backends import BACKEND_TABLE, BACKENDS, Backend, BackendSpec, Prediction, open_backend, register_backend, segment_frames

__all__ = ["BACKEND_TABLE", "BACKENDS", "Backend", "BackendSpec", "Prediction", "open_backend", "register_backend",
           "segment_frames"]
