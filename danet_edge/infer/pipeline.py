"""Video / image inference pipeline: decode -> preprocess + infer + postprocess -> encode, overlapped.

Three stages (``stages.py``) joined by bounded queues, so the slowest sets the pace and memory stays flat:

    Decoder      thread: source -> RGB frames                         (queue of ``queue_size``)
    ModelStage   main thread: fit to the model size, backend.predict in batches, class maps back to frame size
    Encoder      thread: overlay video (H.264 or mp4v: ``videoio``), palette PNGs, --show window

Each fills its own fields of one ``RunStats`` record, which becomes the ``InferSummary``.

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
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..core.config import check_threads
from ..core.errors import ConfigError, DataError, Interrupted
from ..core.manifest import Manifest
from ..core.optional import import_cv2
from ..core.progress import task
from ..core.runfolder import run_lock
from ..core.utils import ensure_output_names, write_json
from ..runtime.backends import Backend, backend_spec, check_backend_opens, open_backend
from .config import InferConfig, default_threads
from .render import VideoOut, partial_path
from .results import InferSummary, SourceBroken
from .sources import FrameSource, open_source
from .stages import Decoder, Encoder, ModelStage, RunStats

__all__ = ["run_inference", "run_pipeline"]


def _open_window(cv2: Any) -> None:
    try:
        cv2.namedWindow("danet-edge", cv2.WINDOW_NORMAL)
    except cv2.error:
        raise ConfigError("--show needs OpenCV with GUI support (opencv-python, not opencv-python-headless)") \
            from None


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
    batch = max(1, manifest.batch_size)
    if other is not None and list(other.manifest.classes) != list(manifest.classes):
        raise ConfigError(f"--compare: {other_name} has other classes than {Path(model_name).name}")
    out_dir = Path(cfg.out_dir)
    stem = Path(source.name).stem if source.kind in ("video", "image") else source.kind
    summary = InferSummary(model=model_name, backend=getattr(backend, "name", "?"), source=source.name,
                           source_fps=source.fps, batch=batch, compare=None if other is None else other_name,
                           queue_size=cfg.queue_frames, threads=cfg.threads, low_latency=cfg.low_latency,
                           decoder=getattr(source, "decoder", None))
    suffix = "overlay" if other is None else "compare"
    video_path = out_dir / f"{stem}_{suffix}.mp4"
    ensure_output_names(out_dir, "--out", ["summary.json", *([video_path.name, partial_path(video_path).name]
                                                            if cfg.save_video else [])],
                        ["labels", *(["labels_compare"] if other is not None else [])] if cfg.save_labels else [])
    with run_lock(out_dir, "infer"):  # a second infer into the folder is refused in one line
        if cfg.show:
            _open_window(cv2)
        # the encoder probe runs here, before any thread starts (it silences stderr for a moment)
        video = VideoOut(video_path, source.fps) if cfg.save_video else None
        names = (Path(model_name).name, manifest.precision, Path(other_name).name,
                 None if other is None else other.manifest.precision)
        stats, stop = RunStats(), threading.Event()
        decoder = Decoder(source, cfg, stats, stop)
        model = ModelStage(backend, other, cfg.letterbox, stats)
        encoder = Encoder(cfg, manifest, video, out_dir, source.names, names, stats, stop)
        total = source.frame_count if cfg.max_frames is None else \
            min(source.frame_count or cfg.max_frames, cfg.max_frames)
        bar = contextlib.ExitStack()  # a progress bar on a terminal (``progress.task``), none otherwise
        advance = bar.enter_context(task(f"infer {source.name}", total))
        t_run = stats.start = time.perf_counter()
        decoder.start()
        encoder.start()
        try:
            done = False
            while not done and not stop.is_set():
                items, done = decoder.take(batch)
                if not items:
                    break
                results = model(items)
                advance(len(items))
                if not all(encoder.put(r) for r in results):
                    break
        except KeyboardInterrupt:
            summary.interrupted = True  # the outputs are closed below, then Interrupted says what they hold
        finally:
            stop.set()  # the decoder gives up its pending put; the encoder still drains what is queued
            decoder.join()
            encoder.finish()
            bar.close()
            stats.fill(summary, time.perf_counter() - t_run)
            _close(summary, cfg, video, out_dir, other is not None, source.broken)
            if cfg.show:
                cv2.destroyAllWindows()
        if summary.interrupted:
            kept = [summary.outputs[k] + (" playable" if k == "video" else "")
                    for k in ("video", "labels", "summary") if k in summary.outputs]
            raise Interrupted(f"interrupted after {summary.frames} frames: {', '.join(kept)}")
        for error in (decoder.error, encoder.error):
            if error is not None:
                raise error
        if summary.broken:
            kept = f"; the {summary.frames} frames before the break are in " \
                   f"{summary.outputs.get('video', out_dir)}"
            raise SourceBroken(summary.broken + kept, summary)
        return summary


def _close(summary: InferSummary, cfg: InferConfig, video: VideoOut | None, out_dir: Path, compare: bool,
           broken: str | None) -> None:
    """Close the video, name the outputs in ``summary`` and write ``summary.json``."""
    summary.broken = broken
    if video is not None:
        path = video.close()
        summary.encoder, summary.codec = video.encoder, video.codec
        summary.encoder_note = "; ".join(video.notes) if video.notes and video.encoder else None
        if path is not None:
            summary.outputs["video"] = str(path)
    if cfg.save_labels and summary.frames:
        summary.outputs["labels"] = str(out_dir / "labels")
        if compare:
            summary.outputs["labels_compare"] = str(out_dir / "labels_compare")
    summary.outputs["summary"] = str(out_dir / "summary.json")
    write_json(out_dir / "summary.json", summary.to_dict())


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
    spec = check_backend_opens(model_path, cfg.backend)  # cheap model checks before a camera or a file opens
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
