"""Host-memory stand-ins for pycuda and cuda-python, with the call shapes of the real packages.

Served by an import hook (:func:`install`) so that importing ``pycuda.autoinit`` runs code, as the real
module does: with no GPU it raises ``pycuda._driver.RuntimeError`` (a ``pycuda._driver.Error``, not an
ImportError). cuda-python is served in its 12.x layout (``cuda.cudart``) or 13.x layout
(``cuda.bindings.runtime``); every call returns a tuple whose first item is a ``cudaError_t``
(``(err,)`` for calls without a value), and with no GPU every call answers ``cudaErrorNoDevice``.

Sources for the call shapes: pycuda's driver docs (https://documen.tician.de/pycuda/driver.html) and
cuda-python's runtime module docs (https://nvidia.github.io/cuda-python/cuda-bindings/latest/module/runtime.html).
"""

from __future__ import annotations

import enum
import importlib.abc
import importlib.machinery
import sys
import time
import types
from typing import Any

import numpy as np

from .hostmem import GPU, POOL

__all__ = ["install", "uninstall", "FakeCudaFinder"]


# ------------------------------------------------------------------------------------------------ pycuda
def _make_pycuda_driver_errors() -> types.ModuleType:
    m = types.ModuleType("pycuda._driver")

    class Error(Exception):
        pass

    class LogicError(Error):
        pass

    class RuntimeError_(Error):
        pass

    RuntimeError_.__name__ = "RuntimeError"
    m.Error, m.LogicError, m.RuntimeError = Error, LogicError, RuntimeError_
    return m


def _make_pycuda_driver(errors: types.ModuleType) -> types.ModuleType:
    m = types.ModuleType("pycuda.driver")
    m.Error, m.LogicError, m.RuntimeError = errors.Error, errors.LogicError, errors.RuntimeError
    state = {"init": False}

    def init(flags: int = 0) -> None:
        if not GPU.present:
            raise errors.RuntimeError("cuInit failed: no CUDA-capable device is detected")
        state["init"] = True

    def _need_init() -> None:
        if not state["init"]:
            raise errors.LogicError("cuInit has not been called")

    class Device:
        def __init__(self, ordinal: int) -> None:
            _need_init()
            if ordinal != 0:
                raise errors.LogicError("cuDeviceGet failed: invalid device ordinal")

        @staticmethod
        def count() -> int:
            _need_init()
            return 1

        def name(self) -> str:
            return GPU.name

        def compute_capability(self) -> tuple[int, int]:
            return GPU.compute_capability

        def make_context(self, flags: int = 0) -> Any:
            return types.SimpleNamespace(pop=lambda: None, detach=lambda: None)

    class Stream:
        def __init__(self, flags: int = 0) -> None:
            _need_init()
            self.handle = GPU.new_stream()

        def synchronize(self) -> None:
            if self.handle not in GPU.streams:
                raise errors.LogicError("cuStreamSynchronize failed: invalid resource handle")

        def __del__(self) -> None:
            GPU.streams.discard(getattr(self, "handle", None))

    class DeviceAllocation:
        def __init__(self, nbytes: int) -> None:
            self.ptr = POOL.alloc(nbytes)
            self.nbytes = nbytes

        def __int__(self) -> int:
            return self.ptr

        __index__ = __int__

        def free(self) -> None:
            POOL.free(self.ptr)

    class Event:
        """Timing event: the stand-in runs the engine on the host when it is enqueued, so the host clock
        at ``record`` is where the real event would sit on the stream."""

        def __init__(self, flags: int = 0) -> None:
            _need_init()
            self.t: float | None = None

        def record(self, stream: Any = None) -> "Event":
            _stream_ok(stream)
            self.t = time.perf_counter()
            return self

        def synchronize(self) -> "Event":
            if self.t is None:
                raise errors.LogicError("cuEventSynchronize failed: event not recorded")
            return self

        def time_till(self, end: "Event") -> float:
            if self.t is None or end.t is None:
                raise errors.LogicError("cuEventElapsedTime failed: invalid resource handle")
            return (end.t - self.t) * 1e3

    def mem_alloc(nbytes: int) -> DeviceAllocation:
        _need_init()
        if int(nbytes) <= 0:
            raise errors.LogicError("cuMemAlloc failed: invalid argument")
        return DeviceAllocation(int(nbytes))

    def pagelocked_empty(shape: Any, dtype: Any, order: str = "C", mem_flags: int = 0) -> np.ndarray:
        _need_init()
        return np.empty(shape, dtype, order=order)

    def _stream_ok(stream: Any) -> None:
        if stream is not None and (not isinstance(stream, Stream) or stream.handle not in GPU.streams):
            raise errors.LogicError("invalid stream")

    def memcpy_htod_async(dest: Any, src: np.ndarray, stream: Any = None) -> None:
        _stream_ok(stream)
        dst = POOL.array(int(dest), (src.nbytes,), np.uint8)
        dst[:] = np.frombuffer(np.ascontiguousarray(src).tobytes(), np.uint8)

    def memcpy_dtoh_async(dest: np.ndarray, src: Any, stream: Any = None) -> None:
        _stream_ok(stream)
        data = POOL.array(int(src), (dest.nbytes,), np.uint8)
        dest.reshape(-1).view(np.uint8)[:] = data

    m.init, m.Device, m.Stream, m.DeviceAllocation, m.Event = init, Device, Stream, DeviceAllocation, Event
    m.mem_alloc, m.pagelocked_empty = mem_alloc, pagelocked_empty
    m.memcpy_htod_async, m.memcpy_dtoh_async = memcpy_htod_async, memcpy_dtoh_async
    return m


# ------------------------------------------------------------------------------------------- cuda-python
class cudaError_t(enum.IntEnum):  # noqa: N801 - the real name
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorInvalidResourceHandle = 400


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


class cudaStream_t:  # noqa: N801 - an opaque handle object that int() turns into the address
    def __init__(self, value: int) -> None:
        self._v = value

    def __int__(self) -> int:
        return self._v

    def getPtr(self) -> int:  # noqa: N802
        return self._v


class cudaEvent_t(cudaStream_t):  # noqa: N801 - an opaque handle as well
    pass


def _make_runtime(name: str) -> types.ModuleType:
    m = types.ModuleType(name)
    m.cudaError_t, m.cudaMemcpyKind, m.cudaStream_t, m.cudaEvent_t = cudaError_t, cudaMemcpyKind, cudaStream_t, \
        cudaEvent_t
    ok = cudaError_t.cudaSuccess
    events: dict[int, float | None] = {}  # handle -> host time at record (the stand-in runs on the host)

    def gpu(fn: Any) -> Any:
        def wrapped(*args: Any) -> tuple:
            if not GPU.present:
                return (cudaError_t.cudaErrorNoDevice, None) if fn.__name__ not in _NO_VALUE else \
                    (cudaError_t.cudaErrorNoDevice,)
            return fn(*args)
        wrapped.__name__ = fn.__name__
        return wrapped

    def _addr(x: Any) -> int:
        return int(x)

    @gpu
    def cudaGetDeviceProperties(device: int) -> tuple:  # noqa: N802
        if device != 0:
            return (cudaError_t.cudaErrorInvalidValue, None)
        prop = types.SimpleNamespace(name=GPU.name.encode() + b"\x00" * 4, major=GPU.compute_capability[0],
                                     minor=GPU.compute_capability[1])
        return (ok, prop)

    @gpu
    def cudaStreamCreate() -> tuple:  # noqa: N802
        return (ok, cudaStream_t(GPU.new_stream()))

    @gpu
    def cudaStreamSynchronize(stream: Any) -> tuple:  # noqa: N802
        return (ok,) if int(stream) in GPU.streams else (cudaError_t.cudaErrorInvalidResourceHandle,)

    @gpu
    def cudaStreamDestroy(stream: Any) -> tuple:  # noqa: N802
        if int(stream) not in GPU.streams:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        GPU.streams.discard(int(stream))
        return (ok,)

    @gpu
    def cudaMalloc(size: int) -> tuple:  # noqa: N802
        return (ok, POOL.alloc(int(size))) if int(size) > 0 else (cudaError_t.cudaErrorInvalidValue, None)

    @gpu
    def cudaMallocHost(size: int) -> tuple:  # noqa: N802
        return cudaMalloc(size)

    @gpu
    def cudaFree(ptr: Any) -> tuple:  # noqa: N802
        try:
            POOL.free(_addr(ptr))
        except RuntimeError:
            return (cudaError_t.cudaErrorInvalidValue,)
        return (ok,)

    @gpu
    def cudaFreeHost(ptr: Any) -> tuple:  # noqa: N802
        return cudaFree(ptr)

    @gpu
    def cudaMemcpyAsync(dst: Any, src: Any, count: int, kind: Any, stream: Any) -> tuple:  # noqa: N802
        if int(stream) not in GPU.streams:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        if not isinstance(kind, cudaMemcpyKind):
            return (cudaError_t.cudaErrorInvalidValue,)
        import ctypes

        need_dev = {cudaMemcpyKind.cudaMemcpyHostToDevice: _addr(dst),
                    cudaMemcpyKind.cudaMemcpyDeviceToHost: _addr(src)}.get(kind)
        if need_dev is not None:
            POOL.array(need_dev, (int(count),), np.uint8)  # a live device allocation, large enough
        ctypes.memmove(_addr(dst), _addr(src), int(count))
        return (ok,)

    @gpu
    def cudaEventCreate() -> tuple:  # noqa: N802
        handle = 0x7E000000 + len(events) + 1
        events[handle] = None
        return (ok, cudaEvent_t(handle))

    @gpu
    def cudaEventRecord(event: Any, stream: Any) -> tuple:  # noqa: N802
        if not isinstance(event, cudaEvent_t) or int(event) not in events or int(stream) not in GPU.streams:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        events[int(event)] = time.perf_counter()
        return (ok,)

    @gpu
    def cudaEventSynchronize(event: Any) -> tuple:  # noqa: N802
        return (ok,) if events.get(int(event)) is not None else (cudaError_t.cudaErrorInvalidResourceHandle,)

    @gpu
    def cudaEventElapsedTime(start: Any, end: Any) -> tuple:  # noqa: N802
        t0, t1 = events.get(int(start)), events.get(int(end))
        if t0 is None or t1 is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle, None)
        return (ok, (t1 - t0) * 1e3)

    @gpu
    def cudaEventDestroy(event: Any) -> tuple:  # noqa: N802
        if int(event) not in events:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        del events[int(event)]
        return (ok,)

    for fn in (cudaGetDeviceProperties, cudaStreamCreate, cudaStreamSynchronize, cudaStreamDestroy, cudaMalloc,
               cudaMallocHost, cudaFree, cudaFreeHost, cudaMemcpyAsync, cudaEventCreate, cudaEventRecord,
               cudaEventSynchronize, cudaEventElapsedTime, cudaEventDestroy):
        setattr(m, fn.__name__, fn)
    return m


_NO_VALUE = {"cudaStreamSynchronize", "cudaStreamDestroy", "cudaFree", "cudaFreeHost", "cudaMemcpyAsync",
             "cudaEventRecord", "cudaEventSynchronize", "cudaEventDestroy"}


# ----------------------------------------------------------------------------------------------- finder
class FakeCudaFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves ``pycuda.*`` and ``cuda.*`` from the fakes above, for the layouts in ``packages``:
    ``"pycuda"``, ``"cuda-python-12"`` (``cuda.cudart``), ``"cuda-python-13"`` (``cuda.bindings.runtime``)."""

    def __init__(self, packages: set[str]) -> None:
        self.packages = set(packages)
        self._errors = _make_pycuda_driver_errors()

    def _serves(self, fullname: str) -> bool:
        if fullname.split(".")[0] == "pycuda":
            return "pycuda" in self.packages and fullname in ("pycuda", "pycuda.driver", "pycuda.autoinit",
                                                              "pycuda._driver")
        if "cuda-python-12" in self.packages and fullname in ("cuda", "cuda.cudart"):
            return True
        if "cuda-python-13" in self.packages and fullname in ("cuda", "cuda.bindings", "cuda.bindings.runtime"):
            return True
        return False

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if not self._serves(fullname):
            if fullname.split(".")[0] in ("pycuda", "cuda"):
                raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
            return None
        is_pkg = fullname in ("pycuda", "cuda", "cuda.bindings")
        return importlib.machinery.ModuleSpec(fullname, self, is_package=is_pkg)

    def create_module(self, spec: Any) -> types.ModuleType:
        name = spec.name
        if name == "pycuda._driver":
            return self._errors
        if name == "pycuda.driver":
            return _make_pycuda_driver(self._errors)
        if name in ("cuda.cudart", "cuda.bindings.runtime"):
            return _make_runtime(name)
        return types.ModuleType(name)

    def exec_module(self, module: types.ModuleType) -> None:
        if module.__name__ in ("pycuda", "cuda", "cuda.bindings"):
            module.__path__ = []
        if module.__name__ == "pycuda.autoinit":
            import pycuda.driver as drv

            if GPU.pycuda_broken:
                raise drv.RuntimeError("cuInit failed: CUDA driver version is insufficient for CUDA runtime version")
            drv.init()  # raises pycuda._driver.RuntimeError without a GPU, as the real module does
            module.device = drv.Device(0)
            module.context = module.device.make_context()


_FINDER: FakeCudaFinder | None = None


def uninstall() -> None:
    global _FINDER
    if _FINDER is not None and _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
    _FINDER = None
    for name in [n for n in sys.modules if n.split(".")[0] in ("pycuda", "cuda")]:
        del sys.modules[name]


def install(packages: set[str]) -> FakeCudaFinder:
    """Serve the given fake packages (replacing any earlier choice); returns the finder."""
    global _FINDER
    uninstall()
    _FINDER = FakeCudaFinder(packages)
    sys.meta_path.insert(0, _FINDER)
    return _FINDER
