"""``danet-edge infer``: video / image inference with overlay, labels and a summary (``infer.pipeline.run_inference``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..core.choices import choice_enum
from ..infer.config import InferConfig as IC
from ._common import opt, backend_names, console, err_console


def register(app: typer.Typer) -> None:
    """Add ``infer`` to ``app``. Defaults and help come from ``InferConfig``."""

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
        backend: Optional[choice_enum("Backend", backend_names())] = opt(IC, "backend", "--backend"),  # type: ignore[valid-type]
        providers: Optional[str] = opt(IC, "providers", "--providers"),
        device: Optional[str] = opt(IC, "device", "--device"),
        out_dir: Path = opt(IC, "out_dir", "--out", "-o"),
        save_video: bool = opt(IC, "save_video", "--save-video/--no-save-video"),
        save_labels: bool = opt(IC, "save_labels", "--save-labels"),
        show: bool = opt(IC, "show", "--show"),
        letterbox: bool = opt(IC, "letterbox", "--letterbox"),
        alpha: float = opt(IC, "alpha", "--alpha"),
        max_frames: Optional[int] = opt(IC, "max_frames", "--max-frames"),
        batch: Optional[int] = opt(IC, "batch", "--batch"),
        threads: Optional[int] = opt(IC, "threads", "--threads"),
        queue_size: Optional[int] = opt(IC, "queue_size", "--queue-size"),
        low_latency: bool = opt(IC, "low_latency", "--low-latency"),
        drop_frames: Optional[bool] = opt(IC, "drop_frames", "--drop-frames/--no-drop-frames"),
        hw_decode: bool = opt(IC, "hw_decode", "--hw-decode"),
        stamp: bool = opt(IC, "stamp", "--stamp/--no-stamp"),
        compare: Optional[Path] = opt(IC, "compare", "--compare"),
    ) -> None:
        """Segment a video, images, a camera or a stream; writes overlay video, label PNGs and summary.json.

        The summary gives throughput (FPS) and end-to-end latency (p50 / p99), frames dropped, the decoder and the
        encoder that ran, and the codec read back from the video (H.264 where this OpenCV can write it, else mp4v).
        """
        from ..infer.results import SourceBroken
        from ..infer.pipeline import run_inference
        from .render import summary_table

        cfg = IC.from_options(locals(), providers=[p.strip() for p in providers.split(",") if p.strip()]
                              if providers else None)
        from ..core.utils import ensure_output_dir

        ensure_output_dir(out_dir, "--out")  # before the model loads: a file or a read-only folder is one line
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
