"""Memory a graph needs on a device, and whether it fits a Jetson: the model that picks PAM's form.

**Attention** (:func:`attention_form`): PAM's form read from the graph's structure (``precision.attention_nodes``):
one PAM Softmax over a 3-D ``(N, L, L)`` map is ``explicit``; several (one per query slice) ``chunked``; a
4-D ``(N, h, L, L)`` map with ``h > 1`` ``heads``. Its MatMul FLOPs and its largest map tensor (bytes, at the
graph's type) come with it.

**Activations** (:func:`memory_estimate`): a runtime that runs the nodes one by one in graph order holds, at
each node, every tensor produced earlier and still to be read, plus the node's outputs. The estimate is the
largest such set (weights excluded; graph inputs and outputs included): the peak of a liveness walk. ONNX
Runtime's CPU planner and TensorRT reuse freed memory the same way; neither can hold less than the largest
single node's inputs and outputs. A fused attention kernel (TensorRT) holds no map at all: the figure for an
unfused runtime is the safe one to plan with.

**Fit** per Jetson (``boards.BOARD_MEMORY_GIB``, ``boards.RESERVE_MIB``): weights + activation peak + the reserve must
be within the board's memory, which the CPU and GPU share.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import onnx

from .boards import BOARD_MEMORY_GIB, RESERVE_MIB
from .cost import _ITEMSIZE, _flops, tensor_info
from .precision import attention_nodes

__all__ = ["AttentionForm", "MemoryEstimate", "attention_form", "memory_estimate"]

@dataclass
class AttentionForm:
    """PAM as the graph holds it.

    Attributes:
        form: ``explicit``, ``chunked``, ``heads``, or ``none`` (no PAM found). chunks: query slices (1 unless
            chunked). heads: 1 unless the heads form. positions: L, the keys per query.
        map_mib: the largest single attention-map tensor (a Softmax's input), MiB at its type.
        gflop: PAM's MatMul GFLOPs (multiply-add = 2).
    """

    form: str
    chunks: int = 1
    heads: int = 1
    positions: int = 0
    map_mib: float = 0.0
    gflop: float = 0.0


@dataclass
class MemoryEstimate:
    """What a graph needs (MiB) and where it fits.

    Attributes:
        weights_mib: initializers at their stored type. activations_mib: peak of the liveness walk.
        other_mib: the same walk with PAM's map tensors counted as nothing: what every form of the attention
            shares (the base the form's maps add to).
        total_mib: their sum. attention: :class:`AttentionForm`. reserve_mib: kept for the rest of the system.
        boards: per :data:`BOARD_MEMORY_GIB` row ``{"memory_mib", "free_mib", "fits"}`` (free after the graph and
            the reserve; negative when it does not fit).
    """

    weights_mib: float
    activations_mib: float
    total_mib: float
    attention: AttentionForm
    other_mib: float = 0.0
    reserve_mib: float = RESERVE_MIB
    boards: dict[str, dict[str, Any]] = field(default_factory=dict)

    def fits(self, board: str) -> bool:
        return bool(self.boards[board]["fits"])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def record(self) -> dict[str, Any]:
        """The manifest's ``extra["memory"]``: MiB figures and, per board, whether the graph fits."""
        return {"weights_mib": self.weights_mib, "activations_mib": self.activations_mib,
                "total_mib": self.total_mib, "reserve_mib": self.reserve_mib,
                "fits": {b: r["fits"] for b, r in self.boards.items()}}


def _bytes(info: dict[str, tuple[int, list[int]]], name: str) -> int:
    etype, dims = info.get(name, (0, []))
    n = 1
    for d in dims:
        n *= max(d, 0)
    return n * _ITEMSIZE.get(etype, 4) if dims else 0


def attention_form(model: onnx.ModelProto,
                   inferred: tuple[onnx.GraphProto, dict[str, tuple[int, list[int]]]] | None = None) -> AttentionForm:
    """PAM's form, map size and FLOPs, read from the graph (see the module docstring)."""
    g, info = inferred or tensor_info(model)
    att = attention_nodes(model)
    if not att.pam_softmax:
        return AttentionForm("none")
    by_name = {n.name: n for n in g.node}
    maps = [info.get(by_name[s].input[0], (0, []))[1] for s in att.pam_softmax]
    rank4 = [m for m in maps if len(m) == 4]
    heads = rank4[0][1] if rank4 else 1
    form = "heads" if heads > 1 else ("chunked" if len(att.pam_softmax) > 1 else "explicit")
    biggest = max(_bytes(info, by_name[s].input[0]) for s in att.pam_softmax)
    flops = sum(_flops(by_name[m], info) for m in att.pam_energy + att.pam_out)
    return AttentionForm(form, len(att.pam_softmax), heads, maps[0][-1] if maps[0] else 0,
                         round(biggest / 2**20, 3), round(flops / 1e9, 3))


def _map_tensors(model: onnx.ModelProto, g: onnx.GraphProto) -> set[str]:
    """PAM's attention-map tensors: each energy MatMul's output, each Softmax's output and what layout nodes
    (Transpose, Cast, Q/DQ) make of it on the way to the output MatMul."""
    att = attention_nodes(model)
    by_name = {n.name: n for n in g.node}
    cons: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)
    names = {by_name[m].output[0] for m in att.pam_energy}
    frontier = [by_name[s].output[0] for s in att.pam_softmax]
    while frontier:
        t = frontier.pop()
        names.add(t)
        for c in cons.get(t, []):
            if c.op_type in ("Transpose", "Cast", "QuantizeLinear", "DequantizeLinear", "Reshape"):
                frontier.extend(c.output)
    return names


def _activation_peak(g: onnx.GraphProto, info: dict[str, tuple[int, list[int]]],
                     exclude: set[str] = frozenset()) -> int:  # type: ignore[assignment]
    """Largest set of live activations (bytes) over a walk of the nodes in graph order (``exclude``: tensors
    counted as 0 bytes)."""
    weights = {t.name for t in g.initializer}
    outputs = {o.name for o in g.output}
    last_use: dict[str, int] = {}
    for i, n in enumerate(g.node):
        for name in n.input:
            if name:
                last_use[name] = i
    live = {v.name: _bytes(info, v.name) for v in g.input if v.name not in weights}
    peak = sum(live.values())
    for i, n in enumerate(g.node):
        if n.op_type == "Constant":
            continue
        for o in n.output:
            if o:
                live[o] = 0 if o in exclude else _bytes(info, o)
        peak = max(peak, sum(live.values()))
        for name in set(n.input) | set(n.output):
            if name in live and name not in outputs and last_use.get(name, -1) <= i:
                del live[name]
    return peak


def memory_estimate(model: onnx.ModelProto, reserve_mib: float = RESERVE_MIB,
                    inferred: tuple[onnx.GraphProto, dict[str, tuple[int, list[int]]]] | None = None
                    ) -> MemoryEstimate:
    """Weights, activation peak and fit per Jetson of a static-shape graph (MiB; see the module docstring)."""
    g, info = inferred or tensor_info(model)
    weights = sum(_bytes(info, t.name) for t in g.initializer)
    acts = _activation_peak(g, info)
    other = _activation_peak(g, info, _map_tensors(model, g))
    est = MemoryEstimate(round(weights / 2**20, 1), round(acts / 2**20, 1), round((weights + acts) / 2**20, 1),
                         attention_form(model, (g, info)), other_mib=round(other / 2**20, 1),
                         reserve_mib=reserve_mib)
    for board, gib in BOARD_MEMORY_GIB.items():
        free = gib * 1024 - reserve_mib - est.total_mib
        est.boards[board] = {"memory_mib": gib * 1024, "free_mib": round(free, 1), "fits": free >= 0}
    return est
