"""``danet-edge bench``: latency, throughput, memory and power of artifacts side by side (``bench.run.bench_artifacts``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..bench.config import BenchConfig
from ..core.choices import choice_enum
from ._common import opt, backend_names, check_outputs
from .render import console, print_bench_table


def register(app: typer.Typer) -> None:
    """Add ``bench`` to the app. Defaults and help come from ``BenchConfig``."""

    @app.command(epilog="\b\nExamples:\n  danet-edge bench export/m/*.onnx -r best.pt --json bench.json --plot bench.png\n  "
                        "danet-edge bench model_int8_trt.engine model_fp16.engine -r best.pt\n  "
                        "danet-edge bench model_int8_cpu.onnx -r best.pt --backend openvino-bf16 --threads 2")
    def bench(
        artifacts: list[Path] = typer.Argument(None, help="Artifacts to time: .onnx, .engine/.plan, .pt."),
        reference: Optional[Path] = opt(BenchConfig, "reference", "--reference", "-r"),
        backend: Optional[choice_enum("Backend", backend_names())] = opt(BenchConfig, "backend", "--backend"),  # type: ignore[valid-type]
        warmup: int = opt(BenchConfig, "warmup", "--warmup"),
        warmup_s: float = opt(BenchConfig, "warmup_s", "--warmup-s"),
        runs: int = opt(BenchConfig, "runs", "--runs"),
        duration_s: float = opt(BenchConfig, "duration_s", "--duration"),
        batch: list[int] = typer.Option([], help=BenchConfig.help("batches")),
        threads: Optional[int] = opt(BenchConfig, "threads", "--threads"),
        device: Optional[str] = opt(BenchConfig, "device", "--device"),
        json_path: Optional[Path] = opt(BenchConfig, "json_path", "--json"),
        plot_path: Optional[Path] = opt(BenchConfig, "plot_path", "--plot"),
        check_json: Optional[Path] = opt(BenchConfig, "check_json", "--check-json"),
        out: Optional[Path] = typer.Option(None, "--out", "-o",
                                           help="Folder for bench.json and bench.png (unless --json / --plot say)."),
    ) -> None:
        """Latency (mean, p50, p90, p99 ms) end to end and of the model alone, FPS and peak memory per artifact,
        with speed-up vs PyTorch FP32; on a Jetson also the power mode, clocks and W, mJ/frame, FPS/W. With
        --backend every artifact runs on that backend (rows named FILE on BACKEND) beside the eager reference.
        """
        from ..bench.run import bench_artifacts

        check_outputs(out=out)
        if out is not None:
            json_path = json_path or out / "bench.json"
            plot_path = plot_path or out / "bench.png"
        check_outputs(json=json_path, plot=plot_path)
        cfg = BenchConfig.from_options(locals(), batches=tuple(batch) or None)
        result = bench_artifacts(artifacts or [], cfg)
        print_bench_table(result)
        for label, path in (("JSON", result.json_path), ("plot", result.plot_path)):
            if path:
                console.print(f"{label}: {path}")
