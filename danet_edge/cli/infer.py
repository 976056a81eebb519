"""``danet-edge infer``: video / image inference with overlay, labels and a summary (``infer.pipeline.run_inference``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..core.choices import choice_enum
from ._common import backend_names, console, err_console


def register(app: typer.Typer) -> None:
    """Add ``infer`` to ``app``. Defaults are read from ``InferConfig``."""
    from ..infer.config import DEFAULT_QUEUE, InferConfig

    inf = InferConfig()

    @app.command(epilog="\b\nExamples:\n  danet-edge infer model_int8_trt.engine video.mp4\n  "
                        "danet-edge infer model.engine 0 --show (camera 0)\n  "
                        "danet-edge infer model.engine \"nvarguscamerasrc ! video/x-raw(memory:NVMM),width=1280,"
                        "height=720 ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR "
                        "! appsink\" (Jetson CSI camera through GStreamer)\n  "
                        "danet-edge infer model.onnx frames/ --save-labels -o runs/infer\n  "
                        "danet-edge infer model_int8_trt.onnx video.mp4 --compare model.onnx (side by side)\n  "
                        "danet-edge infer model.engine 0 --low-latency (live: drop frames rather than lag)\n  "
                        "danet-edge infer model.engine clip.mp4 --hw-decode (Jetson: nvv4l2decoder)")
    def infer(
        model: Path = typer.Argument(..., help=".pt/.pth checkpoint, .onnx graph or .engine/.plan"),
        source: str = typer.Argument(..., help="video, image, folder, glob, camera index, URL or GStreamer pipeline"),
        backend: Optional[choice_enum("Backend", backend_names())] = typer.Option(  # type: ignore[valid-type]
                                              None, "--backend",
                                              help="backend (default: by file suffix)"),
        providers: Optional[str] = typer.Option(None, "--providers", help="ONNX Runtime providers, e.g. cuda,cpu"),
        device: Optional[str] = typer.Option(None, "--device", help="torch device (checkpoints only)"),
        out: Path = typer.Option(inf.out_dir, "--out", "-o", help="output folder"),
        save_video: bool = typer.Option(inf.save_video, "--save-video/--no-save-video", help="write the overlay video"),
        save_labels: bool = typer.Option(inf.save_labels, "--save-labels", help="write palette PNG class maps"),
        show: bool = typer.Option(inf.show, "--show", help="show the overlay in a window"),
        letterbox: bool = typer.Option(inf.letterbox, "--letterbox", help="keep the aspect ratio (pad) instead of stretching"),
        alpha: float = typer.Option(inf.alpha, "--alpha", help="mask opacity 0..1"),
        max_frames: Optional[int] = typer.Option(None, "--max-frames", help="stop after N frames"),
        batch: Optional[int] = typer.Option(None, "--batch", help="frames per forward pass (checkpoints only)"),
        threads: Optional[int] = typer.Option(None, "--threads", help="ONNX Runtime CPU threads (default: every "
                                              "physical core; 0: ONNX Runtime's own; 1 on a busy machine)"),
        queue_size: Optional[int] = typer.Option(inf.queue_size, "--queue-size",
                                                 help=f"frames buffered between stages (default {DEFAULT_QUEUE}; "
                                                      "each one more adds an inference time of latency)"),
        low_latency: bool = typer.Option(inf.low_latency, "--low-latency",
                                         help="live sources: one frame queued, drop frames rather than lag"),
        drop_frames: Optional[bool] = typer.Option(inf.drop_frames, "--drop-frames/--no-drop-frames",
                                                   help="drop frames the model cannot keep up with (default: live "
                                                        "sources with --low-latency only; a file dropped from is "
                                                        "read at its frame rate, like a camera)"),
        hw_decode: bool = typer.Option(inf.hw_decode, "--hw-decode",
                                       help="decode a video file on the Jetson decoder (GStreamer nvv4l2decoder; "
                                            "needs JetPack's OpenCV)"),
        stamp: bool = typer.Option(inf.stamp, "--stamp/--no-stamp", help="write model, precision and running FPS on each frame"),
        compare: Optional[Path] = typer.Option(inf.compare, "--compare", help="a second artifact: side-by-side video "
                                               "(MODEL | this one | where they disagree, white)"),
    ) -> None:
        """Segment a video, images, a camera or a stream; writes overlay video, label PNGs and summary.json.

        The summary gives throughput (FPS) and end-to-end latency (p50 / p99), frames dropped, the decoder and the
        encoder that ran, and the codec read back from the video (H.264 where this OpenCV can write it, else mp4v).
        """
        from ..infer.config import InferConfig
        from ..infer.results import SourceBroken
        from ..infer.pipeline import run_inference
        from .render import summary_table

        cfg = InferConfig(backend=backend.value if backend else None, providers=[p.strip() for p in providers.split(",") if p.strip()]
                          if providers else None, device=device, batch=batch, out_dir=out, save_video=save_video,
                          save_labels=save_labels, show=show, letterbox=letterbox, alpha=alpha, max_frames=max_frames,
                          threads=threads, queue_size=queue_size, stamp=stamp, compare=compare,
                          low_latency=low_latency, drop_frames=drop_frames, hw_decode=hw_decode)
        from ..core.utils import ensure_output_dir

        ensure_output_dir(out, "--out")  # before the model loads: a file or a read-only folder is one line
        try:
            summary = run_inference(model, source, cfg)
        except SourceBroken as e:
            err_console.print(summary_table(e.summary))
            raise
        console.print(summary_table(summary))
        if summary.disagreement_pct is not None:
            console.print(f"disagreement with {summary.compare}: {summary.disagreement_pct:.3f} % of pixels",
                          markup=False, highlight=False, soft_wrap=True)
        for name, path in summary.outputs.items():
            console.print(f"{name}: {path}")
