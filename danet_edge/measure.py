"""Measuring without fooling ourselves: latency statistics, process peak memory, GPU memory, the machine.

Used by ``bench`` (and by the benchmark scripts). Latency percentiles are linear-interpolated; host memory
is the growth of the process's resident set while an entry runs (sampled by a thread, freed pages handed
back to the OS first); GPU memory is torch's allocator peak for PyTorch, else the drop in free memory.

Nothing here imports PyTorch: torch is used only when a PyTorch entry has loaded it; without it, GPU memory
is read through the CUDA API the TensorRT runner loaded (cuda-python or pycuda), else left out (None).
"""

from __future__ import annotations

import gc
import os
import platform
import re
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["latency_stats", "PeakRSS", "machine_info", "gpu_reset", "gpu_peak", "MiB"]

MiB = 2.0**20


def latency_stats(times_ms: Sequence[float]) -> dict[str, float]:
    """``mean, p50, p90, p99, min`` (ms) of per-run times (linear-interpolated percentiles)."""
    t = np.asarray(times_ms, np.float64)
    return {"mean": float(t.mean()), "p50": float(np.percentile(t, 50)), "p90": float(np.percentile(t, 90)),
            "p99": float(np.percentile(t, 99)), "min": float(t.min())}


# ---------------------------------------------------------------------------------- memory
def rss() -> int:
    """This process's resident set size in bytes (psutil)."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``), so that the
    next entry's RSS growth is its own and not hidden by memory an earlier entry freed."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRSS:
    """Peak resident set size inside a ``with`` block, in bytes (``peak``), its baseline (``base``) and the
    growth in MiB (``delta_mib``): Linux ``VmHWM`` reset through ``/proc/self/clear_refs``, elsewhere a
    psutil sampling thread."""

    _status = Path("/proc/self/status")

    def __enter__(self) -> "PeakRSS":
        release_freed_memory()
        self.base = rss()
        self.peak = self.base
        self._hwm = False
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            self._hwm = self._read_hwm() is not None
        except OSError:
            pass
        if not self._hwm:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _read_hwm(self) -> int | None:
        try:
            m = re.search(r"VmHWM:\s+(\d+)\s*kB", self._status.read_text())
        except OSError:
            return None
        return int(m.group(1)) * 1024 if m else None

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc: object) -> None:
        if self._hwm:
            self.peak = max(self.peak, self._read_hwm() or 0)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss())

    @property
    def delta_mib(self) -> float:
        return max(0, self.peak - self.base) / MiB


def _dist_version(*names: str) -> str | None:
    """Installed version of the first of ``names`` (distributions) found, read from its metadata (no import)."""
    from importlib import metadata

    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _module_version(module: str, *dists: str) -> str | None:
    """``module.__version__`` when already imported, else the distribution's metadata: reporting a version
    never imports PyTorch or ONNX Runtime."""
    mod = sys.modules.get(module)
    if mod is not None and getattr(mod, "__version__", None):
        return str(mod.__version__)
    return _dist_version(*dists)


def _loaded_torch() -> Any:
    """``torch`` if this process has imported it already (a PyTorch entry was timed), else None."""
    return sys.modules.get("torch")


def _jetson_model() -> str | None:
    """The board name on an NVIDIA Jetson (``/proc/device-tree/model``), else None."""
    try:
        model = Path("/proc/device-tree/model").read_bytes().decode("utf-8", "replace").strip("\x00 \n")
    except OSError:
        return None
    return model if "jetson" in model.lower() or "nvidia" in model.lower() else None


def machine_info() -> dict[str, Any]:
    """CPU, load, thread settings, library versions and the GPU, without importing PyTorch or ONNX Runtime.

    Versions come from the loaded module or the installed distribution's metadata (``onnxruntime`` or
    ``onnxruntime-gpu``; NVIDIA's torch wheel; TensorRT from JetPack's apt package or pip). ``torch_threads``
    and the GPU name through torch are given when torch is already imported (a PyTorch entry ran); on a
    Jetson the GPU is named by the board (``/proc/device-tree/model``). Values that cannot be read are None.
    """
    torch = _loaded_torch()
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    gpu = None
    if torch is not None:
        try:
            gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
        except Exception:  # noqa: BLE001 - a broken CUDA set-up must not stop a benchmark
            gpu = None
    gpu = gpu or _jetson_model()
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads() if torch else None,
            "load_average_1_5_15min": load, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "torch": _module_version("torch", "torch"),
            "onnxruntime": _module_version("onnxruntime", "onnxruntime", "onnxruntime-gpu"),
            "tensorrt": _module_version("tensorrt", "tensorrt", "tensorrt-cu12", "tensorrt-cu12-bindings"),
            "python": platform.python_version(), "gpu": gpu}


def _free_gpu_bytes() -> int | None:
    """Free device memory in bytes through an API this process has loaded already, else None.

    torch (``torch.cuda.mem_get_info``) when imported and CUDA is there; else cuda-python's
    ``cudaMemGetInfo`` or pycuda's ``mem_get_info`` when the TensorRT runner has loaded them. Nothing is
    imported here: a device runtime without torch reads GPU memory through the CUDA API TensorRT uses.
    """
    torch = _loaded_torch()
    if torch is not None:
        try:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                return int(torch.cuda.mem_get_info()[0])
        except Exception:  # noqa: BLE001
            pass
        return None
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        rt = sys.modules.get(name)
        if rt is not None:
            try:
                err, free, _total = rt.cudaMemGetInfo()
                if err == rt.cudaError_t.cudaSuccess:
                    return int(free)
            except Exception:  # noqa: BLE001
                pass
    driver = sys.modules.get("pycuda.driver")
    if driver is not None and "pycuda.autoinit" in sys.modules:
        try:
            return int(driver.mem_get_info()[0])
        except Exception:  # noqa: BLE001
            pass
    return None


def gpu_reset() -> int | None:
    """Reset torch's peak-memory counter (when torch is loaded) and return the free device memory in bytes,
    the baseline of :func:`gpu_peak`; None when no loaded API can read it (then no GPU figure is given)."""
    torch = _loaded_torch()
    if torch is not None:
        try:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
        except Exception:  # noqa: BLE001
            pass
    return _free_gpu_bytes()


def gpu_peak(free_before: int | None, torch_backend: bool) -> float | None:
    """GPU memory an entry used, in MiB: torch's allocator peak for a PyTorch entry, else the drop of free
    device memory since :func:`gpu_reset` returned ``free_before``; None when it could not be read."""
    if free_before is None:
        return None
    torch = _loaded_torch()
    if torch_backend and torch is not None:
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / MiB
    free = _free_gpu_bytes()
    return None if free is None else max(0, free_before - free) / MiB
