"""Memory a graph needs on a device, and whether it fits a Jetson: the model that picks PAM's form.

**Attention** (:func:`attention_form`): PAM's form read from the graph's structure (``precision.attention_nodes``):
one PAM Softmax over a 3-D ``(N, L, L)`` map is ``explicit``; several (one per query slice) ``chunked``; a
4-D ``(N, h, L, L)`` map with ``h > 1`` ``heads``; ONNX ``Attention`` nodes ``attention-op`` (their map is inside
the node: counted as the ``(N, h, L, L)`` FP32 map an unfused runtime holds while it runs). Its MatMul FLOPs and its largest map tensor (bytes, at the
graph's type) come with it.

**Activations** (:func:`memory_estimate`): a runtime that runs the nodes one by one (in :func:`dfs_order`) holds, at
each node, every tensor produced earlier and still to be read, plus the node's outputs. The estimate is the
largest such set (weights excluded; graph inputs and outputs included): the peak of a liveness walk, in which
an element-wise op, a Softmax or a view writes over its first input when that input dies there, and a Transpose
read only by MatMuls costs nothing (both runtimes fold it into the GEMM). ONNX Runtime's CPU planner and
TensorRT reuse memory this way. The explicit form then holds one ``L x L`` map at a time (the energy, which the
Softmax overwrites); the chunked form one slice. A fused attention kernel (TensorRT) holds no map at all: the
figure for an unfused runtime is the safe one to plan with.

**Fit** per Jetson (``boards.BOARDS``, ``boards.RESERVE_MIB``): weights + activation peak + the reserve must
be within the board's memory, which the CPU and GPU share.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import onnx

from .boards import BOARD_MEMORY_GIB, RESERVE_MIB
from .cost import _ITEMSIZE, _flops, _numel, tensor_info
from .precision import attention_nodes, consumers

__all__ = ["AttentionForm", "MemoryEstimate", "attention_form", "dfs_order", "memory_estimate"]

@dataclass
class AttentionForm:
    """PAM as the graph holds it.

    Attributes:
        form: ``explicit``, ``chunked``, ``heads``, ``attention-op``, or ``none`` (no PAM found). chunks: query slices (1 unless
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
            shares. beside_map_mib: the most other activations live while an attention map is (what the maps
            add to): the peak of a form with slices of ``S`` MiB is about ``max(other, beside_map + 2 S)``.
        total_mib: their sum. attention: :class:`AttentionForm`. reserve_mib: kept for the rest of the system.
        boards: per :data:`BOARD_MEMORY_GIB` row ``{"memory_mib", "free_mib", "fits"}`` (free after the graph and
            the reserve; negative when it does not fit).
    """

    weights_mib: float
    activations_mib: float
    total_mib: float
    attention: AttentionForm
    other_mib: float = 0.0
    beside_map_mib: float = 0.0
    reserve_mib: float = RESERVE_MIB
    boards: dict[str, dict[str, Any]] = field(default_factory=dict)

    def fits(self, board: str) -> bool:
        return bool(self.boards[board]["fits"])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def record(self, board: str | None = None) -> dict[str, Any]:
        """The manifest's ``extra["memory"]``: MiB figures (``other_mib``, ``beside_map_mib`` and PAM's
        ``positions`` L too: what the chunked form of the same weights needs, ``export.limits``), per board
        whether the graph fits, and ``board``: the ``--jetson`` board it was exported for (``boards.board_of``
        reads it back; the build plan's DLA rules use it), when given."""
        return {"weights_mib": self.weights_mib, "activations_mib": self.activations_mib,
                "total_mib": self.total_mib, "other_mib": self.other_mib, "beside_map_mib": self.beside_map_mib,
                "positions": self.attention.positions, "reserve_mib": self.reserve_mib,
                "fits": {b: r["fits"] for b, r in self.boards.items()}, **({"board": board} if board else {})}


def _bytes(info: dict[str, tuple[int, list[int]]], name: str) -> int:
    etype, dims = info.get(name, (0, []))
    return _numel(dims) * _ITEMSIZE.get(etype, 4) if dims else 0


def attention_form(model: onnx.ModelProto,
                   inferred: tuple[onnx.GraphProto, dict[str, tuple[int, list[int]]]] | None = None) -> AttentionForm:
    """PAM's form, map size and FLOPs, read from the graph (see the module docstring)."""
    g, info = inferred or tensor_info(model)
    att = attention_nodes(model)
    by_name = {n.name: n for n in g.node}
    if att.pam_op:
        q = info.get(by_name[att.pam_op[0]].input[0], (0, []))[1]
        k = info.get(by_name[att.pam_op[0]].input[1], (0, []))[1]
        return AttentionForm("attention-op", len(att.pam_op), q[1] if len(q) == 4 else 1, k[2] if len(k) == 4 else 0,
                             round(max(_op_map_bytes(by_name[a], info) for a in att.pam_op) / 2**20, 6),
                             round(sum(_op_matmul_flops(by_name[a], info) for a in att.pam_op) / 1e9, 6))
    if not att.pam_softmax:
        return AttentionForm("none")
    maps = [info.get(by_name[s].input[0], (0, []))[1] for s in att.pam_softmax]
    rank4 = [m for m in maps if len(m) == 4]
    heads = rank4[0][1] if rank4 else 1
    form = "heads" if heads > 1 else ("chunked" if len(att.pam_softmax) > 1 else "explicit")
    biggest = max(_bytes(info, by_name[s].input[0]) for s in att.pam_softmax)
    flops = sum(_flops(by_name[m], info) for m in att.pam_energy + att.pam_out)
    return AttentionForm(form, len(att.pam_softmax), heads, maps[0][-1] if maps[0] else 0,
                         round(biggest / 2**20, 6), round(flops / 1e9, 6))


def _op_map_bytes(n: onnx.NodeProto, info: dict[str, tuple[int, list[int]]]) -> int:
    """The ``(N, h, L, S)`` map an ONNX ``Attention`` node holds inside when its runtime does not fuse it (FP32)."""
    q, k = (info.get(t, (0, []))[1] for t in n.input[:2])
    return _numel(q[:3]) * k[2] * 4 if len(q) == 4 and len(k) == 4 else 0


def _op_matmul_flops(n: onnx.NodeProto, info: dict[str, tuple[int, list[int]]]) -> int:
    """The two MatMuls inside an ONNX ``Attention`` node: ``2 N h L S (d + dv)`` (what the other forms count)."""
    q, k, v = (info.get(t, (0, []))[1] for t in n.input[:3])
    return 2 * _numel(q[:3]) * k[2] * (q[3] + v[3]) if len(q) == len(k) == len(v) == 4 else 0


def _map_tensors(model: onnx.ModelProto, g: onnx.GraphProto) -> set[str]:
    """PAM's attention-map tensors: each energy MatMul's output, each Softmax's output and what layout nodes
    (Transpose, Cast, Q/DQ) make of it on the way to the output MatMul."""
    att = attention_nodes(model)
    by_name = {n.name: n for n in g.node}
    cons = consumers(g)
    names = {by_name[m].output[0] for m in att.pam_energy}
    frontier = [by_name[s].output[0] for s in att.pam_softmax]
    while frontier:
        t = frontier.pop()
        names.add(t)
        for c in cons.get(t, []):
            if c.op_type in ("Transpose", "Cast", "QuantizeLinear", "DequantizeLinear", "Reshape"):
                frontier.extend(c.output)
    return names


#: Ops whose output can take over the buffer of a first input that dies there (same size): views (Reshape and
#: the like), element-wise ops and Softmax. ONNX Runtime's allocation planner reuses such buffers, TensorRT runs
#: element-wise layers in place.
_IN_PLACE = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Relu", "Add", "Sub", "Mul", "Div",
                       "Sigmoid", "Clip", "Softmax", "BatchNormalization", "Dropout"})


def _in_place(n: onnx.NodeProto, consumers: dict[str, list[onnx.NodeProto]]) -> bool:
    """Whether ``n`` can write its output over its first input: an op of :data:`_IN_PLACE`, or a Transpose read
    only by MatMuls (which read a transposed operand in place: ONNX Runtime fuses it into the MatMul, TensorRT
    into the GEMM)."""
    if n.op_type in _IN_PLACE:
        return True
    return n.op_type == "Transpose" and bool(consumers.get(n.output[0])) and all(
        c.op_type in ("MatMul", "Gemm") for c in consumers[n.output[0]])


def dfs_order(g: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes in the order a depth-first walk from the graph's outputs produces them (each node after its
    inputs' producers, in input order): the order ONNX Runtime's sequential executor runs them in, which finishes
    one attention chunk (Slice, MatMul, Softmax, Transpose, MatMul) before it starts the next. Nodes no output
    depends on come last, in graph order."""
    producer = {o: n for n in g.node for o in n.output if o}
    done: set[int] = set()
    order: list[onnx.NodeProto] = []
    for root in [producer[o.name] for o in g.output if o.name in producer] + list(g.node):
        stack: list[tuple[onnx.NodeProto, int]] = [(root, 0)]
        while stack:
            node, i = stack.pop()
            if id(node) in done:
                continue
            inputs = [producer[t] for t in node.input if t in producer]
            if i < len(inputs):
                stack.append((node, i + 1))
                if id(inputs[i]) not in done:
                    stack.append((inputs[i], 0))
                continue
            done.add(id(node))
            order.append(node)
    return order


def _liveness(g: onnx.GraphProto, info: dict[str, tuple[int, list[int]]], maps: set[str],
              scratch: dict[str, int] | None = None) -> tuple[int, int, int]:
    """A walk of the nodes in :func:`dfs_order`, holding each activation from the node that makes it to the last
    that reads it, an in-place node's output in its dying input's buffer (:func:`_in_place`):
    ``(peak of all live bytes, peak without the map tensors in ``maps``, the most non-map bytes live while a map
    tensor is)``. ``scratch``: bytes a node holds inside while it runs (an ``Attention`` node's map), counted as a
    map."""
    scratch = scratch or {}
    weights = {t.name for t in g.initializer}
    outputs = {o.name for o in g.output}
    nodes = dfs_order(g)
    last_use: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for name in n.input:
            if name:
                last_use[name] = i
    cons = consumers(g)
    live = {v.name: _bytes(info, v.name) for v in g.input if v.name not in weights}
    peak = other = at_maps = sum(live.values())
    for i, n in enumerate(nodes):
        if n.op_type == "Constant":
            continue
        first = n.input[0] if n.input else ""
        if (first in live and first not in outputs and last_use.get(first, -1) <= i and _in_place(n, cons)
                and _bytes(info, n.output[0]) <= live[first]):
            del live[first]  # the output takes the input's buffer
        for o in n.output:
            if o:
                live[o] = _bytes(info, o)
        inside = scratch.get(n.name, 0)
        total = sum(live.values()) + inside
        in_maps = sum(v for k, v in live.items() if k in maps) + inside
        peak, other = max(peak, total), max(other, total - in_maps)
        if in_maps:
            at_maps = max(at_maps, total - in_maps)
        for name in set(n.input) | set(n.output):
            if name in live and name not in outputs and last_use.get(name, -1) <= i:
                del live[name]
    return peak, other, at_maps


def memory_estimate(model: onnx.ModelProto, reserve_mib: float = RESERVE_MIB,
                    inferred: tuple[onnx.GraphProto, dict[str, tuple[int, list[int]]]] | None = None
                    ) -> MemoryEstimate:
    """Weights, activation peak and fit per Jetson of a static-shape graph (MiB; see the module docstring)."""
    g, info = inferred or tensor_info(model)
    weights = sum(_bytes(info, t.name) for t in g.initializer)
    scratch = {n.name: _op_map_bytes(n, info) for n in g.node if n.op_type == "Attention"}
    acts, other, at_maps = _liveness(g, info, _map_tensors(model, g), scratch)
    est = MemoryEstimate(round(weights / 2**20, 3), round(acts / 2**20, 3), round((weights + acts) / 2**20, 3),
                         attention_form(model, (g, info)), other_mib=round(other / 2**20, 3),
                         beside_map_mib=round(at_maps / 2**20, 3),
                         reserve_mib=reserve_mib)
    for board, gib in BOARD_MEMORY_GIB.items():
        free = gib * 1024 - reserve_mib - est.total_mib
        est.boards[board] = {"memory_mib": gib * 1024, "free_mib": round(free, 1), "fits": free >= 0}
    return est
