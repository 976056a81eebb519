"""Compute by precision: FLOPs and bytes moved per node of a static-shape ONNX graph, grouped by the
precision each node really runs at, and a roofline lower bound of latency on named Jetson GPUs.

**Precision of a node** (the one rule, also used by ``precision.precision_report``): a Conv, MatMul or
Gemm whose data inputs (activation and weight) all come from ``DequantizeLinear`` runs INT8 (TensorRT
fuses the DQ into the kernel: "Explicit Quantization", TensorRT developer guide); any other node runs at
the type of its first floating-point input (strong typing: the type the graph gives it). Q/DQ nodes are
counted as fused (no FLOPs, no bytes); Casts and Transposes move bytes and compute nothing; Reshape-like
ops are free.

**FLOPs** (a multiply-add is 2): Conv ``2 * N * Cout * Ho * Wo * Cin/group * kh * kw``; MatMul / Gemm
``2 * batch * M * K * N``; pointwise ops 1 per output element; Softmax 5 per element (max, subtract,
exp, sum, divide); reductions 1 per input element; pooling ``kh * kw`` per output element; linear Resize
6 per output element (nearest: none). Biases are not counted (as ``torch.utils.flop_counter``).

**Bytes moved** per node: every input and output tensor once, at its element size; inputs that come
from a DequantizeLinear count 1 byte per element (the INT8 kernel reads INT8). Fusion is not modelled,
so their sum is an upper estimate of the traffic (``unfused``). What any engine must move at least once
is the weights at their stored type plus the graph's input and output (``essential``).

**Latency bound**: ``max(sum over precisions of FLOPs / peak(precision), essential bytes / bandwidth)``
per target, from the published dense GPU peaks in :data:`JETSON_TARGETS`: a true lower bound. An estimate of what no engine
can beat, not a prediction: kernel efficiency, tactic choice, fusion and launch overhead are unknown
here and only a device shows them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from dataclasses import asdict, dataclass, field
from typing import Any

import onnx
from onnx import TensorProto

from .boards import BOARDS

__all__ = ["load_cost_graph", "is_static", "NodeCost", "GraphCost", "GpuTarget", "JETSON_TARGETS", "graph_cost", "node_precisions",
           "LAYOUT_OPS", "FLOAT_DTYPES", "WEIGHTED_OPS", "format_cost", "tensor_info"]

#: Ops that move or relabel data and compute nothing (excluded from precision counts).
LAYOUT_OPS = frozenset({"Cast", "QuantizeLinear", "DequantizeLinear", "Constant", "Reshape", "Transpose",
                        "Identity", "Squeeze", "Unsqueeze", "Concat", "Flatten", "Shape", "Slice", "Gather"})
#: ONNX float element types -> precision names.
FLOAT_DTYPES = {TensorProto.FLOAT: "fp32", TensorProto.FLOAT16: "fp16", TensorProto.BFLOAT16: "bf16",
                TensorProto.DOUBLE: "fp64"}
_ITEMSIZE = {TensorProto.FLOAT: 4, TensorProto.FLOAT16: 2, TensorProto.BFLOAT16: 2, TensorProto.DOUBLE: 8,
             TensorProto.INT8: 1, TensorProto.UINT8: 1, TensorProto.INT32: 4, TensorProto.INT64: 8,
             TensorProto.BOOL: 1}
#: Ops with weights that Q/DQ quantizes (TensorRT explicit quantization: their inputs take Q/DQ).
WEIGHTED_OPS = ("Conv", "MatMul", "Gemm")
_POINTWISE = frozenset({"Relu", "Add", "Sub", "Mul", "Div", "Sigmoid", "Tanh", "Clip", "Exp", "Sqrt", "Neg",
                        "Abs", "LeakyRelu", "HardSigmoid", "HardSwish", "Erf", "Pow", "Max", "Min",
                        "BatchNormalization", "Where", "Equal", "Greater", "Less", "Not"})
_FREE = frozenset({"Constant", "Reshape", "Identity", "Squeeze", "Unsqueeze", "Flatten", "Shape",
                   "QuantizeLinear", "DequantizeLinear"})


@dataclass(frozen=True)
class GpuTarget:
    """A GPU's published dense peaks: INT8 tensor TOPS, FP16 tensor TFLOPS, FP32 CUDA-core TFLOPS, memory
    bandwidth (GB/s), and where each figure comes from."""

    name: str
    int8_tops: float
    fp16_tflops: float
    fp32_tflops: float
    bandwidth_gbs: float
    source: str

    def peak(self, precision: str) -> float:
        """FLOP/s (or OP/s) at ``precision``; bf16 as fp16, anything else as fp32."""
        return 1e12 * {"int8": self.int8_tops, "fp16": self.fp16_tflops, "bf16": self.fp16_tflops}.get(
            precision, self.fp32_tflops)


_AGX = "Jetson AGX Orin Series Modules Data Sheet DS-10662-001 v1.6, tables 1-2/1-3"
_NX = "Jetson Orin NX Series Modules Data Sheet DS-10712-001 v1.5"
_NANO = "Jetson Orin Nano Series Modules Data Sheet DS-11105-001 v1.5"


def _row(board: str, name: str, int8: float, fp16: float, fp32: float, source: str) -> GpuTarget:
    """A target whose bandwidth is the board's (``boards.BOARDS``: one home for the module's figures)."""
    return GpuTarget(name, int8, fp16, fp32, BOARDS[board].bandwidth_gbs, source)


#: GPU only (no DLA), dense peaks (NVIDIA publishes sparse tensor-core figures: dense = sparse / 2). Where a
#: sheet gives no tensor figure for a module, it is derived from the AGX sheet's per-tensor-core rate
#: (INT8 1024 dense ops, FP16 512 per clock per tensor core) x tensor cores x GPU clock, which reproduces
#: every published dense INT8 figure (Nano 8GB 20 / 33 TOPS, Nano 4GB 10, NX 16GB GPU 30 TOPS = (100 - 40 DLA) / 2,
#: NX 8GB GPU 25 = (70 - 20 DLA) / 2); FP32 is CUDA cores x 2 x clock, as published. Data sheets:
#: developer.nvidia.com/embedded/downloads. **No row for Jetson AGX Thor**: the AI figures NVIDIA publishes for its
#: T5000 module are FP4 / FP8 tensor TFLOPS (2070 / 1035, as published); no published dense INT8, FP16 or FP32
#: peak was found to base a floor on, and none is derived here (Blackwell's per-core rates are not Ampere's), so Thor
#: has memory (``boards.BOARDS``) and no latency floor. Code reading this table takes the boards it has.
JETSON_TARGETS: dict[str, GpuTarget] = {
    "agx-orin-64gb": _row("agx-orin-64gb", "Jetson AGX Orin 64GB, MAXN (1.3 GHz GPU)", 85.0, 42.5, 5.32,
                          _AGX + ": 170 sparse INT8 TOPS, 85 sparse FP16 TFLOPS, 5.32 FP32 TFLOPS, 204.8 GB/s"),
    "agx-orin-32gb": _row("agx-orin-32gb", "Jetson AGX Orin 32GB, MAXN (930 MHz GPU)", 53.3, 26.7, 3.33,
                          _AGX + ": 200 sparse INT8 TOPS incl. 2 DLA, 1792 CUDA / 56 tensor cores at 930 MHz, "
                          "204.8 GB/s; INT8, FP16, FP32 derived from the cores and clock"),
    "orin-nx-16gb": _row("orin-nx-16gb", "Jetson Orin NX 16GB, MAXN (918 MHz GPU)", 30.1, 15.0, 1.88,
                         _NX + ": 100 sparse INT8 TOPS incl. 40 DLA, 1.88 FP32 TFLOPS, 102.4 GB/s; FP16 derived"),
    "orin-nx-8gb": _row("orin-nx-8gb", "Jetson Orin NX 8GB, MAXN (765 MHz GPU)", 25.1, 12.5, 1.57,
                        _NX + ": 70 sparse INT8 TOPS incl. 20 DLA, 1024 CUDA / 32 tensor cores at 765 MHz, "
                        "102.4 GB/s; INT8 = (70 - 20) / 2, FP16, FP32 derived"),
    "orin-nano-8gb": _row("orin-nano-8gb", "Jetson Orin Nano 8GB, 15 W (625 MHz GPU)", 20.0, 10.2, 1.28,
                          _NANO + ": 20 dense INT8 TOPS, 1.28 FP32 TFLOPS, 68 GB/s; FP16 derived"),
    "orin-nano-8gb-super": _row("orin-nano-8gb-super", "Jetson Orin Nano 8GB, MAXN_SUPER (1020 MHz GPU, JetPack 6.2)",
                                33.0, 16.7, 2.08, _NANO + ": 33 dense INT8 TOPS, 2.08 FP32 TFLOPS, 102 GB/s; "
                                "FP16 derived"),
    "orin-nano-4gb": _row("orin-nano-4gb", "Jetson Orin Nano 4GB, 10 W (625 MHz GPU)", 10.0, 5.12, 0.64,
                          _NANO + ": 10 dense INT8 TOPS, 512 CUDA / 16 tensor cores at 625 MHz, 34 GB/s; "
                          "FP16, FP32 derived"),
}


@dataclass
class NodeCost:
    """One node: ``flops`` (multiply-add = 2), ``bytes`` moved (inputs + outputs), the precision it runs at
    (``int8``/``fp16``/``fp32``..., None for layout ops)."""

    name: str
    op_type: str
    precision: str | None
    flops: int
    bytes: int


@dataclass
class GraphCost:
    """A graph's cost by precision.

    Attributes:
        nodes: per node, in graph order.
        by_precision: ``{precision: {"gflop", "flop_share_pct", "mib"}}`` (GFLOP = 1e9 FLOPs, MiB moved).
        total_gflop, total_mib: sums over every node.
        bound_ms: per :data:`JETSON_TARGETS` row: ``compute_ms`` (FLOPs at each precision's peak),
            ``memory_ms`` (``essential_mib`` at the memory bandwidth), ``bound_ms`` = the larger of the two (a
            lower bound), and ``unfused_memory_ms`` (``total_mib`` at the bandwidth: the traffic if no node
            fused with its neighbour, an upper estimate, not part of the bound).
        essential_mib: weights (at their stored type: INT8 behind Q/DQ) and graph inputs/outputs, moved once.
        unknown_shapes: Conv/MatMul/Gemm nodes whose shapes shape inference could not give (their FLOPs are
            missing from the figures; none in graphs ``export`` writes, which are constant-folded).
    """

    nodes: list[NodeCost]
    by_precision: dict[str, dict[str, float]]
    total_gflop: float
    total_mib: float
    bound_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    unknown_shapes: list[str] = field(default_factory=list)
    essential_mib: float = 0.0

    def share(self, precision: str) -> float:
        """Percent of the FLOPs that run at ``precision`` (0 when none)."""
        return self.by_precision.get(precision, {}).get("flop_share_pct", 0.0)

    def to_dict(self, nodes: bool = False) -> dict[str, Any]:
        """JSON-ready summary (the node list only with ``nodes``: it is long for a full DANet)."""
        d = {"by_precision": self.by_precision, "total_gflop": self.total_gflop, "total_mib": self.total_mib,
             "essential_mib": self.essential_mib,
             "bound_ms": self.bound_ms, "unknown_shapes": self.unknown_shapes, "note": "estimate: FLOPs from static shapes, lower bound from "
             "published dense peaks; fusion, kernel efficiency and launch overhead not modelled"}
        if nodes:
            d["nodes"] = [asdict(n) for n in self.nodes]
        return d


def tensor_info(model: onnx.ModelProto) -> tuple[onnx.GraphProto, dict[str, tuple[int, list[int]]]]:
    """Shape-inferred graph and ``name -> (elem_type, dims)`` of every tensor with a known static shape."""
    g = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    info: dict[str, tuple[int, list[int]]] = {}
    for t in g.initializer:
        info[t.name] = (t.data_type, list(t.dims))
    for v in list(g.input) + list(g.output) + list(g.value_info):
        tt = v.type.tensor_type if v.type.HasField("tensor_type") else None
        if tt is None:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim] if tt.HasField("shape") else []
        info[v.name] = (tt.elem_type, dims)
    return g, info


def node_precisions(graph: onnx.GraphProto, info: dict[str, tuple[int, list[int]]]) -> dict[str, str | None]:
    """``node name -> precision`` by the module docstring's rule (None for layout ops and non-float nodes)."""
    producer = {o: n for n in graph.node for o in n.output}
    out: dict[str, str | None] = {}
    for n in graph.node:
        float_inputs = [i for i in n.input if i and info.get(i, (0, []))[0] in FLOAT_DTYPES]
        if n.op_type in LAYOUT_OPS or not float_inputs:
            out[n.name] = None
            continue
        if n.op_type in WEIGHTED_OPS:
            data = [i for i in n.input[:2] if i]
            if data and all(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in data):
                out[n.name] = "int8"
                continue
        out[n.name] = FLOAT_DTYPES[info[float_inputs[0]][0]]
    return out


def _sig(x: float, digits: int = 6) -> float:
    """``x`` to ``digits`` significant digits (JSON stays short; tiny graphs keep their figures)."""
    return float(f"{x:.{digits}g}")


def _numel(dims: list[int]) -> int:
    return math.prod(dims) if dims and all(d > 0 for d in dims) else (1 if dims == [] else 0)


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _flops(n: onnx.NodeProto, info: dict[str, tuple[int, list[int]]]) -> int:
    def dims(name: str) -> list[int]:
        return info.get(name, (0, []))[1]

    out = dims(n.output[0]) if n.output else []
    if n.op_type == "Conv":
        w = dims(n.input[1])
        if len(w) < 3 or not _numel(out):
            return 0
        return 2 * _numel(out) * math.prod(w[1:])  # each output element: Cin/group * kh * kw multiply-adds
    if n.op_type in ("MatMul", "Gemm"):
        a, b = dims(n.input[0]), dims(n.input[1])
        if len(a) < 2 or len(b) < 2 or not _numel(out):
            return 0
        k = a[0] if n.op_type == "Gemm" and _attr(n, "transA", 0) else a[-1]
        return 2 * _numel(out) * k
    if n.op_type == "Attention":  # ONNX Attention, 4-D: Q (N, h, L, d), K (N, h, S, d), V (N, h, S, dv)
        q, k, v = (dims(t) for t in n.input[:3])
        if len(q) != 4 or len(k) != 4 or len(v) != 4:
            return 0
        return 2 * _numel(q[:3]) * k[2] * (q[3] + v[3]) + 5 * _numel(q[:3]) * k[2]  # two MatMuls + the softmax
    if n.op_type in _POINTWISE:
        return _numel(out)
    if n.op_type in ("Softmax", "LogSoftmax"):
        return 5 * _numel(out)
    if n.op_type.startswith("Reduce") or n.op_type in ("ArgMax", "ArgMin"):
        return _numel(dims(n.input[0]))
    if n.op_type in ("MaxPool", "AveragePool"):
        return _numel(out) * math.prod(_attr(n, "kernel_shape", [1]))
    if n.op_type in ("GlobalAveragePool", "GlobalMaxPool"):
        return _numel(dims(n.input[0]))
    if n.op_type == "Resize":
        mode = _attr(n, "mode", b"nearest")
        return 6 * _numel(out) if (mode.decode() if isinstance(mode, bytes) else mode) != "nearest" else 0
    return 0


def _bytes(n: onnx.NodeProto, info: dict[str, tuple[int, list[int]]], producer: dict[str, onnx.NodeProto]) -> int:
    if n.op_type in _FREE:
        return 0
    total = 0
    for name in [i for i in n.input if i] + [o for o in n.output if o]:
        etype, dims = info.get(name, (0, []))
        size = 1 if (producer.get(name) is not None and producer[name].op_type == "DequantizeLinear") \
            else _ITEMSIZE.get(etype, 4)
        total += _numel(dims) * size
    return total


def _essential_bytes(g: onnx.GraphProto, info: dict[str, tuple[int, list[int]]]) -> int:
    """Bytes any engine must move at least once: the weights (at their stored type) and the graph's I/O."""
    names = [t.name for t in g.initializer] + [v.name for v in list(g.input) + list(g.output)]
    return sum(_numel(info.get(n, (0, []))[1]) * _ITEMSIZE.get(info.get(n, (0, []))[0], 4) for n in set(names))


def graph_cost(model: onnx.ModelProto, targets: dict[str, GpuTarget] | None = None,
               inferred: tuple[onnx.GraphProto, dict[str, tuple[int, list[int]]]] | None = None) -> GraphCost:
    """FLOPs and bytes per node and by precision for a static-shape graph, with latency bounds.

    Args:
        model: an ONNX model with static input shapes (as ``danet-edge export`` writes).
        targets: GPUs to bound latency on (default :data:`JETSON_TARGETS`).
        inferred: ``tensor_info(model)`` when the caller has it already (shape inference runs once).

    Returns:
        GraphCost; nodes whose shapes cannot be inferred count 0 FLOPs (none in DANet graphs).
    """
    g, info = inferred or tensor_info(model)
    prec = node_precisions(g, info)
    producer = {o: n for n in g.node for o in n.output}
    nodes = [NodeCost(n.name, n.op_type, prec[n.name], _flops(n, info), _bytes(n, info, producer)) for n in g.node]
    total = sum(n.flops for n in nodes)
    by: dict[str, dict[str, float]] = {}
    for n in nodes:
        key = n.precision or "layout"  # Casts, Transposes: bytes only
        row = by.setdefault(key, {"flops": 0, "bytes": 0})
        row["flops"] += n.flops
        row["bytes"] += n.bytes
    by_precision = {p: {"gflop": _sig(r["flops"] / 1e9),
                        "flop_share_pct": _sig(100.0 * r["flops"] / total) if total else 0.0,
                        "mib": _sig(r["bytes"] / 2**20)} for p, r in sorted(by.items())}
    total_bytes = sum(n.bytes for n in nodes)
    unknown = [n.name for n in nodes if n.op_type in WEIGHTED_OPS and n.flops == 0]
    cost = GraphCost(nodes, by_precision, _sig(total / 1e9), _sig(total_bytes / 2**20), unknown_shapes=unknown)
    essential = _essential_bytes(g, info)
    cost.essential_mib = _sig(essential / 2**20)
    for name, t in (JETSON_TARGETS if targets is None else targets).items():
        compute = sum(r["flops"] / t.peak(p) for p, r in by.items()) * 1e3
        memory = essential / (t.bandwidth_gbs * 1e9) * 1e3
        unfused = total_bytes / (t.bandwidth_gbs * 1e9) * 1e3
        cost.bound_ms[name] = {"compute_ms": _sig(compute), "memory_ms": _sig(memory),
                               "unfused_memory_ms": _sig(unfused), "bound_ms": _sig(max(compute, memory))}
    return cost


def format_cost(cost: GraphCost | dict[str, Any], targets: tuple[str, ...] | None = None) -> list[str]:
    """Human lines from a GraphCost or its ``to_dict()``: GFLOP and share per precision, then the latency
    bound per target (``targets``: those only)."""
    d = cost.to_dict() if isinstance(cost, GraphCost) else cost
    parts = [f"{p} {r['gflop']:.2f} GFLOP ({r['flop_share_pct']:.1f} %)" for p, r in d["by_precision"].items()
             if r["gflop"] > 0]
    lines = [f"compute: {d['total_gflop']:.2f} GFLOP: " + ", ".join(parts)]
    if d.get("unknown_shapes"):
        lines.append(f"warning: no static shape for {len(d['unknown_shapes'])} Conv/MatMul nodes; their FLOPs are "
                     "missing (run onnxslim or export again with danet-edge)")
    for name, b in d["bound_ms"].items():
        if targets is None or name in targets:
            lines.append(f"estimated lower bound on {name}: {b['bound_ms']:.2f} ms "
                         f"(compute {b['compute_ms']:.2f}, memory {b['memory_ms']:.2f})")
    return lines


def is_static(t: onnx.TypeProto) -> bool:
    """Whether a value's type is a tensor with a shape of fixed positive dims (no ``dim_param``, no unknown)."""
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return False
    return all(d.HasField("dim_value") and d.dim_value > 0 for d in t.tensor_type.shape.dim)


def load_cost_graph(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Read an ONNX graph for costing (weights not loaded): a static-shape graph with nodes, else a refusal.

    Raises:
        DataError: missing, empty (0 bytes), unreadable, no nodes, or an input or output with a dynamic or unknown
            dimension (a dynamic batch cannot be costed without guessing it: export with a fixed ``--batch``).
    """
    from ..core.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes), not an ONNX graph")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - onnx raises several types for a bad file
        raise DataError(f"{path}: not a readable ONNX graph ({type(e).__name__})") from None
    if not model.graph.node:
        raise DataError(f"{path}: not an ONNX graph (no nodes)")
    for v in (*model.graph.input, *model.graph.output):
        if not is_static(v.type):
            raise DataError(f"{path}: {v.name!r} has a dynamic or unknown dimension; cost needs static shapes "
                            "(export with a fixed --batch and --imgsz)")
    return model
