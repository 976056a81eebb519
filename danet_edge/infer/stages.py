"""The three stages of the video pipeline, each a small class, and the :class:`RunStats` record they fill.

    Decoder      thread: source -> ``(index, t_decode_start, RGB frame)`` into a bounded queue
    ModelStage   main thread: a batch of frames -> fitted to the model size -> ``backend.predict`` -> class maps
                 back at frame size (and the ``--compare`` model's maps)
    Encoder      thread: overlay video, palette PNGs, the ``--show`` window; the end-to-end time of each frame

:func:`.pipeline.run_pipeline` wires them; each stage writes only its own fields of :class:`RunStats`, so no
counter is shared between threads.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.manifest import Manifest
from ..core.optional import import_cv2
from ..data.frames import fit_frame, restore_labels
from ..runtime.backends import Backend
from .config import STAGES, InferConfig
from .render import VideoOut, disagreement_tile, draw_stamp, overlay, save_label_png, side_by_side
from .results import InferSummary, _stats
from .sources import FrameSource

__all__ = ["END", "Decoder", "Encoder", "FrameResult", "ModelStage", "RunStats"]

END = object()  #: the end-of-stream marker in both queues


@dataclass
class RunStats:
    """What the stages counted. Times in seconds (``time.perf_counter``), per frame.

    Attributes:
        start: when the run started. times: per stage of :data:`.config.STAGES`, one entry per frame.
        end_to_end: per frame written, decode start to encode end. decoded / dropped: frames read, and
            replaced by a newer one before the model saw them (decoder's). frames: frames written (encoder's).
        disagree, pixels: with ``--compare``, pixels whose class differs, of all compared (encoder's).
    """

    start: float = field(default_factory=time.perf_counter)
    times: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    end_to_end: list[float] = field(default_factory=list)
    decoded: int = 0
    dropped: int = 0
    frames: int = 0
    disagree: int = 0
    pixels: int = 0

    def fill(self, summary: InferSummary, wall_s: float) -> None:
        """Write frames, throughput (FPS), latency per stage and end to end (ms) into ``summary``."""
        summary.frames = self.frames
        summary.wall_s = round(wall_s, 4)
        summary.fps = round(self.frames / summary.wall_s, 3) if summary.wall_s > 0 else 0.0
        summary.stages = {s: _stats(self.times[s]) for s in STAGES}
        summary.end_to_end = _stats(self.end_to_end)
        summary.latency_p50_ms, summary.latency_p99_ms = summary.end_to_end["p50_ms"], summary.end_to_end["p99_ms"]
        summary.decoded, summary.dropped = self.decoded, self.dropped
        if self.pixels:
            summary.disagreement_pct = round(100.0 * self.disagree / self.pixels, 4)


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


class Decoder:
    """Reads ``source`` on its own thread into a queue of ``queue_frames`` frames.

    Without dropping, a frame is read only when the queue has room for it (a slot is taken before the read and
    given back when the model takes the frame): a file's frame never waits in the decoder's hands, which would
    add one inference time to every frame's latency. With dropping (``low_latency`` on a live source), a frame
    still queued is replaced by the newest and counted in ``stats.dropped``; a file read as a live source is
    paced at its frame rate, as a camera would deliver it.
    """

    def __init__(self, source: FrameSource, cfg: InferConfig, stats: RunStats, stop: threading.Event) -> None:
        self.source, self.stats, self.stop = source, stats, stop
        self.max_frames = cfg.max_frames
        self.drop = cfg.drops(source.live)
        self.pace = self.drop and not source.live
        self.queue: queue.Queue = queue.Queue(maxsize=cfg.queue_frames)
        self._slots = threading.Semaphore(cfg.queue_frames)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="danet-decode", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _read_slot(self) -> bool:
        while not self.stop.is_set():
            if self._slots.acquire(timeout=0.1):
                return True
        return False

    def _run(self) -> None:
        try:
            it = iter(self.source)
            i = 0
            while not self.stop.is_set() and (self.max_frames is None or i < self.max_frames):
                if self.pace and (wait := self.stats.start + i / self.source.fps - time.perf_counter()) > 0:
                    self.stop.wait(wait)
                if not self.drop and not self._read_slot():
                    return
                t0 = time.perf_counter()
                frame = next(it, None)
                if frame is None:
                    break
                self.stats.times["decode"].append(time.perf_counter() - t0)
                self.stats.decoded = i + 1
                if self.drop:
                    self.stats.dropped += not _put_latest(self.queue, (i, t0, frame))
                else:
                    self.queue.put((i, t0, frame))  # a slot is held: never blocks
                i += 1
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            self.error = e
        finally:
            self.source.close()
            _put(self.queue, END, self.stop)

    def take(self, n: int) -> tuple[list[tuple[int, float, np.ndarray]], bool]:
        """Up to ``n`` queued frames, waiting for each; and whether the stream ended (or ``stop`` was set)."""
        items: list[tuple[int, float, np.ndarray]] = []
        while len(items) < n:
            try:
                item = self.queue.get(timeout=0.1)
            except queue.Empty:
                if self.stop.is_set():
                    return items, True
                continue
            if item is END:
                return items, True
            if not self.drop:
                self._slots.release()
            items.append(item)
        return items, False

    def join(self) -> None:
        """Wait for the thread after ``stop`` is set, emptying the queue so a pending put returns."""
        while self._thread.is_alive():
            try:
                self.queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)


@dataclass
class FrameResult:
    """One frame through the model: its index, decode start (s), ``(H, W, 3) uint8`` RGB frame and
    ``(H, W) int64`` class maps at frame size (``labels2``: the ``--compare`` model's, else None)."""

    index: int
    t_start: float
    frame: np.ndarray
    labels: np.ndarray
    labels2: np.ndarray | None = None


class ModelStage:
    """Fits a batch of frames to the model size, runs ``backend.predict`` (and ``other``'s, counted as infer
    time) and brings the class maps back to each frame's size; per-frame times go to ``stats``."""

    def __init__(self, backend: Backend, other: Backend | None, letterbox: bool, stats: RunStats) -> None:
        self.backend, self.other, self.letterbox, self.stats = backend, other, letterbox, stats

    def _segment(self, backend: Backend, frames: list[np.ndarray]) -> tuple[list[np.ndarray], list[float]]:
        """Class maps of ``frames`` at their own size, and the seconds spent fitting, predicting, restoring."""
        t0 = time.perf_counter()
        fitted = [fit_frame(f, backend.manifest.image_size, self.letterbox) for f in frames]
        t1 = time.perf_counter()
        labels = backend.predict(np.stack([img for img, _ in fitted])).labels  # any N (backends pad / split)
        t2 = time.perf_counter()
        maps = [restore_labels(lab, pl, f.shape[:2]) for lab, (_, pl), f in zip(labels, fitted, frames)]
        return maps, [t1 - t0, t2 - t1, time.perf_counter() - t2]

    def __call__(self, items: list[tuple[int, float, np.ndarray]]) -> list[FrameResult]:
        frames = [f for _, _, f in items]
        maps, (pre, infer, post) = self._segment(self.backend, frames)
        maps2: list[np.ndarray | None] = [None] * len(items)
        if self.other is not None:
            other_maps, other_times = self._segment(self.other, frames)
            maps2 = list(other_maps)
            infer += sum(other_times)  # the second model's time counts as inference
        n = len(items)
        self.stats.times["preprocess"] += [pre / n] * n
        self.stats.times["infer"] += [infer / n] * n
        self.stats.times["postprocess"] += [post / n] * n
        return [FrameResult(i, t, f, lab, lab2) for (i, t, f), lab, lab2 in zip(items, maps, maps2)]


class Encoder:
    """Writes each :class:`FrameResult` on its own thread: the overlay (or, with ``--compare``, both overlays
    and the disagreement tile side by side) into ``video``, the ``--show`` window, palette PNGs.

    ``names`` = (model, its precision, compare model, its precision), for the stamp. A failure stops the run
    (``stop``) and is kept in ``error``; the queue is then drained so the model stage never blocks.
    """

    def __init__(self, cfg: InferConfig, manifest: Manifest, video: VideoOut | None, out_dir: Path,
                 source_names: list[str] | None, names: tuple[str, ...], stats: RunStats,
                 stop: threading.Event) -> None:
        self.cfg, self.manifest, self.video, self.stats, self.stop = cfg, manifest, video, stats, stop
        self.palette = np.asarray(manifest.palette, np.uint8)
        self.labels_dir, self.labels_dir2 = out_dir / "labels", out_dir / "labels_compare"
        self.source_names, self.names = source_names, names
        self.queue: queue.Queue = queue.Queue(maxsize=cfg.queue_frames)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="danet-encode", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, result: FrameResult) -> bool:
        """Queue one result; False when the run was stopped meanwhile."""
        return _put(self.queue, result, self.stop)

    def finish(self) -> None:
        """Write what is queued, then end the thread."""
        self.queue.put(END)
        self._thread.join()

    def _run(self) -> None:
        try:
            while (r := self.queue.get()) is not END:
                self._write(r)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            self.error = e
            self.stop.set()
            while self.queue.get() is not END:  # drain so the main thread never blocks
                pass

    def _overlay(self, r: FrameResult, t0: float, disagree: np.ndarray | None) -> np.ndarray:
        cfg, names, classes = self.cfg, self.names, self.manifest.classes
        # frames written per second so far; none written yet: no rate to show (not "0.0 FPS")
        n = self.stats.frames
        rate = f"{n / max(1e-9, t0 - self.stats.start):.1f} FPS" if n else "-- FPS"
        stamp = f"{names[0]} | {names[1]} | {rate}" if cfg.stamp else None
        vis = overlay(r.frame, r.labels, self.palette, cfg.alpha, classes, stamp)
        if r.labels2 is None or disagree is None:
            return vis
        stamp2 = f"{names[2]} | {names[3]} | {rate}" if cfg.stamp else None
        tile = disagreement_tile(r.frame, disagree)
        if cfg.stamp:
            draw_stamp(tile, f"disagreement (white) | {100.0 * disagree.sum() / disagree.size:.2f} % of pixels")
        return side_by_side(vis, overlay(r.frame, r.labels2, self.palette, cfg.alpha, classes, stamp2), tile)

    def _write(self, r: FrameResult) -> None:
        cfg = self.cfg
        t0 = time.perf_counter()
        disagree = None if r.labels2 is None else r.labels != r.labels2  # once a frame: stats and the tile
        if disagree is not None:
            self.stats.disagree += int(disagree.sum())
            self.stats.pixels += disagree.size
        if self.video is not None or cfg.show:
            vis = self._overlay(r, t0, disagree)
            if self.video is not None:
                self.video.write(vis)
            if cfg.show:
                cv2 = import_cv2()
                cv2.imshow("danet-edge", cv2.cvtColor(vis, cv2.COLOR_RGB2BGR))
                if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                    self.stop.set()
        if cfg.save_labels:
            name = self.source_names[r.index] if self.source_names else f"{r.index:06d}"
            save_label_png(self.labels_dir / f"{name}.png", r.labels, self.manifest.palette)
            if r.labels2 is not None:
                save_label_png(self.labels_dir2 / f"{name}.png", r.labels2, self.manifest.palette)
        now = time.perf_counter()
        self.stats.times["encode"].append(now - t0)
        self.stats.end_to_end.append(now - r.t_start)
        self.stats.frames += 1

