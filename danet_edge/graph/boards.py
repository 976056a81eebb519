"""Memory of the Jetson modules the graph must fit, and what is kept for the rest of the system (no ONNX
import: the export config reads the board names)."""

from __future__ import annotations

__all__ = ["BOARD_MEMORY_GIB", "DEFAULT_BOARD", "RESERVE_MIB", "board_budget_mib"]

#: Memory of each Jetson module (GiB, shared by CPU and GPU), keyed as ``cost.JETSON_TARGETS``. Sources: Jetson
#: Orin Nano / Orin NX / AGX Orin module data sheets (DS-11105, DS-10712, DS-10662).
BOARD_MEMORY_GIB: dict[str, float] = {"orin-nano-8gb": 8.0, "orin-nano-8gb-super": 8.0, "orin-nx-16gb": 16.0,
                                      "agx-orin-64gb": 64.0}
#: The board export plans for by default: the smallest, so a graph that fits runs on every Orin.
DEFAULT_BOARD = "orin-nano-8gb"
#: Memory kept for everything but the engine (MiB): JetPack's OS and services without a desktop (about 1 GiB),
#: the CUDA context and TensorRT's runtime (about 0.5 GiB) and the video pipeline's decode / encode buffers
#: (about 0.5 GiB). A stated planning figure, not a measurement on a device.
RESERVE_MIB = 2048.0


def board_budget_mib(board: str) -> float:
    """MiB a graph (weights + activations) may use on ``board``: its memory less :data:`RESERVE_MIB`."""
    return BOARD_MEMORY_GIB[board] * 1024 - RESERVE_MIB
