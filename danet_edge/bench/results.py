"""What bench measured: :class:`BenchEntry` per timed configuration and the :class:`BenchReport`; the runner
(``run.py``) makes them, the plot (``plot.py``) and the CLI render them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


__all__ = ["BenchEntry", "BenchReport"]


@dataclass
class BenchEntry:
    """One timed configuration. Times in ms per batch, memory in MiB, throughput in images/s (FPS), power in W,
    energy in mJ per image.

    ``latency_*`` is end-to-end (``timing`` says how), ``compute_*`` the model alone inside the same runs
    (``compute_timing`` says how; ``compute_*`` None and ``compute_timing`` "not measured ..." where the
    backend has no compute hook). ``runs`` and ``warmup_runs``
    are the runs done, ``timed_s`` the timed window in s. Power (a Jetson; each field says ``"not a Jetson"``
    elsewhere, or why there is no figure): ``power_rails_w`` average W per rail, ``power_total_w`` the
    module's total (``power_total_source``: the input rail, or the sum of the rails), ``energy_per_frame_mj``
    = total W x ``timed_s`` / (runs x batch) x 1000, ``fps_per_w`` = (runs x batch / ``timed_s``) / total W,
    ``power_source`` (``sysfs`` or ``tegrastats``) and ``power_samples`` (readings averaged).
    """

    name: str
    path: str | None
    backend: str
    precision: str
    image_size: list[int]
    batch: int
    runs: int
    setup_s: float | None = None
    latency_mean_ms: float | None = None
    latency_p50_ms: float | None = None
    latency_p90_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_min_ms: float | None = None
    throughput_fps: float | None = None
    host_peak_mib: float | None = None
    gpu_peak_mib: float | None = None
    speedup_vs_reference: float | None = None
    speedup_baseline: str | None = None  # the entry speedup_vs_reference divides by (the reference, or an FP32 artifact)
    is_reference: bool = False
    timing: str = "end-to-end: perf_counter around predict() (uint8 host frames in, labels out)"
    agreement: float | None = None
    miou: float | None = None
    skipped: str | None = None
    provider: str = ""  # what it really ran on: "ONNX Runtime 1.31.1 CPUExecutionProvider", "TensorRT 10.3.0 on Orin"
    warmup_runs: int | None = None
    timed_s: float | None = None
    compute_mean_ms: float | None = None
    compute_p50_ms: float | None = None
    compute_p99_ms: float | None = None
    compute_timing: str | None = None
    power_source: str | None = None
    power_samples: int | str | None = None
    power_rails_w: dict[str, float] | str | None = None
    power_total_w: float | str | None = None
    power_total_source: str | None = None
    energy_per_frame_mj: float | str | None = None
    fps_per_w: float | str | None = None
    attention: dict[str, Any] | None = None  # PAM's form and, for an engine, whether TensorRT fused it
    quantization: str | None = None  # an INT8 artifact's scales: "PTQ" (calibrated) or "QAT" (learned)


@dataclass
class BenchReport:
    """All entries plus the machine they ran on; ``notes`` say how to read them (e.g. what the speed-up is
    relative to), ``warnings`` what may distort them."""

    machine: dict[str, Any]
    config: dict[str, Any]
    entries: list[BenchEntry] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    json_path: str | None = None
    plot_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready dicts and lists."""
        return asdict(self)
