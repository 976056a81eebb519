"""``danet-edge demo``: the main job end to end on the embedded synthetic data (``demo.run_demo``)."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import check_outputs, opt
from .render import console, paths_table, print_bench_table, print_check_table, summary_table


def register(app: typer.Typer) -> None:
    """Add ``demo`` to the app. Defaults are read from ``DemoConfig``."""
    from ..demo import DemoConfig

    @app.command()
    def demo(
        out: Path = opt(DemoConfig, "out", "--out", "-o"),
        quick: bool = typer.Option(False, help="Tiny sizes and one epoch (a smoke run of every stage)."),
    ) -> None:
        """The main job on the embedded synthetic data: train, export FP32/FP16/INT8, check, bench, infer a video."""
        from ..demo import run_demo

        check_outputs(out=out)
        result = run_demo(DemoConfig.quick(out) if quick else DemoConfig(out=out))
        print_check_table(result.check)
        print_bench_table(result.bench)
        if result.infer is not None:
            console.print(summary_table(result.infer))
        console.print(paths_table(f"danet-edge demo: {result.wall_s:.0f} s", result.paths))
        if result.failed:
            console.print(f"[red]check failed:[/] {result.failed}")
