"""Host memory that plays the GPU's memory for the stand-ins, with use-after-free and size checks.

Every "device" allocation of the CUDA stand-ins (pycuda ``mem_alloc``, cuda-python ``cudaMalloc``)
is a ctypes buffer registered here under its address; the TensorRT stand-in reads inputs from and
writes outputs to the addresses given to ``set_tensor_address``, through :meth:`HostPool.array`,
which refuses an address that is not a live allocation or too small for the tensor.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field

import numpy as np

__all__ = ["HostPool", "POOL", "GpuState", "GPU"]


@dataclass
class GpuState:
    """The simulated machine: its GPU (or none), DLA cores, and a counter of streams."""

    present: bool = True
    trt_usable: bool = True  # False: CUDA answers, but libnvinfer cannot create a builder / runtime
    pycuda_broken: bool = False  # True: pycuda.autoinit fails (built against another CUDA) though a GPU is there
    name: str = "Stand-in GPU (host memory)"
    compute_capability: tuple[int, int] = (8, 7)
    dla_cores: int = 0
    streams: set[int] = field(default_factory=set)
    next_stream: int = 0x1000

    def new_stream(self) -> int:
        self.next_stream += 16
        self.streams.add(self.next_stream)
        return self.next_stream


GPU = GpuState()


class HostPool:
    """Registry of live "device" allocations: address -> ctypes buffer."""

    def __init__(self) -> None:
        self.blocks: dict[int, ctypes.Array] = {}
        self.freed: set[int] = set()

    def alloc(self, nbytes: int) -> int:
        if nbytes <= 0:
            raise ValueError(f"allocation of {nbytes} bytes")
        buf = (ctypes.c_ubyte * nbytes)()
        addr = ctypes.addressof(buf)
        self.blocks[addr] = buf
        self.freed.discard(addr)
        return addr

    def free(self, addr: int) -> None:
        if addr not in self.blocks:
            raise RuntimeError(f"free of 0x{addr:x}: {'double free' if addr in self.freed else 'not allocated'}")
        del self.blocks[addr]
        self.freed.add(addr)

    def array(self, addr: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A numpy view of ``shape``/``dtype`` at ``addr``; refuses dead or too-small allocations."""
        dtype = np.dtype(dtype)
        need = int(np.prod(shape)) * dtype.itemsize
        buf = self.blocks.get(int(addr))
        if buf is None:
            raise RuntimeError(f"address 0x{int(addr):x} is not a live device allocation"
                               f"{' (used after free)' if int(addr) in self.freed else ''}")
        if ctypes.sizeof(buf) < need:
            raise RuntimeError(f"allocation at 0x{int(addr):x} has {ctypes.sizeof(buf)} bytes, the tensor needs {need}")
        return np.frombuffer(buf, dtype=dtype, count=int(np.prod(shape))).reshape(shape)

    def live(self) -> int:
        return len(self.blocks)


POOL = HostPool()
