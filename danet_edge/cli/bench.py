"""``danet-edge bench``: latency, throughput, memory and power of artifacts side by side (``bench.run.bench_artifacts``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import check_outputs
from .render import console, print_bench_table


def register(app: typer.Typer) -> None:
    """Add ``bench`` to the app. Defaults are read from ``BenchConfig``."""
    from ..bench.config import BenchConfig

    bc = BenchConfig()

    @app.command(epilog="\b\nExamples:\n  danet-edge bench export/m/*.onnx -r best.pt --json bench.json --plot bench.png\n  "
                        "danet-edge bench model_int8_trt.engine model_fp16.engine -r best.pt")
    def bench(
        artifacts: list[Path] = typer.Argument(None, help="Artifacts to time: .onnx, .engine/.plan, .pt."),
        reference: Optional[Path] = typer.Option(None, "--reference", "-r", help="PyTorch checkpoint timed as the FP32 eager reference."),
        warmup: int = typer.Option(bc.warmup, help="Untimed runs before timing, at least (see --warmup-s)."),
        warmup_s: float = typer.Option(bc.warmup_s, "--warmup-s", help="Untimed time before timing, at least, in "
                                       "seconds (trtexec --warmUp, in ms there); 0: --warmup runs only."),
        runs: int = typer.Option(bc.runs, help="Timed runs, at least (see --duration)."),
        duration_s: float = typer.Option(bc.duration_s, "--duration", help="Timed window, at least, in seconds "
                                         "(trtexec --duration): timing ends when both --runs and this are done, "
                                         "or at max(--runs, 10000) runs; 0: --runs only."),
        batch: list[int] = typer.Option([], help="Batch sizes for PyTorch (static graphs run at their own batch); repeatable."),
        threads: Optional[int] = typer.Option(bc.threads, help="CPU threads for PyTorch and ONNX Runtime."),
        device: Optional[str] = typer.Option(bc.device, help="Torch device for PyTorch entries (cpu, cuda)."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report as JSON here."),
        plot: Optional[Path] = typer.Option(None, help="Accuracy-vs-latency plot (PNG)."),
        check_json: Optional[Path] = typer.Option(None, help="A check JSON: its mIoU goes into the plot."),
        out: Optional[Path] = typer.Option(None, "--out", "-o",
                                           help="Folder for bench.json and bench.png (unless --json / --plot say)."),
    ) -> None:
        """Latency (mean, p50, p90, p99 ms) end to end and of the model alone, FPS and peak memory per artifact,
        with speed-up vs PyTorch FP32; on a Jetson also the power mode, clocks and W, mJ/frame, FPS/W.
        """
        from ..bench.run import bench_artifacts

        check_outputs(out=out)
        if out is not None:
            json_out = json_out or out / "bench.json"
            plot = plot or out / "bench.png"
        check_outputs(json=json_out, plot=plot)
        cfg = BenchConfig(reference=reference, warmup=warmup, runs=runs, warmup_s=warmup_s, duration_s=duration_s,
                          batches=tuple(batch) or None,
                          threads=threads, device=device, check_json=check_json, json_path=json_out, plot_path=plot)
        result = bench_artifacts(artifacts or [], cfg)
        print_bench_table(result)
        for label, path in (("JSON", result.json_path), ("plot", result.plot_path)):
            if path:
                console.print(f"{label}: {path}")
