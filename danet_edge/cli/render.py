"""How the command line shows results: rich tables built from the stages' result records (no stage module
renders; each returns a record and the CLI draws it here)."""

from __future__ import annotations

from typing import Any

from ..infer.results import InferSummary, summary_lines

__all__ = ["summary_table"]


def summary_table(summary: InferSummary) -> Any:
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
