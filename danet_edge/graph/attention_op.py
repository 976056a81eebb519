"""PAM as ONNX's ``Attention`` operator (opset 23): the heads form's attention written as one node.

TensorRT imports ONNX ``Attention`` as its ``IAttention`` layer from 10.14 (10.14 release notes; onnx-tensorrt PR
1043), and IAttention wants Q ``(N, h, L, H)`` and K, V ``(N, h, L, H)`` with one head size ``H`` and the scale
given to the layer. The heads form (``model.attention.pam_heads``) already has that shape: Q and K shared by the 8
heads (Expand), V split into 8 heads of ``C/8`` channels. :func:`to_attention_op` replaces its
``Mul(Q, 1) -> MatMul -> Softmax -> MatMul`` with ``Attention(Q, K^T, V, scale=1)`` and raises the graph to
opset 23 (``onnx.version_converter``). Exact: the operator computes ``softmax(scale Q K^T) V`` per head (ONNX
operator docs, ``Attention``), which is what the four nodes computed.

JetPack 6's TensorRT 10.3 parses opsets 9..20 and has no IAttention: a graph of this form is for TensorRT >=
10.14 (desktop and SBSA; on a Jetson TensorRT 11.4.1 on JetPack 7.2.2+, AGX Orin and AGX Thor: JetPack 7.0 ships
10.13); ``graph.trtcheck`` refuses it for 10.3.
"""

from __future__ import annotations

import onnx
from onnx import helper, version_converter

from ..core.choices import ATTENTION_OPSET
from ..core.errors import ExportError
from .precision import attention_nodes, consumers, producers

__all__ = ["ATTENTION_IR_VERSION", "to_attention_op"]

#: IR version written with it: the oldest that carries opset 23 (onnx 1.18; ``onnx.helper.VERSION_TABLE``). The
#: onnx package here would write 14, which ONNX Runtime 1.31 refuses (it reads up to 13).
ATTENTION_IR_VERSION = 11


def to_attention_op(model: onnx.ModelProto) -> onnx.ModelProto:
    """A heads-form DANet graph -> the same graph at opset 23 with PAM as one ``Attention`` node per chunk
    (``(N, h, L, d)`` Q, K, V; ``scale = 1``). Returns a new model.

    Raises:
        ExportError: the graph has no heads-form PAM (``Softmax`` of a rank-4 ``MatMul``, then a ``MatMul``),
            or the version converter fails.
    """
    try:
        out = version_converter.convert_version(model, ATTENTION_OPSET)
    except Exception as e:  # the converter raises plain RuntimeError / ValueError with C++ text
        raise ExportError(f"opset {ATTENTION_OPSET} conversion failed: {str(e).splitlines()[0]}") from None
    g = out.graph
    att = attention_nodes(out)
    if not att.pam_energy or len(att.pam_energy) != len(att.pam_out):
        raise ExportError("no PAM attention (MatMul -> Softmax -> MatMul) to write as an Attention node")
    by_name = {n.name: n for n in g.node}
    prod, cons = producers(g), consumers(g)
    inits = {i.name for i in g.initializer}
    drop: set[str] = set()
    for i, (e_name, s_name, o_name) in enumerate(zip(att.pam_energy, att.pam_softmax, att.pam_out)):
        energy, softmax, output = by_name[e_name], by_name[s_name], by_name[o_name]
        q, k = energy.input
        scaled = prod.get(q)  # graph.precision.scale_before_energy's Mul(Q, 1): the scale becomes the attribute
        if scaled is not None and scaled.op_type == "Mul" and len(cons.get(q, [])) == 1 and scaled.input[1] in inits:
            q = scaled.input[0]
            drop.add(scaled.name)
        v = output.input[1]
        kt = f"{k}_kt_{i}"
        g.node.append(helper.make_node("Transpose", [k], [kt], name=f"pam_key_transpose_{i}", perm=[0, 1, 3, 2]))
        g.node.append(helper.make_node("Attention", [q, kt, v], [output.output[0]], name=f"pam_attention_{i}",
                                       scale=1.0))
        drop |= {energy.name, softmax.name, output.name}
    kept = [n for n in g.node if n.name not in drop]
    del g.node[:]
    g.node.extend(kept)
    used = {t for n in g.node for t in n.input}
    kept_inits = [t for t in g.initializer if t.name in used or t.name in {o.name for o in g.output}]
    del g.initializer[:]
    g.initializer.extend(kept_inits)
    out.ir_version = ATTENTION_IR_VERSION
    return out
