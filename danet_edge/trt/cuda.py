"""Device memory and streams for the TensorRT runner, behind one small adapter.

Two implementations of :class:`CudaApi`: pycuda (the design card's choice) and cuda-python's runtime
module (``cuda.bindings.runtime`` in 13.x, ``cuda.cudart`` in 12.x; TensorRT's own samples use it
since 10.14, and pycuda is hard to install on a Jetson). :func:`cuda_api` picks one through
``danet_edge.core.optional.import_cuda_backend``.

NOT EXECUTED on the development machine (no GPU, no CUDA Python package there); written against:
- pycuda: https://documen.tician.de/pycuda/driver.html (``mem_alloc``, ``pagelocked_empty``,
  ``memcpy_htod_async``, ``memcpy_dtoh_async``, ``Stream``, ``Device.compute_capability``, ``Event.record``,
  ``Event.synchronize``, ``Event.time_till`` in ms);
- cuda-python: https://nvidia.github.io/cuda-python/cuda-bindings/latest/module/runtime.html
  (``cudaMalloc``, ``cudaMallocHost``, ``cudaMemcpyAsync``, ``cudaStreamCreate``,
  ``cudaStreamSynchronize``, ``cudaFree``, ``cudaFreeHost``, ``cudaGetDeviceProperties``, ``cudaEventCreate``,
  ``cudaEventRecord``, ``cudaEventSynchronize``, ``cudaEventElapsedTime`` in ms, ``cudaEventDestroy``; every
  call returns a tuple whose first item is a ``cudaError_t``);
- the TensorRT 8.x -> 10.x Python migration guide (named-tensor buffer allocation pattern),
  https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-8x-to-10x-python-api-patterns.html
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.errors import EngineError

__all__ = ["CudaApi", "PyCudaApi", "CudaPythonApi", "HostDeviceBuffer", "cuda_api", "open_device", "DeviceInfo"]


@dataclass(frozen=True)
class DeviceInfo:
    """GPU name and compute capability, e.g. ``("Orin", (8, 7))``."""

    name: str
    compute_capability: tuple[int, int]

    @property
    def sm(self) -> str:
        return f"sm_{self.compute_capability[0]}{self.compute_capability[1]}"


@dataclass
class HostDeviceBuffer:
    """A pinned host array and a device buffer of the same size (bytes), allocated once.

    Attributes:
        host: page-locked ``np.ndarray`` with the tensor's shape and dtype.
        device: device pointer (int) for ``IExecutionContext.set_tensor_address``.
        nbytes: size in bytes.
    """

    host: np.ndarray
    device: int
    nbytes: int
    _handles: tuple[Any, ...] = ()


class CudaApi:
    """Minimal CUDA host API: stream, pinned + device buffers, async copies, synchronize, free, and the
    timing events that measure the engine alone."""

    name = "base"

    def device_info(self, index: int = 0) -> DeviceInfo:  # pragma: no cover - needs a GPU
        raise NotImplementedError

    def create_stream(self) -> Any:  # pragma: no cover
        raise NotImplementedError

    def stream_handle(self, stream: Any) -> int:  # pragma: no cover
        """The ``cudaStream_t`` as an int, for ``execute_async_v3``."""
        raise NotImplementedError

    def synchronize(self, stream: Any) -> None:  # pragma: no cover
        raise NotImplementedError

    def alloc(self, shape: tuple[int, ...], dtype: np.dtype) -> HostDeviceBuffer:  # pragma: no cover
        raise NotImplementedError

    def h2d_async(self, buf: HostDeviceBuffer, stream: Any) -> None:  # pragma: no cover
        raise NotImplementedError

    def d2h_async(self, buf: HostDeviceBuffer, stream: Any) -> None:  # pragma: no cover
        raise NotImplementedError

    def free(self, buf: HostDeviceBuffer) -> None:  # pragma: no cover
        raise NotImplementedError

    def destroy_stream(self, stream: Any) -> None:  # pragma: no cover
        pass

    def create_event(self) -> Any:  # pragma: no cover
        """A CUDA event with timing enabled (the default flags)."""
        raise NotImplementedError

    def record_event(self, event: Any, stream: Any) -> None:  # pragma: no cover
        """Capture the work queued on ``stream`` so far in ``event``."""
        raise NotImplementedError

    def elapsed_ms(self, start: Any, end: Any) -> float:  # pragma: no cover
        """GPU time between two recorded events in ms (waits for ``end`` to complete; about 0.5 us resolution)."""
        raise NotImplementedError

    def destroy_event(self, event: Any) -> None:  # pragma: no cover
        pass


class PyCudaApi(CudaApi):
    """pycuda implementation (``pycuda.autoinit`` has created a context on device 0)."""

    name = "pycuda"

    def __init__(self, driver: Any) -> None:
        self.cuda = driver

    def device_info(self, index: int = 0) -> DeviceInfo:
        dev = self.cuda.Device(index)
        return DeviceInfo(str(dev.name()), tuple(int(v) for v in dev.compute_capability()))

    def create_stream(self) -> Any:
        return self.cuda.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()

    def alloc(self, shape: tuple[int, ...], dtype: np.dtype) -> HostDeviceBuffer:
        host = self.cuda.pagelocked_empty(shape, dtype)
        dev = self.cuda.mem_alloc(max(1, host.nbytes))
        return HostDeviceBuffer(host, int(dev), host.nbytes, (dev,))

    def h2d_async(self, buf: HostDeviceBuffer, stream: Any) -> None:
        self.cuda.memcpy_htod_async(buf._handles[0], buf.host, stream)

    def d2h_async(self, buf: HostDeviceBuffer, stream: Any) -> None:
        self.cuda.memcpy_dtoh_async(buf.host, buf._handles[0], stream)

    def free(self, buf: HostDeviceBuffer) -> None:
        buf._handles[0].free()  # the pinned host array is freed with its last reference

    def create_event(self) -> Any:
        return self.cuda.Event()

    def record_event(self, event: Any, stream: Any) -> None:
        event.record(stream)

    def elapsed_ms(self, start: Any, end: Any) -> float:
        end.synchronize()
        return float(start.time_till(end))  # ms from start to end


class CudaPythonApi(CudaApi):
    """cuda-python runtime implementation (``cudaError_t`` checked on every call)."""

    name = "cuda-python"

    def __init__(self, cudart: Any) -> None:
        self.rt = cudart

    def _check(self, result: Any, what: str) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            raise EngineError(f"CUDA {what} failed: {getattr(err, 'name', err)}")
        return rest[0] if len(rest) == 1 else rest

    def device_info(self, index: int = 0) -> DeviceInfo:
        prop = self._check(self.rt.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
        name = prop.name.decode(errors="replace").rstrip("\x00") if isinstance(prop.name, bytes) else str(prop.name)
        return DeviceInfo(name, (int(prop.major), int(prop.minor)))

    def create_stream(self) -> Any:
        return self._check(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def synchronize(self, stream: Any) -> None:
        self._check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def alloc(self, shape: tuple[int, ...], dtype: np.dtype) -> HostDeviceBuffer:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        host_ptr = self._check(self.rt.cudaMallocHost(max(1, nbytes)), "cudaMallocHost")
        raw = (ctypes.c_byte * max(1, nbytes)).from_address(int(host_ptr))
        host = np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape))).reshape(shape)
        dev_ptr = self._check(self.rt.cudaMalloc(max(1, nbytes)), "cudaMalloc")
        return HostDeviceBuffer(host, int(dev_ptr), nbytes, (host_ptr, dev_ptr))

    def h2d_async(self, buf: HostDeviceBuffer, stream: Any) -> None:
        self._check(self.rt.cudaMemcpyAsync(buf.device, buf.host.ctypes.data, buf.nbytes,
                                            self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream),
                    "cudaMemcpyAsync H2D")

    def d2h_async(self, buf: HostDeviceBuffer, stream: Any) -> None:
        self._check(self.rt.cudaMemcpyAsync(buf.host.ctypes.data, buf.device, buf.nbytes,
                                            self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream),
                    "cudaMemcpyAsync D2H")

    def free(self, buf: HostDeviceBuffer) -> None:
        host_ptr, dev_ptr = buf._handles
        self._check(self.rt.cudaFree(dev_ptr), "cudaFree")
        self._check(self.rt.cudaFreeHost(host_ptr), "cudaFreeHost")

    def destroy_stream(self, stream: Any) -> None:
        self._check(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def create_event(self) -> Any:
        return self._check(self.rt.cudaEventCreate(), "cudaEventCreate")

    def record_event(self, event: Any, stream: Any) -> None:
        self._check(self.rt.cudaEventRecord(event, stream), "cudaEventRecord")

    def elapsed_ms(self, start: Any, end: Any) -> float:
        self._check(self.rt.cudaEventSynchronize(end), "cudaEventSynchronize")
        return float(self._check(self.rt.cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))

    def destroy_event(self, event: Any) -> None:
        self._check(self.rt.cudaEventDestroy(event), "cudaEventDestroy")


def cuda_api(prefer: str | None = None) -> CudaApi:
    """The CUDA adapter for this machine: pycuda if installed, else cuda-python.

    Raises:
        MissingDependencyError: neither is installed (the message says what to install).
    """
    from ..core.optional import import_cuda_backend

    name, module = import_cuda_backend(prefer)
    return PyCudaApi(module) if name == "pycuda" else CudaPythonApi(module)


def open_device(prefer: str | None = None, hint: str = "") -> tuple[CudaApi, DeviceInfo]:
    """The CUDA adapter and device 0, or one clear error (never the CUDA package's own traceback).

    Raises:
        MissingDependencyError: no CUDA Python API installed.
        EngineError: no usable GPU or driver (pycuda and cuda-python report it in their own ways);
            ``hint`` is appended to the message.
    """
    cuda = cuda_api(prefer)
    try:
        return cuda, cuda.device_info(0)
    except Exception as e:  # noqa: BLE001 - pycuda._driver.Error, cudaError_t via EngineError, ...
        raise EngineError(f"no usable CUDA GPU here ({e}){'; ' + hint if hint else ''}") from None
