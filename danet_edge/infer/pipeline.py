"""Video / image inference pipeline: decode -> preprocess + infer + postprocess -> encode, overlapped.

Three threads joined by bounded queues, so the slowest stage sets the pace and memory stays flat:

    decode thread     source -> RGB frames                         (queue of ``queue_size``)
    main thread       fit to the model size, backend.predict in batches, class maps back to frame size
    encode thread     overlay video (H.264 or mp4v: ``videoio``), palette PNGs, --show window

With ``low_latency`` the queues hold one frame and, on a live source, the decode thread keeps reading and
replaces a frame still waiting with the newest one (counted as dropped) instead of falling behind.

Outputs are written under temporary names and renamed when closed, so a fault or Ctrl-C leaves
playable files with the frames processed so far and never a half-written one. Every run writes
``summary.json``: throughput (FPS) and end-to-end latency (p50/p99) first, then frames decoded and dropped,
latency per stage, the decoder and encoder that ran and the codec read back from the video.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..core.optional import import_cv2
from ..core.config import Config, check_threads
from ..core.errors import ConfigError, DataError, Interrupted
from ..data.frames import fit_frame, restore_labels
from ..core.manifest import Manifest
from ..core.progress import task
from ..core.utils import write_json
from ..runtime.backends import backend_spec, open_backend
from .render import VideoOut, disagreement_tile, draw_stamp, overlay, save_label_png, side_by_side
from .sources import FrameSource, open_source

__all__ = ["InferConfig", "InferSummary", "SourceBroken", "run_inference", "run_pipeline", "overlay",
           "save_label_png", "summary_table", "summary_lines", "default_threads", "STAGES", "DEFAULT_QUEUE",
           "LOW_LATENCY_QUEUE"]

STAGES = ("decode", "preprocess", "infer", "postprocess", "encode")
#: Frames each inter-thread queue holds by default, and with ``low_latency`` (measured: ``InferConfig``).
DEFAULT_QUEUE = 1
LOW_LATENCY_QUEUE = 1
_END = object()


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


class SourceBroken(DataError):
    """The source broke off mid-way; ``summary`` describes the frames processed before the break."""

    def __init__(self, message: str, summary: "InferSummary") -> None:
        super().__init__(message)
        self.summary = summary


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


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put with back-pressure; gives up (False) when ``stop`` is set."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _put_latest(q: queue.Queue, item: Any) -> bool:
    """Put without waiting: when ``q`` is full, its oldest item makes room. False when one was dropped.

    Only for a queue this thread alone puts into (the decoder's): after the get there is room for the put.
    """
    try:
        q.put_nowait(item)
        return True
    except queue.Full:
        pass
    try:
        q.get_nowait()
        dropped = True
    except queue.Empty:  # the consumer took it meanwhile
        dropped = False
    q.put_nowait(item)
    return not dropped


def _acquire(sem: threading.Semaphore, stop: threading.Event) -> bool:
    """Acquire ``sem``, giving up (False) when ``stop`` is set."""
    while not stop.is_set():
        if sem.acquire(timeout=0.1):
            return True
    return False


def _get(q: queue.Queue, stop: threading.Event) -> Any:
    """Get with a timeout loop; returns ``_END`` once ``stop`` is set and nothing is queued."""
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if stop.is_set():
                return _END


def run_pipeline(backend: Any, source: FrameSource, cfg: InferConfig, model_name: str = "model",
                 other: Any = None, other_name: str = "other") -> InferSummary:
    """Run ``backend`` over ``source`` with overlapped decode / infer / encode; see the module docstring.

    With ``other`` (a second backend, ``InferConfig.compare``), each frame is also segmented by it and the video
    shows both side by side (``backend`` | ``other`` | where they disagree, white).

    Raises:
        SourceBroken: the source stopped early (outputs hold the frames before the break).
        ConfigError: ``show`` without GUI support.
        Interrupted: Ctrl-C (a ``KeyboardInterrupt``); the outputs are closed first (a playable video of the
            frames so far, ``summary.json`` with ``interrupted``) and the message names them.
        MissingDependencyError: OpenCV is not importable (it resizes, draws and writes the frames).
    """
    cfg.validate()
    cv2 = import_cv2()
    manifest: Manifest = backend.manifest
    size = manifest.image_size
    batch = max(1, manifest.batch_size)
    palette = np.asarray(manifest.palette, np.uint8)
    if other is not None and list(other.manifest.classes) != list(manifest.classes):
        raise ConfigError(f"--compare: {other_name} has other classes than {Path(model_name).name}")
    out_dir = Path(cfg.out_dir)
    stem = Path(source.name).stem if source.kind in ("video", "image") else source.kind
    summary = InferSummary(model=model_name, backend=getattr(backend, "name", "?"), source=source.name,
                           source_fps=source.fps, batch=batch, compare=None if other is None else other_name,
                           queue_size=cfg.queue_frames, threads=cfg.threads, low_latency=cfg.low_latency,
                           decoder=getattr(source, "decoder", None))
    drop = cfg.drops(source.live)
    pace = drop and not source.live  # a file dropped as a live source: read at its frame rate, as a camera would
    if cfg.show:
        try:
            cv2.namedWindow("danet-edge", cv2.WINDOW_NORMAL)
        except cv2.error:
            raise ConfigError("--show needs OpenCV with GUI support (opencv-python, not opencv-python-headless)") \
                from None
    suffix = "overlay" if other is None else "compare"
    # the encoder probe runs here, before any thread starts (it silences stderr for a moment)
    video = VideoOut(out_dir / f"{stem}_{suffix}.mp4", source.fps) if cfg.save_video else None
    labels_dir, labels_dir2 = out_dir / "labels", out_dir / "labels_compare"
    clock = {"start": time.perf_counter(), "disagree": 0, "pixels": 0, "decoded": 0, "dropped": 0}
    names = (Path(model_name).name, manifest.precision, Path(other_name).name,
             None if other is None else other.manifest.precision)
    times: dict[str, list[float]] = {s: [] for s in STAGES}
    e2e: list[float] = []
    stop = threading.Event()
    frames_q: queue.Queue = queue.Queue(maxsize=cfg.queue_frames)
    # Without dropping, the decoder takes a slot before it reads and the model gives it back when it takes the
    # frame: a frame is read when it can be queued, not read and then held while the queue is full (a file's
    # frame would wait in the decoder's hands, adding one inference time to every frame's latency).
    slots = threading.Semaphore(cfg.queue_frames)
    results_q: queue.Queue = queue.Queue(maxsize=cfg.queue_frames)
    errors: list[BaseException] = []

    def decode() -> None:
        try:
            it = iter(source)
            i = 0
            while not stop.is_set() and (cfg.max_frames is None or i < cfg.max_frames):
                if pace and (wait := clock["start"] + i / source.fps - time.perf_counter()) > 0:
                    stop.wait(wait)
                if not drop and not _acquire(slots, stop):  # read a frame only when the queue has room for it
                    return
                t0 = time.perf_counter()
                frame = next(it, None)
                if frame is None:
                    break
                times["decode"].append(time.perf_counter() - t0)
                clock["decoded"] = i + 1
                if drop:
                    clock["dropped"] += not _put_latest(frames_q, (i, t0, frame))
                else:
                    frames_q.put((i, t0, frame))  # a slot is held: never blocks
                i += 1
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            errors.append(e)
        finally:
            source.close()
            _put(frames_q, _END, stop)

    def encode() -> None:
        try:
            while True:
                item = results_q.get()
                if item is _END:
                    return
                i, t_start, frame, labels, labels2 = item
                t0 = time.perf_counter()
                if labels2 is not None:
                    disagree = labels != labels2
                    n_disagree = int(disagree.sum())
                    clock["disagree"] += n_disagree
                    clock["pixels"] += disagree.size
                if video is not None or cfg.show:
                    # frames written per second so far; none written yet: no rate to show (not "0.0 FPS")
                    rate = f"{summary.frames / max(1e-9, t0 - clock['start']):.1f} FPS" if summary.frames else "-- FPS"
                    stamp = f"{names[0]} | {names[1]} | {rate}" if cfg.stamp else None
                    vis = overlay(frame, labels, palette, cfg.alpha, manifest.classes, stamp)
                    if labels2 is not None:
                        stamp2 = f"{names[2]} | {names[3]} | {rate}" if cfg.stamp else None
                        tile = disagreement_tile(frame, disagree)
                        if cfg.stamp:
                            draw_stamp(tile, f"disagreement (white) | {100.0 * n_disagree / disagree.size:.2f} % of pixels")
                        vis = side_by_side(vis, overlay(frame, labels2, palette, cfg.alpha, manifest.classes, stamp2),
                                           tile)
                    if video is not None:
                        video.write(vis)
                    if cfg.show:
                        cv2.imshow("danet-edge", cv2.cvtColor(vis, cv2.COLOR_RGB2BGR))
                        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                            stop.set()
                if cfg.save_labels:
                    name = source.names[i] if source.names else f"{i:06d}"
                    save_label_png(labels_dir / f"{name}.png", labels, manifest.palette)
                    if labels2 is not None:
                        save_label_png(labels_dir2 / f"{name}.png", labels2, manifest.palette)
                now = time.perf_counter()
                times["encode"].append(now - t0)
                e2e.append(now - t_start)
                summary.frames += 1
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            stop.set()
            while results_q.get() is not _END:  # drain so the main thread never blocks
                pass

    decoder = threading.Thread(target=decode, name="danet-decode", daemon=True)
    encoder = threading.Thread(target=encode, name="danet-encode", daemon=True)
    t_run = clock["start"] = time.perf_counter()
    bar = contextlib.ExitStack()  # a progress bar on a terminal (``progress.task``), none otherwise
    total = source.frame_count if cfg.max_frames is None else min(source.frame_count or cfg.max_frames, cfg.max_frames)
    advance = bar.enter_context(task(f"infer {source.name}", total))
    decoder.start()
    encoder.start()
    try:
        done = False
        while not done and not stop.is_set():
            items = []
            while len(items) < batch:
                item = _get(frames_q, stop)
                if item is _END:
                    done = True
                    break
                if not drop:
                    slots.release()
                items.append(item)
            if not items:
                break
            t0 = time.perf_counter()
            fitted = [fit_frame(f, size, cfg.letterbox) for _, _, f in items]
            t1 = time.perf_counter()
            pred = backend.predict(np.stack([img for img, _ in fitted]))
            t2 = time.perf_counter()
            maps = [restore_labels(lab, pl, f.shape[:2]) for lab, (_, pl), (_, _, f) in zip(pred.labels, fitted, items)]
            maps2: list[Any] = [None] * len(items)
            if other is not None:
                t_o = time.perf_counter()
                fitted2 = [fit_frame(f, other.manifest.image_size, cfg.letterbox) for _, _, f in items]
                labs = other.predict(np.stack([img for img, _ in fitted2])).labels  # any N (backends pad / split)
                maps2 = [restore_labels(lab, pl, f.shape[:2]) for lab, (_, pl), (_, _, f) in zip(labs, fitted2, items)]
                t2 += time.perf_counter() - t_o  # the second model's time counts as inference
            t3 = time.perf_counter()
            n = len(items)
            advance(n)
            times["preprocess"] += [(t1 - t0) / n] * n
            times["infer"] += [(t2 - t1) / n] * n
            times["postprocess"] += [(t3 - t2) / n] * n
            for (i, t_start, frame), labels, labels2 in zip(items, maps, maps2):
                if not _put(results_q, (i, t_start, frame, labels, labels2), stop):
                    break
    except KeyboardInterrupt:
        summary.interrupted = True  # the outputs are closed below, then Interrupted says what they hold
    finally:
        stop.set()  # the decoder gives up its pending put; the encoder still drains what is queued
        while decoder.is_alive():
            try:
                frames_q.get_nowait()
            except queue.Empty:
                pass
            decoder.join(timeout=0.05)
        results_q.put(_END)
        encoder.join()
        bar.close()
        summary.wall_s = round(time.perf_counter() - t_run, 4)
        summary.fps = round(summary.frames / summary.wall_s, 3) if summary.wall_s > 0 else 0.0
        summary.stages = {s: _stats(times[s]) for s in STAGES}
        summary.end_to_end = _stats(e2e)
        summary.latency_p50_ms, summary.latency_p99_ms = summary.end_to_end["p50_ms"], summary.end_to_end["p99_ms"]
        summary.decoded, summary.dropped = clock["decoded"], clock["dropped"]
        summary.broken = source.broken
        if video is not None:
            path = video.close()
            summary.encoder, summary.codec = video.encoder, video.codec
            summary.encoder_note = "; ".join(video.notes) if video.notes and video.encoder else None
            if path is not None:
                summary.outputs["video"] = str(path)
        if cfg.save_labels and summary.frames:
            summary.outputs["labels"] = str(labels_dir)
            if other is not None:
                summary.outputs["labels_compare"] = str(labels_dir2)
        if clock["pixels"]:
            summary.disagreement_pct = round(100.0 * clock["disagree"] / clock["pixels"], 4)
        if cfg.show:
            cv2.destroyAllWindows()
        summary.outputs["summary"] = str(out_dir / "summary.json")
        write_json(out_dir / "summary.json", summary.to_dict())
    if summary.interrupted:
        kept = [summary.outputs[k] + (" playable" if k == "video" else "") for k in ("video", "labels", "summary")
                if k in summary.outputs]
        raise Interrupted(f"interrupted after {summary.frames} frames: {', '.join(kept)}")
    if errors:
        raise errors[0]
    if summary.broken:
        kept = f"; the {summary.frames} frames before the break are in {summary.outputs.get('video', out_dir)}"
        raise SourceBroken(summary.broken + kept, summary)
    return summary


def run_inference(model_path: str | os.PathLike[str], source: str | int | os.PathLike[str],
                  cfg: InferConfig | None = None) -> InferSummary:
    """Segment every frame of ``source`` with the model at ``model_path``; see :func:`run_pipeline`.

    Raises:
        DataError / ManifestError / EngineError / ConfigError / MissingDependencyError: one-line problems
        with the model or the source; SourceBroken: the source broke off (outputs kept).
    """
    cfg = cfg or InferConfig()
    cfg.validate()
    check_threads("--threads", cfg.threads, 0)  # the machine's bound (a stage check, not the config's)
    import_cv2()  # a missing OpenCV fails when infer starts, before a model or a camera is opened
    spec = backend_spec(model_path, cfg.backend)  # cheap model checks before opening a camera or a file
    if not Path(model_path).is_file():
        raise DataError(f"{model_path}: model file not found")
    threads = cfg.threads
    if threads is None and "threads" in spec.options:  # every core (measured: InferConfig)
        threads = default_threads()
    cfg = replace(cfg, threads=threads)  # the summary records what ran
    if cfg.compare is not None and not Path(cfg.compare).is_file():
        raise DataError(f"{cfg.compare}: --compare model file not found")
    src = open_source(source, hw_decode=cfg.hw_decode)
    with contextlib.ExitStack() as stack:
        try:
            backend = stack.enter_context(open_backend(model_path, backend=cfg.backend, providers=cfg.providers,
                                                       device=cfg.device, batch=cfg.batch, threads=threads))
            other = None
            if cfg.compare is not None:  # its own backend by suffix, with the options its row takes
                spec2 = backend_spec(cfg.compare)
                given = {"providers": cfg.providers, "device": cfg.device, "threads": threads}
                other = stack.enter_context(open_backend(cfg.compare, **{k: v for k, v in given.items()
                                                                         if k in spec2.options}))
        except BaseException:
            src.close()
            raise
        return run_pipeline(backend, src, cfg, model_name=str(model_path), other=other,
                            other_name=str(cfg.compare) if cfg.compare is not None else "other")


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


def summary_table(summary: InferSummary):
    """A rich renderable: the throughput (FPS) and end-to-end latency line in bold, the per-stage latency table (ms),
    then the rest of :func:`summary_lines`."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    t = Table(title=f"{summary.frames} frames, {summary.fps:.2f} FPS end to end ({summary.backend}, batch {summary.batch})")
    t.add_column("stage")
    t.add_column("p50 ms", justify="right")
    t.add_column("p99 ms", justify="right")
    t.add_column("mean ms", justify="right")
    for name, s in [*summary.stages.items(), ("end-to-end", summary.end_to_end)]:
        t.add_row(name, f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}", f"{s['mean_ms']:.2f}")
    first, *rest = summary_lines(summary)
    return Group(Text(first, style="bold"), t, *(Text(line) for line in rest))


def _load_summary(path: str | os.PathLike[str]) -> dict[str, Any]:  # small helper for tools and tests
    return json.loads(Path(path).read_text())
