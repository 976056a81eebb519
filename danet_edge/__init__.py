"""danet-edge: train DANet, export it to static-shape ONNX (FP32, FP16, INT8 Q/DQ), build TensorRT
engines, and check accuracy and speed against the PyTorch reference.

Importing this package imports neither tensorrt, pycuda, cuda-python nor modelopt
(see ``danet_edge.core.optional``).
"""

__version__ = "0.1.0"
