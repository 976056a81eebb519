"""The Jetson modules a graph is planned for: one :class:`Board` record per module (memory, bandwidth, DLA cores,
the TensorRT releases JetPack ships for it, the data sheet), read by the memory model, the cost model, export's
``--jetson`` and the build plan's DLA rules. No ONNX import: the export config reads the board names.

Sources (module data sheets, developer.nvidia.com/embedded/downloads): Jetson Orin Nano Series DS-11105 (Orin Nano
4GB / 8GB: no DLA), Jetson Orin NX Series DS-10712 (8GB: 1 NVDLA, 16GB: 2), Jetson AGX Orin Series DS-10662 (32GB /
64GB: 2 NVDLA), Jetson Thor Series (AGX Thor T5000: 128 GB LPDDR5X, 273 GB/s, no DLA). TensorRT per JetPack:
JetPack 6.x ships TensorRT 10.3 (Orin); JetPack 7.0 (Jetson Linux 38.2, Thor only) 10.13
(https://developer.nvidia.com/embedded/jetpack/downloads/archive-7.0); TensorRT 11.4.1 supports JetPack 7.2.2+ on
Jetson AGX Orin and Jetson AGX Thor only, with DLA on AGX Orin only ("Migrating TensorRT from 10.x to 11.x on
Jetson/JetPack" and "Working with DLA", TensorRT 11.4.1 docs:
https://docs.nvidia.com/deeplearning/tensorrt/11.4.1/inference-library/work-with-dla.html). TensorRT 10.14's release
notes (the first with ONNX ``Attention``) list x86, Windows and SBSA, no JetPack.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BOARDS", "BOARD_MEMORY_GIB", "Board", "DEFAULT_BOARD", "RESERVE_MIB", "board_budget_mib", "board_of"]

_NANO = "Jetson Orin Nano Series Modules Data Sheet DS-11105-001"
_NX = "Jetson Orin NX Series Modules Data Sheet DS-10712-001"
_AGX = "Jetson AGX Orin Series Modules Data Sheet DS-10662-001"
_THOR = "Jetson Thor Series Modules Data Sheet (Jetson T5000)"
#: JetPack release -> TensorRT release documented for each family (module docstring).
_ORIN_TRT = (("6.x", "10.3"),)
_AGX_ORIN_TRT = (("6.x", "10.3"), ("7.2.2+", "11.4.1"))
_THOR_TRT = (("7.0", "10.13"), ("7.2.2+", "11.4.1"))


@dataclass(frozen=True)
class Board:
    """One Jetson module.

    Attributes:
        name: the module's name. family: ``Orin`` or ``Thor`` (one JetPack line and GPU architecture each).
        memory_gib: LPDDR shared by CPU and GPU (GiB). bandwidth_gbs: memory bandwidth (GB/s).
        dla_cores: NVDLA cores (0: none). tensorrt: ``(JetPack, TensorRT)`` releases NVIDIA documents for it.
        source: the data sheet the figures come from.
    """

    name: str
    family: str
    memory_gib: float
    bandwidth_gbs: float
    dla_cores: int
    tensorrt: tuple[tuple[str, str], ...]
    source: str


#: Every module ``--jetson`` knows, keyed as ``cost.JETSON_TARGETS`` (which has a latency row only where a data
#: sheet gives the peaks it needs; Thor has none).
BOARDS: dict[str, Board] = {
    "orin-nano-4gb": Board("Jetson Orin Nano 4GB", "Orin", 4.0, 34.0, 0, _ORIN_TRT,
                           _NANO + ": 4GB 64-bit LPDDR5, 34 GB/s, no NVDLA"),
    "orin-nano-8gb": Board("Jetson Orin Nano 8GB", "Orin", 8.0, 68.0, 0, _ORIN_TRT,
                           _NANO + ": 8GB 128-bit LPDDR5, 68 GB/s, no NVDLA"),
    "orin-nano-8gb-super": Board("Jetson Orin Nano 8GB (MAXN_SUPER, JetPack 6.2)", "Orin", 8.0, 102.0, 0,
                                 (("6.2+", "10.3"),), _NANO + ": 8GB LPDDR5, 102 GB/s at MAXN_SUPER, no NVDLA"),
    "orin-nx-8gb": Board("Jetson Orin NX 8GB", "Orin", 8.0, 102.4, 1, _ORIN_TRT,
                         _NX + ": 8GB 128-bit LPDDR5, 102.4 GB/s, 1 NVDLA v2"),
    "orin-nx-16gb": Board("Jetson Orin NX 16GB", "Orin", 16.0, 102.4, 2, _ORIN_TRT,
                          _NX + ": 16GB 128-bit LPDDR5, 102.4 GB/s, 2 NVDLA v2"),
    "agx-orin-32gb": Board("Jetson AGX Orin 32GB", "Orin", 32.0, 204.8, 2, _AGX_ORIN_TRT,
                           _AGX + ": 32GB 256-bit LPDDR5, 204.8 GB/s, 2 NVDLA v2"),
    "agx-orin-64gb": Board("Jetson AGX Orin 64GB", "Orin", 64.0, 204.8, 2, _AGX_ORIN_TRT,
                           _AGX + ": 64GB 256-bit LPDDR5, 204.8 GB/s, 2 NVDLA v2"),
    "agx-thor-128gb": Board("Jetson AGX Thor (T5000) 128GB", "Thor", 128.0, 273.0, 0, _THOR_TRT,
                            _THOR + ": 128GB 256-bit LPDDR5X, 273 GB/s, no DLA"),
}
#: Memory of each module (GiB), read from :data:`BOARDS` (the ``--jetson`` choices, in this order).
BOARD_MEMORY_GIB: dict[str, float] = {key: b.memory_gib for key, b in BOARDS.items()}
#: The board export plans for by default: an 8 GB Orin Nano, so a graph that fits runs on every Orin but the 4 GB
#: Nano.
DEFAULT_BOARD = "orin-nano-8gb"
#: Memory kept for everything but the engine (MiB): JetPack's OS and services without a desktop (about 1 GiB),
#: the CUDA context and TensorRT's runtime (about 0.5 GiB) and the video pipeline's decode / encode buffers
#: (about 0.5 GiB). A stated planning figure, not a measurement on a device.
RESERVE_MIB = 2048.0


def board_budget_mib(board: str) -> float:
    """MiB a graph (weights + activations) may use on ``board``: its memory less :data:`RESERVE_MIB`."""
    return BOARDS[board].memory_gib * 1024 - RESERVE_MIB


def board_of(extra: dict | None) -> tuple[str, Board] | None:
    """``(key, Board)`` of the board a graph was exported for (``manifest.extra["memory"]["board"]``), or None
    (a graph exported before the board was recorded, or a key this version does not know)."""
    key = ((extra or {}).get("memory") or {}).get("board")
    return (key, BOARDS[key]) if isinstance(key, str) and key in BOARDS else None
