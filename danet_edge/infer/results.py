"""What infer measured: :class:`InferSummary` (throughput, latency per stage, frames decoded and dropped, decoder,
encoder) and its plain-text lines; the pipeline makes it, the CLI renders it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..core.errors import DataError
from .config import DEFAULT_QUEUE

__all__ = ['InferSummary', 'SourceBroken', 'summary_lines']


class SourceBroken(DataError):
    """The source broke off mid-way; ``summary`` describes the frames processed before the break."""

    def __init__(self, message: str, summary: "InferSummary") -> None:
        super().__init__(message)
        self.summary = summary


@dataclass
class InferSummary:
    """What one run did. Times in ms, throughput in FPS.

    Attributes:
        frames: frames written / processed. fps: frames / wall time (end-to-end throughput).
        latency_p50_ms, latency_p99_ms: end-to-end latency of a frame, from the start of its decode to the end of
            its encode (the same as ``end_to_end``'s, put first).
        decoded: frames read from the source; dropped: of those, replaced by a newer frame before the model
            saw them (``InferConfig.drop_frames``); ``frames + dropped == decoded`` for a run that finished.
        queue_size, threads, low_latency: what ran (threads: ONNX Runtime intra-op threads; None for a backend
            without that option).
        decoder: what decoded (``FrameSource.decoder``). encoder: the video writer that ran
            (``VideoEncoder.label``), encoder_note why a better one did not (None when none was passed over),
            codec: the fourcc OpenCV reads back from the written video (FFmpeg calls mp4v's ``FMP4``).
        stages: per stage ``{"p50_ms", "p99_ms", "mean_ms"}``, per frame (infer: batch time / batch size).
        end_to_end: latency from decode start to encode end of each frame, ``{"p50_ms", "p99_ms", "mean_ms"}``.
        broken: None, or why the source stopped early.
        outputs: paths written (``video``, ``labels``, ``summary``).
    """

    model: str
    backend: str
    source: str
    frames: int = 0
    wall_s: float = 0.0
    fps: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    decoded: int = 0
    dropped: int = 0
    queue_size: int = DEFAULT_QUEUE
    threads: int | None = None
    low_latency: bool = False
    decoder: str | None = None
    encoder: str | None = None
    encoder_note: str | None = None
    codec: str | None = None
    source_fps: float = 0.0
    batch: int = 1
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    end_to_end: dict[str, float] = field(default_factory=dict)
    broken: str | None = None
    interrupted: bool = False
    outputs: dict[str, str] = field(default_factory=dict)
    compare: str | None = None
    disagreement_pct: float | None = None  # with ``compare``: pixels whose class differs between the two, %

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50_ms": 0.0, "p99_ms": 0.0, "mean_ms": 0.0}
    a = np.asarray(values) * 1e3
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
            "mean_ms": round(float(a.mean()), 3)}


def summary_lines(summary: InferSummary) -> list[str]:
    """What ran, one fact a line: throughput and latency, frames dropped, queue and threads, decoder, encoder."""
    lines = [f"throughput {summary.fps:.2f} FPS, latency p50 {summary.latency_p50_ms:.0f} ms, "
             f"p99 {summary.latency_p99_ms:.0f} ms end to end"]
    mode = "low latency, " if summary.low_latency else ""
    threads = "" if summary.threads is None else \
        f", {summary.threads or 'default'} ONNX Runtime thread{'' if summary.threads == 1 else 's'}"
    lines.append(f"{mode}queue {summary.queue_size}{threads}; dropped {summary.dropped} of {summary.decoded} "
                 "frames decoded")
    lines.append(f"decoder: {summary.decoder or '?'}")
    if summary.encoder is not None:
        lines.append(f"encoder: {summary.encoder}, codec read back {summary.codec or '?'}")
        if summary.encoder_note:
            lines.append(f"  why not better: {summary.encoder_note}")
    return lines
