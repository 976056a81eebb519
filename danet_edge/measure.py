"""Measuring without fooling ourselves: latency statistics, process peak memory, GPU memory, the machine.

Used by ``bench`` (and by the benchmark scripts). Latency percentiles are linear-interpolated; host memory
is the growth of the process's resident set while an entry runs (sampled by a thread, freed pages handed
back to the OS first); GPU memory is torch's allocator peak for PyTorch, else the drop in free memory.
"""

from __future__ import annotations

import gc
import os
import platform
import re
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
    """Peak resident set size inside a ``with`` block, in bytes (``peak``), and its baseline."""

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


def machine_info() -> dict[str, Any]:
    """CPU, load, thread settings and library versions; torch and onnxruntime only when installed (a
    Jetson runtime may have neither)."""
    import importlib

    def optional(name: str) -> Any:
        try:
            return importlib.import_module(name)
        except ImportError:
            return None

    torch, onnxruntime = optional("torch"), optional("onnxruntime")
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
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads() if torch else None,
            "load_average_1_5_15min": load, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "torch": torch.__version__ if torch else None,
            "onnxruntime": onnxruntime.__version__ if onnxruntime else None, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name() if torch and torch.cuda.is_available() else None}


def gpu_reset() -> int | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return int(torch.cuda.mem_get_info()[0])


def gpu_peak(free_before: int | None, torch_backend: bool) -> float | None:
    if free_before is None:
        return None
    import torch

    torch.cuda.synchronize()
    if torch_backend:
        return torch.cuda.max_memory_allocated() / MiB
    return max(0, free_before - int(torch.cuda.mem_get_info()[0])) / MiB
