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
        import onnx

        from ..graph.cost import JETSON_TARGETS, graph_cost, tensor_info
        from ..graph.memory import memory_estimate
        from ..core.errors import DataError
        from ..core.utils import ensure_output_file, write_json

        if json_out is not None:
            ensure_output_file(json_out, "--json")
        out = {}
        for path in graphs:
            try:
                model = onnx.load(str(path), load_external_data=False)
            except Exception as e:  # noqa: BLE001 - onnx raises several types for a bad file
                raise DataError(f"{path}: not a readable ONNX graph ({type(e).__name__})") from None
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
