"""PAM's forms as numbers, without PyTorch: their names, how the queries are chunked, and what each costs
(attention-map elements and MatMul FLOPs). ``model.attention`` runs them; export, the cost model and the
memory budget read the costs from here, so the three never disagree.

Shapes: ``batch`` images, ``positions = L = (H/OS)(W/OS)``, ``d`` = Q/K channels (C/8), ``c`` = V channels.
"""

from __future__ import annotations

import math
from typing import Literal

__all__ = ["ATTENTION_IMPLS", "AttentionImpl", "EXPORT_FORMS", "MAX_CHUNKS", "MIN_AUTO_CHUNKS", "PAM_HEADS", "REFERENCE_CHUNK_MIB", "attention_flops",
           "chunk_bounds", "map_shape", "reference_chunks"]

AttentionImpl = Literal["sdpa", "explicit", "chunked", "heads"]
#: Every PAM implementation; ``sdpa`` is PyTorch-only (on a CPU it runs as ``chunked``; it exports as ``explicit``).
ATTENTION_IMPLS: tuple[str, ...] = ("sdpa", "explicit", "chunked", "heads")
#: The forms an exported graph can take (``export --attention``). ``attention-op`` is the heads form written as
#: ONNX's ``Attention`` operator (opset 23; ``graph.attention_op``): TensorRT >= 10.14 only; on a Jetson JetPack
#: 7.2.2+'s TensorRT 11.4.1, not JetPack 6's 10.3 nor JetPack 7.0's 10.13.
EXPORT_FORMS: tuple[str, ...] = ("explicit", "chunked", "heads", "attention-op")
#: Largest attention-map slice (MiB, FP32) the PyTorch reference holds on a CPU: above it the queries are
#: chunked, so ``eval`` / ``check`` / export's reference at large sizes never hold the whole ``N x L x L`` map.
REFERENCE_CHUNK_MIB = 256.0
#: Heads of the heads form: V's C channels over Q's and K's C/8 (every DANet here).
PAM_HEADS = 8
#: Most query chunks an exported graph takes (each chunk adds five nodes: Slice, MatMul, Softmax, Transpose,
#: MatMul); past it a size is refused rather than written as a graph thousands of nodes long.
MAX_CHUNKS = 64
#: Fewest query chunks ``export --attention auto`` writes when it chunks at all: on a CPU, 2 chunks cost 8.5 % more
#: time than the paper's form at 512x1024 (R-50, ONNX Runtime, denormals flushed), 4 and 8 within 1.3 % (NOTES);
#: 4 chunks also need less memory than 2.
MIN_AUTO_CHUNKS = 4


def chunk_bounds(length: int, chunks: int) -> list[tuple[int, int]]:
    """``chunks`` contiguous ``(start, stop)`` ranges covering ``0..length``, as equal as possible (the first
    ``length % chunks`` one longer). ``chunks`` is clipped to ``1..length``."""
    chunks = max(1, min(int(chunks), length))
    base, extra = divmod(length, chunks)
    bounds, start = [], 0
    for i in range(chunks):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def reference_chunks(batch: int, positions: int, limit_mib: float = REFERENCE_CHUNK_MIB) -> int:
    """Query chunks that keep one FP32 slice of the ``batch x L x L`` map at or under ``limit_mib`` (MiB)."""
    return max(1, min(positions, math.ceil(batch * positions * positions * 4 / 2**20 / limit_mib)))


def attention_flops(form: str, batch: int, positions: int, d: int, c: int) -> int:
    """MatMul FLOPs of PAM (a multiply-add is 2): ``2 batch L^2 (d + c)`` explicit or chunked; the heads form
    multiplies Q K once per head (``c / d`` heads) and each head's V of ``d`` channels: ``2 batch L^2 2c``."""
    if form in ("heads", "attention-op"):
        return 2 * batch * positions * positions * 2 * c
    return 2 * batch * positions * positions * (d + c)


def map_shape(form: str, batch: int, positions: int, chunks: int | None = None) -> list[int]:
    """Shape of the largest single attention-map tensor (a PAM MatMul's output) a graph of ``form`` holds:
    ``[N, L, L]`` explicit, ``[N, ceil(L / chunks), L]`` chunked (``chunks`` None: :func:`reference_chunks`),
    ``[N, PAM_HEADS, L, L]`` heads; ``[]`` for ``attention-op`` (its map is inside the Attention node, no tensor of
    the graph)."""
    if form == "attention-op":
        return []
    if form == "heads":
        return [batch, PAM_HEADS, positions, positions]
    if form == "chunked":
        k = chunks or reference_chunks(batch, positions)
        rows = max(b - a for a, b in chunk_bounds(positions, k))
        return [batch, rows, positions]
    return [batch, positions, positions]
