"""``import tensorrt`` -> the real ``tensorrt_bindings`` (what a TensorRT install provides under that name)."""

import sys

import tensorrt_bindings

sys.modules[__name__] = tensorrt_bindings
