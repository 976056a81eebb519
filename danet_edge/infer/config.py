"""Options of the infer stage: :class:`InferConfig` (``danet-edge infer``) and the defaults measured for it
(queue size, ONNX Runtime threads)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


from ..core.config import option, Config
from ..core.errors import ConfigError

__all__ = ['DEFAULT_QUEUE', 'InferConfig', 'LOW_LATENCY_QUEUE', 'STAGES', 'VIDEO_RESERVE_MIB', 'default_threads']


STAGES = ("decode", "preprocess", "infer", "postprocess", "encode")


#: Frames each inter-thread queue holds by default, and with ``low_latency`` (measured: ``InferConfig``).
DEFAULT_QUEUE = 1


LOW_LATENCY_QUEUE = 1

#: Free space (MiB) the overlay video leaves on its file system: writing stops there and the file is closed, so
#: a disk that fills keeps a playable video (an MP4 cut short has no index). A closed MP4's index is about 20
#: bytes a frame; the rest covers the encoder's queued frames and what other writers take meanwhile.
VIDEO_RESERVE_MIB = 16.0


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

    The defaults (every physical core, queue 1, no dropping on files) were measured with
    ``benchmarks/infer_defaults.py`` on CamVid video; the table and how it was run are in NOTES.md (issue 13,
    "infer defaults, measured"). Every field's command-line help is its ``option`` text.
    """

    backend: str | None = option(None, "Backend (default: by file suffix).")
    providers: Sequence[str] | None = option(None, "ONNX Runtime providers, e.g. cuda,cpu.")
    device: str | None = option(None, "Torch device (checkpoints only).")
    batch: int | None = option(None, "Frames per forward pass (checkpoints only).")
    out_dir: Path = option(Path("runs/infer"), "Output folder.")
    save_video: bool = option(True, "Write the overlay video.")
    save_labels: bool = option(False, "Write palette PNG class maps.")
    show: bool = option(False, "Show the overlay in a window.")
    letterbox: bool = option(False, "Keep the aspect ratio (pad) instead of stretching.")
    alpha: float = option(0.5, "Mask opacity 0..1.")
    max_frames: int | None = option(None, "Stop after N frames.")
    queue_size: int | None = option(None, f"Frames buffered between stages (default {DEFAULT_QUEUE}; each one more "
                                          "adds an inference time of latency).")
    threads: int | None = option(None, "ONNX Runtime CPU threads (default: every physical core; 0: ONNX Runtime's "
                                       "own; 1 on a busy machine).")
    stamp: bool = option(True, "Write model, precision and running FPS on each frame.")
    compare: Path | None = option(None, "A second artifact: side-by-side video (MODEL | this one | where they "
                                        "disagree, white).")
    low_latency: bool = option(False, "Live sources: one frame queued, drop frames rather than lag.")
    drop_frames: bool | None = option(None, "Drop frames the model cannot keep up with (default: live sources with "
                                            "--low-latency only; a file dropped from is read at its frame rate, "
                                            "like a camera).")
    hw_decode: bool = option(False, "Decode a video file on the Jetson decoder (GStreamer nvv4l2decoder; needs "
                                    "JetPack's OpenCV).")

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
