"""Options of the infer stage: :class:`InferConfig` (``danet-edge infer``) and the defaults measured for it
(queue size, ONNX Runtime threads)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


from ..core.config import Config
from ..core.errors import ConfigError

__all__ = ['DEFAULT_QUEUE', 'InferConfig', 'LOW_LATENCY_QUEUE', 'STAGES', 'default_threads']


STAGES = ("decode", "preprocess", "infer", "postprocess", "encode")


#: Frames each inter-thread queue holds by default, and with ``low_latency`` (measured: ``InferConfig``).
DEFAULT_QUEUE = 1


LOW_LATENCY_QUEUE = 1


def default_threads() -> int:
    """ONNX Runtime intra-op threads when ``--threads`` is not given: every physical core (measured:
    ``InferConfig``), as ONNX Runtime's own default counts them (SMT siblings add little to convolutions), but
    written down so that the summary says how many ran."""
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except Exception:  # noqa: BLE001 - psutil missing or unable to tell: the logical count
        physical = None
    return max(1, physical or os.cpu_count() or 1)


@dataclass
class InferConfig(Config):
    """Options of ``danet-edge infer``.

    Attributes:
        backend, providers, device: backend choice (see ``runtime.backends.open_backend``).
        batch: frames per ``predict`` call (checkpoints only; ONNX / engines use their static batch).
        out_dir: where ``<source>_overlay.mp4``, ``labels/`` and ``summary.json`` go.
        save_video: write the overlay video (colour mask blended over the frame, the legend of every class of
            the model in a fixed order and place).
        save_labels: write one palette PNG per frame (PIL mode P, value = class index).
        show: display the overlay in a window (needs OpenCV with GUI support).
        letterbox: keep the aspect ratio (pad) instead of stretching frames to the model size.
        alpha: mask opacity in the overlay, 0..1.
        max_frames: stop after this many frames read from the source (None = all).
        queue_size: bound of each inter-thread queue (frames). None: :data:`DEFAULT_QUEUE` (1; also with
            ``low_latency``). A frame waits behind every frame queued ahead of it, so latency grows by one
            inference time per frame of queue while throughput does not (measurement below).
        threads: ONNX Runtime intra-op threads (0: ONNX Runtime's own default). None: every physical core
            (:func:`default_threads`; measurement below).
        low_latency: for live sources (camera, stream, GStreamer pipeline): one frame per queue, and frames the
            model cannot keep up with are dropped (``drop_frames``) so each result is of a recent frame instead
            of one that waited in a growing backlog; the summary counts them (``dropped``).
        drop_frames: None: drop on live sources with ``low_latency``, never otherwise. A file is not dropped by
            default even with ``low_latency``: it waits for the reader, so nothing lags, and dropping would only
            lose frames from the output. True: drop anyway; a file is then read at its own frame rate, as a
            camera would deliver it (what a live source would see), and the decoder replaces a waiting frame
            with the newest. False: never drop (a live source then lags when the model is slower than it).
        hw_decode: decode a video file on the Jetson hardware decoder (``videoio.hw_decode_pipeline``:
            ``nvv4l2decoder`` through GStreamer); needs an OpenCV built with GStreamer (JetPack's).
        stamp: write the model's file name, its precision and the running throughput (FPS, frames written so far
            over the time since the start) at the bottom left of each video frame; with ``compare``, the
            disagreement panel's stamp gives that frame's share of disagreeing pixels (%).
        compare: a second artifact with the same classes: each frame is segmented by both and the video becomes
            ``<source>_compare.mp4``: this model's overlay | the other's (each as its single run draws it) | the
            frame darkened with the pixels where the two disagree in white; with ``save_labels`` its class maps go
            to ``labels_compare/``.

    How the defaults were chosen: ``benchmarks/infer_defaults.py MODEL VIDEO --low-latency`` on a 2-core AMD EPYC
    (ONNX Runtime 1.31, pip OpenCV 5.0), MODEL the INT8 cpu graph of ``runs/camvid_r18/best.pt`` at 360x480,
    VIDEO 171 CamVid frames of one sequence in name order as an mp4 (30 FPS); whole ``run_inference`` runs, overlay
    video written. Two runs per setting on an otherwise idle machine (the first by the load average, the second
    with other processes measured at < 1 % of the CPU, one at 18 %); FPS end to end, then the end-to-end latency
    p50 of the two runs:

        threads   queue 1                  queue 2                  queue 8                   model only
        1         4.88, 4.48 FPS; 412-438  4.80, 4.79 FPS; 628-630  4.80, 4.63 FPS; 1874-1945  4.91 FPS
        2         8.64, 8.45 FPS; 236-243  8.57, 8.13 FPS; 352-376  8.65, 8.03 FPS; 1034-1099  9.54 FPS
        0 (ORT)   8.33, 8.49 FPS; 241-249  8.08, 8.58 FPS; 353-383  8.14, 8.04 FPS; 1095-1118  9.64 FPS

    * threads: every core gives 1.8x the throughput of all but one (8.45-8.64 against 4.48-4.88 FPS), 89-91 %
      of the model-only rate: reading a frame and drawing + writing the overlay take about 9 ms a frame (p50)
      against 115-120 ms of inference, so they fit beside the model instead of needing a core of their own
      (the old cores - 1 default was measured on the FP32 graph, 315 ms a frame). ONNX Runtime's own default
      (0) counts physical cores, the same 2 here, and ran as fast. On a shared machine the answer turns: with
      another process using one core, 1 thread gave 4.40 FPS model-only against 3.81 with 2 (use
      ``--threads 1`` there).
    * queue: throughput is flat from 1 to 8 frames, latency is not (one inference time per queued frame;
      p99 272-274 ms at queue 1 with 2 threads). With a model as fast as the video work (the same graph at
      128x160, 17 ms inference) queue 2 gave 46.5 against 45.1 FPS (medians of 8 runs each, spread 42-50 FPS)
      for 73 against 53 ms p50: within the noise, so 1.
    * low_latency on a live source (the file read at its 30 FPS with ``drop_frames``, 2 threads or 0):
      p50 149-151 ms, p99 178-250 ms, 123-128 of 171 frames dropped (the model runs at 8 FPS, the camera
      at 30); the file without dropping: p50 237-241 ms, nothing dropped.
    """

    backend: str | None = None
    providers: Sequence[str] | None = None
    device: str | None = None
    batch: int | None = None
    out_dir: Path = Path("runs/infer")
    save_video: bool = True
    save_labels: bool = False
    show: bool = False
    letterbox: bool = False
    alpha: float = 0.5
    max_frames: int | None = None
    queue_size: int | None = None
    threads: int | None = None
    stamp: bool = True
    compare: Path | None = None
    low_latency: bool = False
    drop_frames: bool | None = None
    hw_decode: bool = False

    def validate(self) -> None:
        """Raises ConfigError on out-of-range values."""
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha must be in 0..1, got {self.alpha}")
        if self.max_frames is not None and self.max_frames <= 0:
            raise ConfigError(f"max-frames must be positive, got {self.max_frames}")
        if self.batch is not None and self.batch <= 0:
            raise ConfigError(f"batch must be positive, got {self.batch}")
        if self.queue_size is not None and self.queue_size <= 0:
            raise ConfigError(f"queue size must be positive, got {self.queue_size}")
        if self.low_latency and self.queue_size is not None and self.queue_size > 2:
            raise ConfigError(f"--low-latency keeps at most 2 frames queued (default {LOW_LATENCY_QUEUE}); "
                              f"--queue-size {self.queue_size} contradicts it: give one or the other")
        if self.threads is not None and self.threads < 0:
            raise ConfigError(f"threads must be >= 0 (0 = ONNX Runtime's default), got {self.threads}")

    @property
    def queue_frames(self) -> int:
        """The bound of each queue: ``queue_size``, else 1 with ``low_latency``, else :data:`DEFAULT_QUEUE`."""
        if self.queue_size is not None:
            return self.queue_size
        return LOW_LATENCY_QUEUE if self.low_latency else DEFAULT_QUEUE

    def drops(self, live: bool) -> bool:
        """Whether the decoder drops frames the model cannot keep up with, for a live source or not."""
        return self.drop_frames if self.drop_frames is not None else (self.low_latency and live)
