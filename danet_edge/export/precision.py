"""FP16 graphs with FP32 islands, and a precision report you can trust.

TensorRT 11 takes precision only from the network (strong typing, REFERENCE.md section 2), so the
FP16 export is an ONNX graph that really computes in FP16: FP32 inputs and outputs (``keep_io_types``),
FP16 inside, FP32 islands where FP16 overflows or loses the result (REFERENCE.md section 4):

* CAM: the energy MatMul ``A A^T`` (sums of ``H*W`` products of post-ReLU activations, past 65504 at
  trained magnitudes), its ReduceMax and Sub, and its Softmax;
* PAM: the energy MatMul ``Q^T K`` (un-scaled, so energies of hundreds: FP16's 1e-3 relative step
  becomes an error of ~0.5 inside ``exp``) and its Softmax over N positions.

The converter is NVIDIA ModelOpt AutoCast when it is importable (NVIDIA's recommendation for
TensorRT 11), else a small pass here (``fp16_with_islands``: onnxconverter-common's block list produced
invalid graphs on DANet's chains of FP32 nodes).
``precision_report`` reads the precision back from the graph itself (ONNX shape inference), and
``verify_precision`` raises ``PrecisionError`` when what was asked is not there.
"""

from __future__ import annotations

import copy
import importlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ..core.errors import ExportError, MissingDependencyError, PrecisionError

__all__ = ["AttentionNodes", "attention_nodes", "default_fp32_islands", "convert_fp16", "PrecisionReport",
           "precision_report", "verify_precision", "format_report", "fp16_with_islands"]

# Nodes that move or reshape data: they carry a dtype but compute nothing worth reporting.
@dataclass
class AttentionNodes:
    """Node names of DANet's attention, found from the graph's structure (not from names).

    pam_energy: MatMul ``Q^T K`` feeding PAM's Softmax; pam_softmax; pam_out: MatMul ``V S^T``.
    cam_energy: MatMul ``A A^T``; cam_reduce: its ReduceMax and Sub; cam_softmax; cam_out: MatMul ``S A``.
    """

    pam_energy: list[str] = field(default_factory=list)
    pam_softmax: list[str] = field(default_factory=list)
    pam_out: list[str] = field(default_factory=list)
    cam_energy: list[str] = field(default_factory=list)
    cam_reduce: list[str] = field(default_factory=list)
    cam_softmax: list[str] = field(default_factory=list)
    cam_out: list[str] = field(default_factory=list)

    @property
    def matmuls(self) -> list[str]:
        return self.pam_energy + self.pam_out + self.cam_energy + self.cam_out


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output}


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
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
    prod, cons = _producers(g), _consumers(g)
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
    return found


def default_fp32_islands(model: onnx.ModelProto, pam_energy: bool = True) -> list[str]:
    """Node names kept in FP32 in the FP16 graph (module docstring): CAM energy, ReduceMax, Sub,
    both Softmaxes, and (``pam_energy``) PAM's energy MatMul."""
    a = attention_nodes(model)
    names = a.cam_energy + a.cam_reduce + a.cam_softmax + a.pam_softmax
    return names + (a.pam_energy if pam_energy else [])


def _import_autocast() -> Any | None:
    """``modelopt.onnx.autocast`` if installed, else None (imported lazily, never at package import)."""
    from ..core.optional import import_modelopt

    try:
        import_modelopt()
        return importlib.import_module("modelopt.onnx.autocast")
    except (MissingDependencyError, ImportError):
        return None


def convert_fp16(onnx_path: str | os.PathLike[str], out: str | os.PathLike[str],
                 fp32_nodes: list[str] | None = None, converter: str = "auto") -> Path:
    """FP32 ONNX -> FP16 ONNX with FP32 inputs/outputs and FP32 islands; writes ``out`` atomically.

    Args:
        onnx_path: FP32 graph (``export_onnx`` output).
        out: path of the FP16 graph.
        fp32_nodes: node names to keep in FP32; default ``default_fp32_islands(model)``.
        converter: ``"auto"`` (ModelOpt AutoCast if importable, else the pass here), ``"modelopt"``
            or ``"builtin"``.

    Raises:
        MissingDependencyError: ``converter="modelopt"`` without nvidia-modelopt.
        ExportError: the converter failed or the result does not pass ``onnx.checker``.
    """
    from ..core.utils import atomic_path

    model = onnx.load(str(onnx_path))
    keep = list(fp32_nodes) if fp32_nodes is not None else default_fp32_islands(model)
    autocast = _import_autocast() if converter in ("auto", "modelopt") else None
    if converter == "modelopt" and autocast is None:
        raise MissingDependencyError("converter 'modelopt' needs nvidia-modelopt (pip install nvidia-modelopt)")
    try:
        if autocast is not None:  # not exercised here: ModelOpt is not installed on the dev machine
            import re

            fp16 = autocast.convert_to_mixed_precision(
                onnx_path=str(onnx_path), low_precision_type="fp16", keep_io_types=True,
                nodes_to_exclude=[f"^{re.escape(n)}$" for n in keep])
        else:
            fp16 = fp16_with_islands(model, keep)
        onnx.checker.check_model(fp16, full_check=True)
    except (ValueError, RuntimeError, onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"FP16 conversion of {onnx_path} failed: {e}") from None
    with atomic_path(out) as tmp:
        onnx.save(fp16, str(tmp))
    return Path(out)


_FP16_MAX = 65504.0


def _to_fp16_array(arr: np.ndarray) -> np.ndarray:
    return np.clip(arr, -_FP16_MAX, _FP16_MAX).astype(np.float16)


def fp16_with_islands(model: onnx.ModelProto, keep: list[str]) -> onnx.ModelProto:
    """FP16 conversion with FP32 islands: every node computes in FP16 except those named in ``keep``;
    a Cast is inserted wherever a tensor crosses between the two, FP32 graph inputs and outputs kept.

    onnxconverter-common 1.16's ``node_block_list`` was tried first: on DANet's chains of blocked nodes
    (CAM MatMul -> ReduceMax -> Sub -> Softmax) it leaves a Softmax's FP32 output feeding an FP16 MatMul
    (an invalid graph) or raises in its Cast clean-up, so the few rules are applied here directly.
    """
    model = copy.deepcopy(model)
    g = model.graph
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    ftypes = {v.name for v in list(inferred.graph.value_info) + list(g.input) + list(g.output)
              if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    blocked = set(keep)
    missing = blocked - {n.name for n in g.node}
    if missing:
        raise ExportError(f"FP32 island nodes not in the graph: {sorted(missing)}")
    inits = {i.name: i for i in g.initializer if i.data_type == TensorProto.FLOAT}
    ftypes |= set(inits)
    # which domain (True = fp16) reads each float initializer
    readers: dict[str, set[bool]] = {}
    for n in g.node:
        for idx, i in enumerate(n.input):
            if i in inits and not (n.op_type == "Resize" and idx > 0):
                readers.setdefault(i, set()).add(n.name not in blocked)
    for name, doms in readers.items():
        if doms == {True}:
            arr = numpy_helper.to_array(inits[name])
            inits[name].CopyFrom(numpy_helper.from_array(_to_fp16_array(arr), name))
    natural: dict[str, bool] = {i.name: False for i in g.input}  # tensor -> is fp16
    natural.update({name: doms == {True} for name, doms in readers.items()})
    new_nodes: list[onnx.NodeProto] = []
    casts: dict[tuple[str, bool], str] = {}

    def as_dtype(tensor: str, fp16: bool) -> str:
        if tensor not in ftypes or natural.get(tensor, False) == fp16:
            return tensor
        if tensor in inits and fp16 and readers.get(tensor) == {False, True}:
            key = (tensor, True)
            if key not in casts:  # shared initializer: an FP16 copy for the FP16 readers
                arr = _to_fp16_array(numpy_helper.to_array(inits[tensor]))
                g.initializer.append(numpy_helper.from_array(arr, tensor + "_fp16"))
                casts[key] = tensor + "_fp16"
            return casts[key]
        key = (tensor, fp16)
        if key not in casts:
            out = f"{tensor}_to_{'fp16' if fp16 else 'fp32'}"
            new_nodes.append(onnx.helper.make_node("Cast", [tensor], [out], name=out,
                                                  to=TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT))
            casts[key] = out
        return casts[key]

    for n in g.node:
        fp16 = n.name not in blocked
        for idx, i in enumerate(n.input):
            if i and not (n.op_type == "Resize" and idx > 0):
                n.input[idx] = as_dtype(i, fp16)
        if fp16 and n.op_type == "Cast" and _cast_to(n) == TensorProto.FLOAT:
            for a in n.attribute:
                if a.name == "to":
                    a.i = TensorProto.FLOAT16
        if fp16 and n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                    a.t.CopyFrom(numpy_helper.from_array(_to_fp16_array(numpy_helper.to_array(a.t)), a.t.name))
        for o in n.output:
            natural[o] = fp16
        new_nodes.append(n)
    for out in g.output:
        if out.name in ftypes and natural.get(out.name):
            producer = next(n for n in new_nodes if out.name in n.output)
            inner = out.name + "_fp16"
            producer.output[list(producer.output).index(out.name)] = inner
            for n in new_nodes:
                for idx, i in enumerate(n.input):
                    if i == out.name:
                        n.input[idx] = inner
            new_nodes.append(onnx.helper.make_node("Cast", [inner], [out.name], name=out.name + "_to_fp32",
                                                   to=TensorProto.FLOAT))
    del g.node[:]
    g.node.extend(new_nodes)
    del g.value_info[:]
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def _cast_to(node: onnx.NodeProto) -> int | None:
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
    from ..graph.cost import WEIGHTED_OPS, graph_cost, node_precisions, tensor_info

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
        from ..graph.cost import format_cost

        lines += ["  " + line for line in format_cost(report.cost, ("agx-orin-64gb", "orin-nano-8gb"))]
    return "\n".join(lines)
