"""What TensorRT's builder does with an attention, as its documents state it: the stand-in's fusion and memory.

Written from TensorRT's documents and published records, independently of the package's own code (which reads
the engine the stand-in builds, so its verdicts are tested, not echoed). Each rule, with its source:

| rule | source |
|---|---|
| a MatMul -> Softmax -> MatMul pattern (an optional scale Mul on Q before the first MatMul) fuses into one kernel | developer guide, "Multi-Head Attention Fusion" |
| GPU SM >= 75 | same page; NVIDIA/TensorRT issues 2981, 4167 |
| both batched MatMuls take FP16 or BF16 inputs; an FP32 MatMul or Softmax between them breaks the pattern | same page; issue 4167 (Orin, 10.3) |
| FP16/BF16: one head size for Q, K and V, 16..256 and a multiple of 8 | same page; issue 2981 |
| INT8: Q/DQ before the first MatMul and after the Softmax, head size 16, 32 or 64, sequence length <= 512 | same page; issue 2981 |
| a fused layer reads as the published 10.10 record: ``_gemm_mha_v2_myl0_N``, LayerType ``kgen``, tactic ``_gemm_mha_v2_0x...``, Half, Metadata listing the MatMul and Softmax ONNX nodes | NVIDIA/TensorRT issue 4397 |
| an unfused softmax is a Myelin ``kgen`` layer named ``__myl_...`` whose tactic names no softmax | issue 4397 (the unfused layers of the same engine); issue 3665 |
| ONNX ``Attention`` is a non-decomposable ``IAttention`` (onnx-tensorrt's importer default): one fused kernel or a failed build; FP16/BF16 kernels are documented, no FP32 one | onnx-tensorrt ``importAttention``; NvInfer.h 10.14 ``IAttention::setDecomposable`` |
| independent branches may run on auxiliary streams (default: heuristics), whose activation memory is not reused across streams; ``max_aux_streams = 0`` runs them on the main stream | NvInfer.h 10.3, ``IBuilderConfig::setMaxAuxStreams`` |
| the engine's activation memory is ``ICudaEngine.device_memory_size_v2`` | TensorRT Python API, ``ICudaEngine`` (10.1+) |

The memory model is the stand-in's own (liveness of the graph's tensors in node order, a fused attention holding no
map, concurrent chunks on auxiliary streams): a stated model, not TensorRT's allocator.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import onnx

__all__ = ["Attention", "find_attentions", "fuses", "device_memory_bytes"]

_ITEM = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1, "uint8": 1, "int32": 4, "int64": 8, "bool": 1}


@dataclass
class Attention:
    """One PAM attention in the graph: its nodes (in order) and the tensors that decide fusion."""

    nodes: list[str]  # (scale Mul,) energy MatMul, Softmax, output MatMul; or the Attention node
    q: str
    k: str
    v: str
    maps: list[str]  # the tensors an unfused engine writes: the energy and the softmax output
    op: bool = False  # an ONNX Attention node (IAttention)


def find_attentions(model: onnx.ModelProto) -> list[Attention]:
    """PAM's attentions, found by structure: a Softmax whose input a MatMul makes and whose output a MatMul reads
    (through nothing but a Transpose in the explicit form), and ONNX ``Attention`` nodes. CAM (a Softmax of a Sub)
    is not one."""
    g = model.graph
    prod = {o: n for n in g.node for o in n.output}
    cons: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)
    found = []
    for sm in g.node:
        if sm.op_type != "Softmax":
            continue
        e = prod.get(sm.input[0])
        while e is not None and e.op_type == "Cast":
            e = prod.get(e.input[0])
        if e is None or e.op_type != "MatMul":
            continue
        out, t = None, sm.output[0]
        for _ in range(3):
            nxt = cons.get(t, [])
            if not nxt:
                break
            if nxt[0].op_type == "MatMul":
                out = nxt[0]
                break
            t = nxt[0].output[0]
        if out is None:
            continue
        nodes = [e.name, sm.name, out.name]
        q, k = e.input
        scale = prod.get(q)
        if scale is not None and scale.op_type == "Mul":
            nodes.insert(0, scale.name)
        found.append(Attention(nodes, q, k, out.input[1], [e.output[0], sm.output[0]]))
    for n in g.node:
        if n.op_type == "Attention":
            found.append(Attention([n.name], n.input[0], n.input[1], n.input[2], [], op=True))
    return found


def fuses(a: Attention, model: onnx.ModelProto, types: dict[str, str], shapes: dict[str, list[int]],
          sm: tuple[int, int]) -> tuple[bool, str]:
    """Whether TensorRT fuses ``a`` (module docstring's rules), and why not."""
    if sm < (7, 5):
        return False, f"SM {sm[0]}{sm[1]} < 75"
    g = model.graph
    by_name = {n.name: n for n in g.node}
    prod = {o: n for n in g.node for o in n.output}
    if a.op:
        low = all(types.get(t) in ("fp16", "bf16") for t in (a.q, a.k, a.v))
        return (True, "") if low else (False, "IAttention in FP32: no fused kernel")
    energy, softmax, out = (by_name[n] for n in a.nodes[-3:])
    if softmax.input[0] != energy.output[0] or out.input[0] != softmax.output[0]:
        return False, "a Cast or Transpose between the MatMuls and the Softmax"
    q_shape, k_shape, v_shape = shapes.get(a.q, []), shapes.get(a.k, []), shapes.get(a.v, [])
    if not (q_shape and k_shape and v_shape):
        return False, "unknown shapes"
    head_q, head_k, head_v = q_shape[-1], k_shape[-2], v_shape[-1]
    if len({head_q, head_k, head_v}) != 1:
        return False, f"head sizes differ (Q {head_q}, K {head_k}, V {head_v})"
    int8 = all(prod.get(t) is not None and prod[t].op_type == "DequantizeLinear" for t in (a.q, a.k))
    if int8:
        seq = k_shape[-1]
        if head_q not in (16, 32, 64) or seq > 512:
            return False, f"INT8 attention needs head 16/32/64 and length <= 512 (head {head_q}, length {seq})"
        return True, ""
    if not all(types.get(t) in ("fp16", "bf16") for t in (a.q, a.k, a.v, energy.output[0])):
        return False, "an FP32 MatMul or Softmax"
    if not (16 <= head_q <= 256 and head_q % 8 == 0):
        return False, f"head size {head_q} outside 16..256 or not a multiple of 8"
    return True, ""


def fused_record(i: int, a: Attention, io: Any) -> dict[str, Any]:
    """The fused layer as the published 10.10 record reads (issue 4397)."""
    digest = hashlib.sha256("".join(a.nodes).encode()).hexdigest()[:32]
    return {"Name": f"_gemm_mha_v2_myl0_{i}", "LayerType": "kgen", "Inputs": io([a.q, a.k, a.v], "fp16"),
            "Outputs": io([], "fp16"), "TacticName": f"_gemm_mha_v2_0x{digest}", "StreamId": 0,
            "Metadata": "".join(f"[ONNX Layer: {n}]" for n in a.nodes)}


def device_memory_bytes(model: onnx.ModelProto, types: dict[str, str], shapes: dict[str, list[int]],
                        fused: list[Attention], unfused: list[Attention], aux_streams: bool,
                        skip: set[str]) -> int:
    """Activation memory of the stand-in's engine: the peak over the node order of the tensors alive (from the
    node that makes one to the last that reads it; graph inputs, outputs and initializers excluded). A fused
    attention writes no map; with auxiliary streams allowed, the unfused attentions' maps are alive together."""
    g = model.graph
    order = [n for n in g.node if n.op_type not in skip]
    inits = {i.name for i in g.initializer}
    io = {v.name for v in list(g.input) + list(g.output)}
    no_map = {t for a in fused for t in a.maps}
    start: dict[str, int] = {}
    end: dict[str, int] = {}
    for i, n in enumerate(order):
        for o in n.output:
            start.setdefault(o, i)
            end.setdefault(o, i)
        for t in n.input:
            if t in start:
                end[t] = i
    if aux_streams and len(unfused) > 1:
        maps = [t for a in unfused for t in a.maps if t in start]
        lo, hi = min(start[t] for t in maps), max(end[t] for t in maps)
        for t in maps:
            start[t], end[t] = lo, hi

    def size(t: str) -> int:
        n = 1
        for d in shapes.get(t, []):
            n *= max(int(d), 1)
        return n * _ITEM.get(types.get(t, "fp32"), 4)

    live = [0] * (len(order) + 1)
    for t, s in start.items():
        if t in inits or t in io or t in no_map:
            continue
        for i in range(s, end[t] + 1):
            live[i] += size(t)
    return max(live) if live else 0
