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
import os
import queue
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..core.optional import import_cv2
from ..core.config import check_threads
from ..core.errors import ConfigError, DataError, Interrupted
from ..data.frames import fit_frame, restore_labels
from ..core.manifest import Manifest
from ..core.progress import task
from ..core.utils import write_json
from ..runtime.backends import Backend, backend_spec, open_backend
from .render import VideoOut, disagreement_tile, draw_stamp, overlay, save_label_png, side_by_side
from .sources import FrameSource, open_source
from .config import InferConfig, STAGES, default_threads
from .results import InferSummary, SourceBroken, _stats

__all__ = ["run_inference", "run_pipeline"]

_END = object()


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


def run_pipeline(backend: Backend, source: FrameSource, cfg: InferConfig, model_name: str = "model",
                 other: Backend | None = None, other_name: str = "other") -> InferSummary:
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
