"""The runtime stage: one backend table (``backends.py``) and a backend per file (PyTorch, ONNX Runtime,
OpenVINO, TensorRT); ``backends.open_backend(path)`` imports neither tensorrt nor a CUDA API, the TensorRT
backend imports them when it is opened."""
