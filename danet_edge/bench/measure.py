"""Measuring without fooling ourselves: latency statistics, process peak memory, GPU memory, the machine.

Used by ``bench`` (and by the benchmark scripts). Timed runs go by count and by duration, as trtexec's do
(:func:`time_runs`), with the Jetson's power rails sampled during the timed window. Latency percentiles are
linear-interpolated; host memory is the growth of the process's resident set while an entry runs (sampled
by a thread, freed pages handed back to the OS first); GPU memory is torch's allocator peak for PyTorch,
else the drop in free memory.

Nothing here imports PyTorch: torch is used only when a PyTorch entry has loaded it; without it, GPU memory
is read through the CUDA API the TensorRT runner loaded (cuda-python or pycuda), else left out (None).
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import ConfigError

__all__ = ["latency_stats", "PeakRSS", "machine_info", "gpu_reset", "gpu_peak", "MiB", "time_runs", "TimedRuns",
           "MAX_TIMED_RUNS", "POWER_INTERVAL_S"]

MiB = 2.0**20
#: Most timed runs one entry takes when ``duration_s`` asks for more (unless ``runs`` asks for more still):
#: a 1 ms model in a long window would otherwise build a giant list.
MAX_TIMED_RUNS = 10_000
#: Power rail sampling interval during a timed window, in s.
POWER_INTERVAL_S = 0.05


def latency_stats(times_ms: Sequence[float]) -> dict[str, float]:
    """``mean, p50, p90, p99, min`` (ms) of per-run times (linear-interpolated percentiles)."""
    t = np.asarray(times_ms, np.float64)
    return {"mean": float(t.mean()), "p50": float(np.percentile(t, 50)), "p90": float(np.percentile(t, 90)),
            "p99": float(np.percentile(t, 99)), "min": float(t.min())}


# ---------------------------------------------------------------------------------- timed runs
@dataclass
class TimedRuns:
    """What :func:`time_runs` measured.

    Attributes:
        e2e_ms: wall time of each timed ``step()`` call (``time.perf_counter``), in ms.
        compute_ms: what each timed ``step()`` returned (the model alone, ms); empty when it returned None.
        warmup_runs: untimed runs done, those before the call included; warmup_s: their wall time (s).
        timed_s: the timed window, from the first timed run's start to the last one's end (s).
        capped: the run cap ended the window before ``duration_s``.
        power: the window's :class:`~danet_edge.bench.power.PowerReport` (``frames`` = runs x frames per run,
            ``duration_s`` = ``timed_s``), or one line saying why there is none
            (:data:`~danet_edge.bench.jetson.NOT_JETSON` off a Jetson).
    """

    e2e_ms: list[float]
    compute_ms: list[float]
    warmup_runs: int
    warmup_s: float
    timed_s: float
    capped: bool
    power: Any


def time_runs(step: Callable[[], float | None], *, warmup: int, warmup_s: float, runs: int, duration_s: float,
              frames_per_run: int = 1, warmup_done: int = 0, warmup_started: float | None = None,
              power_root: str | os.PathLike[str] | None = None) -> TimedRuns:
    """Warm up, then time ``step`` by count and by duration, as trtexec does (``--warmUp`` ms, ``--duration`` s,
    ``--iterations`` minimum; NVIDIA, "Performance Benchmarking",
    https://docs.nvidia.com/deeplearning/tensorrt/11.0.0/performance/benchmarking.html).

    Warm-up runs go on until both ``warmup`` runs and ``warmup_s`` seconds are done (counting ``warmup_done``
    runs already made since ``warmup_started``, a ``perf_counter`` value); timed runs until both ``runs`` runs
    and ``duration_s`` seconds are done, at most ``max(runs, MAX_TIMED_RUNS)`` runs.

    Args:
        step: one run; returns its compute time in ms (the model alone) or None.
        frames_per_run: images per run (the batch), for the power report's energy per frame.
        power_root: sample the Jetson's power rails (:class:`~danet_edge.bench.power.PowerSampler`, every
            :data:`POWER_INTERVAL_S` s, sysfs under this root, else tegrastats) during the timed window;
            None: not a Jetson, no sampling.
    """
    from .jetson import NOT_JETSON
    from .power import PowerSampler

    t0 = time.perf_counter() if warmup_started is None else warmup_started
    done = warmup_done
    while done < warmup or time.perf_counter() - t0 < warmup_s:
        step()
        done += 1
    warm = time.perf_counter() - t0
    cap = max(runs, MAX_TIMED_RUNS)
    e2e: list[float] = []
    compute: list[float] = []
    power: Any = NOT_JETSON
    with contextlib.ExitStack() as stack:
        sampler = None
        if power_root is not None:
            try:
                sampler = stack.enter_context(PowerSampler(POWER_INTERVAL_S, root=power_root))
            except ConfigError as e:  # a Jetson whose rails cannot be read (and no tegrastats): say so
                power = str(e)
        start = time.perf_counter()
        while len(e2e) < runs or (len(e2e) < cap and time.perf_counter() - start < duration_s):
            t = time.perf_counter()
            c = step()
            e2e.append((time.perf_counter() - t) * 1e3)
            if c is not None:
                compute.append(float(c))
        window = time.perf_counter() - start
    if sampler is not None:
        try:
            power = sampler.report(len(e2e) * frames_per_run, duration_s=window)
        except ConfigError as e:  # tegrastats printed nothing in a window shorter than its interval
            power = str(e)
    return TimedRuns(e2e, compute if len(compute) == len(e2e) else [], done, warm, window,
                     len(e2e) >= cap and window < duration_s, power)


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


def machine_info(jetson_root: str | os.PathLike[str] = "/") -> dict[str, Any]:
    """CPU, load, thread settings, library versions, the GPU and the Jetson facts, without importing PyTorch
    or ONNX Runtime.

    Versions come from the loaded module or the installed distribution's metadata (``onnxruntime`` or
    ``onnxruntime-gpu``; NVIDIA's torch wheel; TensorRT from JetPack's apt package or pip). ``torch_threads``
    and the GPU name through torch are given when torch is already imported (a PyTorch entry ran); on a
    Jetson the GPU is named by the board (``/proc/device-tree/model``). Values that cannot be read are None.

    Args:
        jetson_root: file-system root the Jetson facts are read under (a fake sysfs tree in tests).

    ``jetson``: :func:`danet_edge.bench.jetson.board_summary` (board, L4T / JetPack, nvpmodel mode, jetson_clocks,
    GPU / EMC / DLA clocks in MHz, power rails); on other machines each of those says ``"not a Jetson"``.
    """
    from .jetson import board_summary

    jetson = board_summary(jetson_root)
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
    gpu = gpu or (jetson["board"] if jetson["jetson"] else None)
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads() if torch else None,
            "load_average_1_5_15min": load, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "torch": _module_version("torch", "torch"),
            "onnxruntime": _module_version("onnxruntime", "onnxruntime", "onnxruntime-gpu"),
            "tensorrt": _module_version("tensorrt", "tensorrt", "tensorrt-cu12", "tensorrt-cu12-bindings"),
            "python": platform.python_version(), "gpu": gpu, "jetson": jetson}


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
