"""PAM as TensorRT's fused attention kernel computes it, written as an ONNX graph any CPU runtime can run.

A fusible form's FP16 graph (``heads``: ``Mul(Q, 1) -> MatMul -> Softmax -> MatMul`` with Q, K, V of one head
size; ``attention-op``: one ONNX ``Attention`` node) runs *unfused* in ONNX Runtime on a CPU: the energy ``Q K^T``
is stored in FP16 between the MatMul and the Softmax. That is not what a device runs when TensorRT fuses it: the
fused multi-head attention kernel reads Q, K and V in FP16, accumulates ``Q K^T`` and the softmax in FP32 inside
the kernel, never writes the ``L x L`` map, and multiplies the probabilities (FP16 operands) by V with FP32
accumulation (TensorRT developer guide, "Multi-Head Attention Fusion"; quoted in NVIDIA/TensorRT issues 2981 and
4167; the kernel's own code is not public, so this is a model of it from those documents, not a measurement).

:func:`fused_attention_numerics` rewrites each fusible attention so that it computes exactly that:

    Q, K, V  as the graph gives them (FP16: already rounded to the graph's type)
    S = (Q * scale) K^T          in FP32
    P = softmax(S)               in FP32, then rounded to the graph's type (the kernel's FP16 MatMul operand)
    O = P V                      in FP32 (FP32 accumulation), then rounded to the graph's type

Export's verification judges the fusible FP16 / INT8 graphs with it (``export.export``), and ``check --backend
onnxruntime-fused-attention`` runs any graph through it (``runtime.ort_backend``). An attention whose MatMuls
take INT8 (``--include-attention``) or FP32 (an island) is left as it is: only FP16 / BF16 attention is modelled.
"""

from __future__ import annotations

import copy

import onnx
from onnx import TensorProto, helper

from .cost import tensor_info
from .precision import attention_nodes

__all__ = ["FUSED_NUMERICS", "fused_attention_numerics", "fusible_attentions"]

#: One line naming what :func:`fused_attention_numerics` computes (reports and manifests quote it).
FUSED_NUMERICS = ("PAM as TensorRT's fused attention kernel computes it (modelled from the developer guide): Q, K, V "
                  "in the graph's type, Q K^T and softmax in FP32, P rounded to the graph's type, P V accumulated in "
                  "FP32")

_LOW = (TensorProto.FLOAT16, TensorProto.BFLOAT16)


def _types(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, list[int]]]:
    """Element type and static shape of every tensor (``cost.tensor_info``)."""
    _, info = tensor_info(model)
    return {k: v[0] for k, v in info.items()}, {k: v[1] for k, v in info.items()}


def fusible_attentions(model: onnx.ModelProto) -> list[tuple[str, ...]]:
    """PAM attentions of ``model`` that a fused kernel would take and that run in FP16 / BF16: ``(energy MatMul,
    Softmax, output MatMul)`` names for the heads form (the Softmax reading the energy MatMul directly, the output
    MatMul reading the Softmax directly, and Q, K, V of one head size: ``Q (.., L, d)``, ``K (.., d, L)``,
    ``V (.., L, d)``), ``(Attention,)`` for the attention-op form. The chunked form (V's head size is C, Q's C/8)
    and the explicit form (a Transpose before the second MatMul) are not: TensorRT materialises their map."""
    return _fusible(model, *_types(model))


def _fusible(model: onnx.ModelProto, types: dict[str, int], shapes: dict[str, list[int]]) -> list[tuple[str, ...]]:
    """:func:`fusible_attentions` with the graph's types and shapes already inferred."""
    att = attention_nodes(model)
    by_name = {n.name: n for n in model.graph.node}
    found: list[tuple[str, ...]] = []
    for e, s, o in zip(att.pam_energy, att.pam_softmax, att.pam_out):
        energy, softmax, out = by_name[e], by_name[s], by_name[o]
        if softmax.input[0] != energy.output[0] or out.input[0] != softmax.output[0]:
            continue  # Casts (an FP32 island) or a Transpose (the explicit form) between them: not the fused pattern
        q, k, v = (shapes.get(t) or [] for t in (energy.input[0], energy.input[1], out.input[1]))
        if len(q) < 2 or len(k) < 2 or len(v) < 2 or not q[-1] == k[-2] == v[-1]:
            continue  # not one head size (the chunked form: V has C channels)
        if all(types.get(t) in _LOW for t in (energy.input[0], energy.input[1], out.input[1])):
            found.append((e, s, o))
    for a in att.pam_op:
        if all(types.get(t) in _LOW for t in by_name[a].input[:3]):
            found.append((a,))
    return found


def _scale(node: onnx.NodeProto) -> float | None:
    return next((float(helper.get_attribute_value(a)) for a in node.attribute if a.name == "scale"), None)


def fused_attention_numerics(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose fusible attentions (:func:`fusible_attentions`) compute as the fused kernel does
    (module docstring); every other node unchanged. A graph without one comes back unchanged (a copy).

    Shapes: heads form ``Q (N, h, L, d)``, ``K (N, h, d, L)``, ``V (N, h, L, d)``; ``Attention`` inputs
    ``(N, h, L, d)`` each. The output keeps its name, shape and type.
    """
    types, shapes = _types(model)  # one shape inference for the search and the rewrite
    found = _fusible(model, types, shapes)
    model = copy.deepcopy(model)
    g = model.graph
    by_name = {n.name: n for n in g.node}
    replaced: dict[str, list[onnx.NodeProto]] = {}  # last node of an attention -> the nodes written in its place
    drop: set[str] = set()

    def cast(src: str, to: int, name: str, nodes: list[onnx.NodeProto]) -> str:
        nodes.append(helper.make_node("Cast", [src], [name], name=name, to=to))
        return name

    for i, names in enumerate(found):
        tag = f"fused_numerics_{i}"
        nodes: list[onnx.NodeProto] = []
        if len(names) == 3:
            energy, softmax, out = (by_name[n] for n in names)
            q, k, v, result = energy.input[0], energy.input[1], out.input[1], out.output[0]
            low = types[v]
            kt = cast(k, TensorProto.FLOAT, f"{tag}_k32", nodes)
            scale = None  # the heads form's scale is the Mul on Q before the first MatMul (FP16, exact for 1)
        else:
            (node,) = (by_name[n] for n in names)
            q, k, v, result = node.input[0], node.input[1], node.input[2], node.output[0]
            low = types[v]
            scale = _scale(node)
            if scale is None:  # ONNX Attention's default: 1/sqrt(head size); export always writes scale=1
                raise ValueError(f"{node.name}: an Attention node without a scale attribute is not modelled")
            k32 = cast(k, TensorProto.FLOAT, f"{tag}_k32", nodes)
            kt = f"{tag}_kt"
            nodes.append(helper.make_node("Transpose", [k32], [kt], name=kt, perm=[0, 1, 3, 2]))
        q32 = cast(q, TensorProto.FLOAT, f"{tag}_q32", nodes)
        s = f"{tag}_energy"
        nodes.append(helper.make_node("MatMul", [q32, kt], [s], name=s))
        if scale is not None and scale != 1.0:
            c = f"{tag}_scale"
            g.initializer.append(helper.make_tensor(c, TensorProto.FLOAT, [], [scale]))
            nodes.append(helper.make_node("Mul", [s, c], [f"{s}_scaled"], name=f"{s}_scaled"))
            s = f"{s}_scaled"
        p = f"{tag}_softmax"
        nodes.append(helper.make_node("Softmax", [s], [p], name=p, axis=-1))
        p_low = cast(p, low, f"{tag}_p_low", nodes)  # the kernel's second MatMul reads P in the graph's type
        p32 = cast(p_low, TensorProto.FLOAT, f"{tag}_p32", nodes)
        v32 = cast(v, TensorProto.FLOAT, f"{tag}_v32", nodes)
        o = f"{tag}_out32"
        nodes.append(helper.make_node("MatMul", [p32, v32], [o], name=o))  # FP32 accumulation
        cast(o, low, result, nodes)
        replaced[names[-1]] = nodes  # where the last of them was: every input (Q, K, V) is made before it
        drop |= set(names)
    if not replaced:
        return model
    new_nodes: list[onnx.NodeProto] = []
    for n in g.node:
        if n.name in replaced:
            new_nodes.extend(replaced[n.name])
        if n.name not in drop:
            new_nodes.append(n)
    del g.node[:]
    g.node.extend(new_nodes)
    del g.value_info[:]
    return model
