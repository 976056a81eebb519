"""Run a serialized TensorRT engine with the TensorRT 10+ named-tensor API.

Buffers (pinned host + device, one per I/O tensor), the CUDA stream and two timing events are allocated
once at open through :mod:`danet_edge.trt.cuda`; ``infer`` only copies and enqueues (no allocation per
frame), and records the events around ``execute_async_v3`` so that ``compute_ms`` is the engine alone on
the GPU, apart from the copies (what trtexec reports as "GPU Compute Time").

NOT EXECUTED on the development machine (TensorRT cannot be installed there, no GPU). Written against:
- ``tensorrt.Runtime``, ``Runtime.DLA_core``, ``deserialize_cuda_engine``:
  https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Runtime.html
- ``ICudaEngine.num_io_tensors / get_tensor_name / get_tensor_mode / get_tensor_shape / get_tensor_dtype``,
  ``create_execution_context``: .../python-api/infer/Core/Engine.html
- ``IExecutionContext.set_tensor_address`` and ``execute_async_v3(stream_handle) -> bool``:
  .../python-api/infer/Core/ExecutionContext.html
- CUDA events for timing: CUDA C++ Best Practices Guide, "Using CUDA GPU Timers",
  https://docs.nvidia.com/cuda/cuda-c-best-practices-guide/index.html#using-cuda-gpu-timers
- buffer pattern: "Migrating Python Code from TensorRT 8.x to 10.x",
  https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-8x-to-10x-python-api-patterns.html
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..core.optional import import_tensorrt
from ..trt.inspector import check_engine_compat
from ..core.errors import EngineError
from ..core.manifest import Manifest
from ..trt.cuda import open_device
from ..core.io_contract import TensorSpec, check_io
from ..trt.inspector import trt_dtype_name

__all__ = ["TrtRunner"]


class TrtRunner:
    """Deserialize ``path`` and run it on one CUDA stream.

    Raises:
        MissingDependencyError: tensorrt or a CUDA API is missing.
        EngineError: engine for another GPU / TensorRT version, or not deserializable.
        ManifestError: engine I/O tensors differ from the manifest.
    """

    def __init__(self, path: Path, manifest: Manifest, cuda_backend: str | None = None) -> None:
        trt = import_tensorrt()
        self.cuda, device = open_device(cuda_backend)
        check_engine_compat(manifest.tensorrt, trt.__version__, device.compute_capability, device.name)
        self.manifest = manifest
        self._buffers: dict[str, Any] = {}
        self.stream = None
        self.logger = trt.Logger(trt.Logger.WARNING)
        try:
            self.runtime = trt.Runtime(self.logger)
        except TypeError as e:  # pybind11: libnvinfer returned no runtime
            raise EngineError(f"TensorRT could not create a runtime ({e}): is the GPU visible and the driver "
                              "loaded?") from None
        dla_core = (manifest.tensorrt or {}).get("dla_core")
        if dla_core is not None:
            self.runtime.DLA_core = int(dla_core)
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise EngineError(f"{path}: TensorRT {trt.__version__} could not deserialize this engine "
                              "(corrupt file, or built with another TensorRT): rebuild it on this device")
        self.context = self.engine.create_execution_context()
        self.stream = self.cuda.create_stream()
        self.input_name = self.output_name = None
        self._events: tuple[Any, Any] | None = None
        #: GPU time of the last :meth:`infer`'s ``execute_async_v3`` alone, in ms (CUDA events on the stream).
        self.compute_ms = 0.0
        try:
            self._events = (self.cuda.create_event(), self.cuda.create_event())
            self._bind(path, trt, manifest)
        except BaseException:
            self.close()  # free what was allocated before the failure
            raise

    def _bind(self, path: Path, trt: Any, manifest: Manifest) -> None:
        """Check the engine's I/O against the manifest, then allocate one host + device buffer per I/O tensor and
        give its address to the context."""
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        modes = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        specs = {n: TensorSpec.of(n, list(self.engine.get_tensor_shape(n)),
                                  trt_dtype_name(trt, self.engine.get_tensor_dtype(n))) for n in names}
        check_io(path, manifest, [specs[n] for n in names if modes[n]], [specs[n] for n in names if not modes[n]],
                 kind="engine")
        for name in names:
            is_input = modes[name]
            shape, dtype = specs[name].shape, specs[name].dtype
            if dtype is None:  # BF16, FP8, INT4...: no numpy type
                raise EngineError(f"{path}: tensor {name!r} is {self.engine.get_tensor_dtype(name)}, which has no "
                                  "numpy type: export the graph with FP32 (or uint8 / int) inputs and outputs")
            buf = self.cuda.alloc(shape, np.dtype(dtype))
            self._buffers[name] = buf
            if not self.context.set_tensor_address(name, buf.device):
                raise EngineError(f"{path}: TensorRT refused the buffer address of tensor {name!r}")
            if is_input:
                self.input_name = name
            else:
                self.output_name = name

    def infer(self, x: np.ndarray) -> np.ndarray:
        """``x``: the engine input (manifest shape; cast to the engine's dtype). Returns a copy of the output."""
        inp, out = self._buffers[self.input_name], self._buffers[self.output_name]
        start, end = self._events
        np.copyto(inp.host, x, casting="unsafe")
        self.cuda.h2d_async(inp, self.stream)
        self.cuda.record_event(start, self.stream)
        if not self.context.execute_async_v3(self.cuda.stream_handle(self.stream)):
            raise EngineError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        self.cuda.record_event(end, self.stream)
        self.cuda.d2h_async(out, self.stream)
        self.cuda.synchronize(self.stream)
        self.compute_ms = self.cuda.elapsed_ms(start, end)
        return out.host.copy()

    def close(self) -> None:
        """Free device buffers and the stream (idempotent)."""
        for buf in self._buffers.values():
            self.cuda.free(buf)
        self._buffers = {}
        for event in self._events or ():
            self.cuda.destroy_event(event)
        self._events = None
        if self.stream is not None:
            self.cuda.destroy_stream(self.stream)
            self.stream = None
        self.context = self.engine = None
