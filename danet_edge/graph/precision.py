"""What precision a graph really computes in, and where DANet's attention is (pure ONNX analysis).

``attention_nodes`` finds PAM's and CAM's MatMuls, Softmaxes and CAM's ReduceMax/Sub by structure;
``default_fp32_islands`` names the nodes FP16 must leave in FP32 (CAM's energy chain: sums of ``H*W``
products of post-ReLU activations, past FP16's 65504 at trained magnitudes; PAM's un-scaled energy and its
Softmax over N positions). ``precision_report`` reads the precision back from the graph itself (ONNX shape
inference), and ``verify_precision`` raises ``PrecisionError`` when what was asked is not there. The FP16
conversion that uses the islands is ``export/fp16.py``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper


from ..core.errors import PrecisionError

__all__ = ["AttentionNodes", "attention_nodes", "default_fp32_islands", "PrecisionReport", "precision_report",
           "verify_precision", "format_report", "cast_to", "scale_before_energy", "producers", "consumers",
           "constant_value"]

# Nodes that move or reshape data: they carry a dtype but compute nothing worth reporting.
@dataclass
class AttentionNodes:
    """Node names of DANet's attention, found from the graph's structure (not from names).

    pam_energy: MatMul ``Q^T K`` feeding PAM's Softmax; pam_softmax; pam_out: MatMul ``V S^T``.
    pam_op: ONNX ``Attention`` nodes (the ``attention-op`` form: all three in one node).
    cam_energy: MatMul ``A A^T``; cam_reduce: its ReduceMax and Sub; cam_softmax; cam_out: MatMul ``S A``.
    """

    pam_energy: list[str] = field(default_factory=list)
    pam_softmax: list[str] = field(default_factory=list)
    pam_out: list[str] = field(default_factory=list)
    pam_op: list[str] = field(default_factory=list)
    cam_energy: list[str] = field(default_factory=list)
    cam_reduce: list[str] = field(default_factory=list)
    cam_softmax: list[str] = field(default_factory=list)
    cam_out: list[str] = field(default_factory=list)

    @property
    def matmuls(self) -> list[str]:
        return self.pam_energy + self.pam_out + self.cam_energy + self.cam_out


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output}


def constant_value(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    """The value of ``name`` when it is an initializer or a ``Constant`` node's output, else None."""
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for n in graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            value = next((a.t for a in n.attribute if a.name == "value"), None)
            return numpy_helper.to_array(value) if value is not None else None
    return None


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


_PASS = {"Cast", "DequantizeLinear", "QuantizeLinear", "Transpose", "Reshape"}


def attention_nodes(model: onnx.ModelProto) -> AttentionNodes:
    """Find PAM and CAM in a DANet graph (FP32, FP16 with Casts, or Q/DQ) by walking from each Softmax.

    A Softmax fed (through Casts / Q/DQ) by a MatMul is PAM's; one fed by ``Sub(ReduceMax(E), E)``
    is CAM's. The output MatMul is the first MatMul consuming the Softmax (through Transpose / Casts).
    """
    g = model.graph
    prod, cons = producers(g), consumers(g)
    found = AttentionNodes()

    def back(name: str) -> onnx.NodeProto | None:
        n = prod.get(name)
        while n is not None and n.op_type in _PASS:
            n = prod.get(n.input[0])
        return n

    def forward_matmul(node: onnx.NodeProto) -> onnx.NodeProto | None:
        frontier, seen = list(node.output), set()
        while frontier:
            t = frontier.pop()
            for c in cons.get(t, []):
                if c.name in seen:
                    continue
                seen.add(c.name)
                if c.op_type == "MatMul":
                    return c
                if c.op_type in _PASS:
                    frontier.extend(c.output)
        return None

    for sm in (n for n in g.node if n.op_type == "Softmax"):
        src = back(sm.input[0])
        if src is None:
            continue
        out_mm = forward_matmul(sm)
        if src.op_type == "MatMul":
            found.pam_energy.append(src.name)
            found.pam_softmax.append(sm.name)
            if out_mm is not None:
                found.pam_out.append(out_mm.name)
        elif src.op_type == "Sub":
            parents = [back(i) for i in src.input]
            rmax = [p for p in parents if p is not None and p.op_type == "ReduceMax"]
            energy = [p for p in parents if p is not None and p.op_type == "MatMul"]
            found.cam_reduce += [p.name for p in rmax] + [src.name]
            found.cam_energy += [p.name for p in energy]
            found.cam_softmax.append(sm.name)
            if out_mm is not None:
                found.cam_out.append(out_mm.name)
    found.pam_op = [n.name for n in g.node if n.op_type == "Attention"]
    return found


def default_fp32_islands(model: onnx.ModelProto, pam_energy: bool = True) -> list[str]:
    """Node names kept in FP32 in the FP16 graph (module docstring): CAM energy, ReduceMax, Sub,
    both Softmaxes, an ONNX ``Attention`` node (its energy is PAM's, unscaled: FP16 would overflow as in the
    other forms), and (``pam_energy``) PAM's energy MatMul."""
    a = attention_nodes(model)
    names = a.cam_energy + a.cam_reduce + a.cam_softmax + a.pam_softmax + a.pam_op
    return names + (a.pam_energy if pam_energy else [])



def scale_before_energy(model: onnx.ModelProto) -> onnx.ModelProto:
    """Write PAM's softmax scale (1: DANet has none) as a Mul on Q before each energy MatMul, where TensorRT's
    attention pattern has its scale (``Mul(Q, s) -> MatMul -> Softmax -> MatMul``; TensorRT developer guide,
    "Multi-Head Attention Fusion"). Exact: a multiplication by 1. In place; returns ``model``.

    The exporter and onnxslim drop a multiplication by 1, so the heads form gets it back here.
    """
    g = model.graph
    att = attention_nodes(model)
    by_name = {n.name: n for n in g.node}
    for i, name in enumerate(att.pam_energy):
        mm = by_name[name]
        scale = onnx.helper.make_tensor(f"pam_scale_{i}", onnx.TensorProto.FLOAT, [], [1.0])
        g.initializer.append(scale)
        scaled = f"{mm.input[0]}_scaled_{i}"
        mul = onnx.helper.make_node("Mul", [mm.input[0], scale.name], [scaled], name=f"pam_scale_mul_{i}")
        mm.input[0] = scaled
        g.node.insert(list(g.node).index(mm), mul)
    return model


def cast_to(node: onnx.NodeProto) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None)


@dataclass
class PrecisionReport:
    """What a graph computes in, read from the graph.

    Attributes:
        counts: compute nodes per dtype, e.g. ``{"fp16": 120, "fp32": 9, "int8": 0}`` (layout ops and
            Casts excluded; ``int8`` = Conv/MatMul fed by DequantizeLinear on every float input).
        by_op: ``{op_type: {dtype: count}}``.
        fp32_islands: FP32 compute nodes in a graph that has FP16 nodes (names).
        quantized: Conv/MatMul nodes fed by Q/DQ; ``not_quantized``: the others.
        attention_quantized: attention MatMuls among ``quantized``.
        precision: what the graph holds: ``int8`` (a quantized Conv), ``fp16`` (FP16 Conv) or ``fp32``.
        cost: ``cost.GraphCost.to_dict()``: GFLOP and share per precision, MiB moved, Jetson latency bounds.
    """

    counts: dict[str, int]
    by_op: dict[str, dict[str, int]]
    fp32_islands: list[str]
    quantized: list[str]
    not_quantized: list[str]
    attention_quantized: list[str]
    precision: str = "fp32"
    cost: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def precision_report(model: onnx.ModelProto, cost: bool = True) -> PrecisionReport:
    """Node counts per compute dtype, FP32 islands and quantized Conv/MatMul of ``model``, and (``cost``) its
    FLOPs by precision with the Jetson latency bounds (``cost.graph_cost``).

    A node's precision follows ``cost.node_precisions``: INT8 for a Conv/MatMul/Gemm fed by
    DequantizeLinear on its data inputs, else the type of its first float input; layout ops not counted.
    """
    from .cost import WEIGHTED_OPS, graph_cost, node_precisions, tensor_info

    g, info = tensor_info(model)
    prec = node_precisions(g, info)
    counts: dict[str, int] = {"fp32": 0, "fp16": 0, "int8": 0}
    by_op: dict[str, dict[str, int]] = {}
    fp32_nodes, quantized, not_quantized = [], [], []
    for n in g.node:
        dtype = prec[n.name]
        if dtype is None:
            continue
        if n.op_type in WEIGHTED_OPS:
            (quantized if dtype == "int8" else not_quantized).append(n.name)
        counts[dtype] = counts.get(dtype, 0) + 1
        by_op.setdefault(n.op_type, {}).setdefault(dtype, 0)
        by_op[n.op_type][dtype] += 1
        if dtype == "fp32":
            fp32_nodes.append(n.name)
    islands = fp32_nodes if counts.get("fp16", 0) else []
    att = set(attention_nodes(model).matmuls)
    conv = by_op.get("Conv", {})
    precision = "int8" if conv.get("int8") else "fp16" if conv.get("fp16") else "fp32"
    return PrecisionReport(counts, by_op, islands, quantized, not_quantized, [q for q in quantized if q in att],
                           precision, graph_cost(model, inferred=(g, info)).to_dict() if cost else None)


def verify_precision(report: PrecisionReport, precision: str, include_attention: bool = False) -> None:
    """Fail loudly when the graph's precision is not what was asked.

    Raises:
        PrecisionError: ``fp16`` with no FP16 Conv; ``int8`` with no quantized Conv, or attention MatMuls
            quantized without ``include_attention`` / not quantized with it; ``fp32`` with FP16 or Q/DQ.
    """
    conv = report.by_op.get("Conv", {})
    if precision == "fp16" and conv.get("fp16", 0) == 0:
        raise PrecisionError(f"FP16 export has no FP16 Conv (Conv dtypes: {conv}); the conversion did not apply")
    if precision == "int8":
        if conv.get("int8", 0) == 0:
            raise PrecisionError(f"INT8 export has no quantized Conv (Conv dtypes: {conv})")
        if include_attention and not report.attention_quantized:
            raise PrecisionError("--include-attention asked, but no attention MatMul is fed by Q/DQ")
        if not include_attention and report.attention_quantized:
            raise PrecisionError(f"attention MatMuls quantized without --include-attention: {report.attention_quantized}")
    if precision == "fp32" and (report.counts.get("fp16") or report.counts.get("int8")):
        raise PrecisionError(f"FP32 export holds lower-precision nodes: {report.counts}")


def format_report(report: PrecisionReport, precision: str) -> str:
    """A few human lines: counts per dtype, Conv/MatMul split, FP32 islands, quantized count."""
    counts = ", ".join(f"{k} {v}" for k, v in report.counts.items() if v)
    lines = [f"{precision}: compute nodes {counts}"]
    for op in ("Conv", "MatMul", "Softmax"):
        if op in report.by_op:
            lines.append(f"  {op}: " + ", ".join(f"{k} {v}" for k, v in sorted(report.by_op[op].items())))
    if report.fp32_islands:
        lines.append(f"  FP32 islands ({len(report.fp32_islands)}): " + ", ".join(report.fp32_islands[:8])
                     + (" ..." if len(report.fp32_islands) > 8 else ""))
    if report.quantized:
        lines.append(f"  quantized Conv/MatMul {len(report.quantized)}, not quantized {len(report.not_quantized)}"
                     f", attention quantized: {report.attention_quantized or 'none'}")
    if report.cost:
        from .cost import format_cost

        lines += ["  " + line for line in format_cost(report.cost, ("agx-orin-64gb", "orin-nano-8gb"))]
    return "\n".join(lines)
