"""``danet-edge cost``: compute by precision of ONNX graphs (``graph.cost.graph_cost``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import console
from .render import cost_tables


def register(app: typer.Typer) -> None:
    """Add ``cost`` to ``app``."""

    @app.command("cost", epilog="\b\nExamples:\n  danet-edge cost export/m/model_int8_trt.onnx\n  "
                                 "danet-edge cost export/m/*.onnx --json cost.json")
    def cost_cmd(
        graphs: list[Path] = typer.Argument(..., help="Static-shape ONNX graphs."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write the costs (with every node) as JSON here."),
    ) -> None:
        """Compute by precision (GFLOP, MiB moved), a latency lower bound on Jetson GPUs, PAM's form and whether
        the graph fits each Jetson's memory."""
        from ..graph.cost import JETSON_TARGETS, graph_cost, load_cost_graph, tensor_info
        from ..graph.memory import memory_estimate
        from ..core.utils import ensure_output_file, write_json

        if json_out is not None:
            ensure_output_file(json_out, "--json")
        models = {path: load_cost_graph(path) for path in graphs}  # every file refused before any table
        out = {}
        for path, model in models.items():
            inferred = tensor_info(model)
            cost = graph_cost(model, inferred=inferred)
            memory = memory_estimate(model, inferred=inferred)
            out[str(path)] = {**cost.to_dict(nodes=True), "memory": memory.to_dict()}
            for table in cost_tables(path, cost, memory):
                console.print(table)
            if cost.unknown_shapes:
                console.print(f"warning: no static shape for {len(cost.unknown_shapes)} Conv/MatMul nodes")
        if json_out is not None:
            write_json(json_out, {"targets": {k: vars(v) for k, v in JETSON_TARGETS.items()}, "graphs": out})
            console.print(f"JSON: {json_out}")
