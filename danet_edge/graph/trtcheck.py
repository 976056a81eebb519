"""TensorRT ONNX-parser rules, checked on every graph before it is written.

``check_tensorrt_compat(model)`` returns the rules a graph breaks, each naming the node; an export
for ``--target tensorrt`` refuses such a graph (``enforce_tensorrt_compat`` raises
``CompatibilityError``), an export for ``--target cpu`` only reports them (its uint8 Q/DQ
activations break the zero-point rule by design).

Rules (onnx-tensorrt ``docs/operators.md`` for TensorRT 10.0 to 10.3, the version JetPack 6 ships;
https://github.com/onnx/onnx-tensorrt/blob/release/10.3-GA/docs/operators.md):

* default-domain opset in 9..20; no other operator domain (``com.microsoft`` contrib ops); for a graph checked
  against TensorRT >= 10.14 (``tensorrt=(10, 14)``), opset 9..23 and ONNX's ``Attention`` (imported as
  ``IAttention`` from 10.14: its release notes, onnx-tensorrt PR 1043); 10.3 has neither;
* operator in ``SUPPORTED_OPS`` (the ops DANet graphs use plus common vision ops);
* no DOUBLE tensor anywhere; UINT8 only as a network input or output;
* QuantizeLinear / DequantizeLinear: zero point present, an initializer, INT8 (or FP8/INT4), all 0;
  a QuantizeLinear without zero point produces UINT8, which is refused too; the scale a constant whose
  every value is finite and > 0 (onnx-tensorrt's ``QuantDequantLinearHelper`` refuses a zero or negative
  scale; an FP16 scale under 3e-8 rounds to 0, see ``quantize.fp16_scale``);
* Resize: mode ``nearest`` or ``linear``; coordinate transform in ``RESIZE_COORDINATE_MODES``;
* Reduce*: ``axes`` an attribute before opset 18, an initializer input from opset 18;
* static shapes: every graph input, output and inferred intermediate has fixed positive dims,
  and no ``Shape`` node is left (shape arithmetic must be folded at export);
* tensor size: no tensor of :data:`MAX_TENSOR_ELEMENTS` + 1 = 2^31 elements or more (TensorRT's kernels index with
  int32: "tensor volume exceeds (2^31)-1", https://github.com/NVIDIA/TensorRT/issues/1948; the limit was lifted
  for some layers in 10.x only, not for every MatMul and Convolution: https://github.com/NVIDIA/TensorRT/issues/3815,
  /4123). DANet's heads form at 1024x2048 holds ``8 x 32768^2`` = 8.6e9 in one MatMul output, the explicit form
  ``N x 32768^2`` (2^31 at batch 2): the violation names the tensor, its shape and the form that fits;
* ONNX ``Attention`` (TensorRT >= 10.14), as onnx-tensorrt's ``docs/operators.md`` (10.15) lists its importer:
  no ``softcap``, ``softmax_precision`` or ``qk_matmul_output_mode`` attribute, no past / present key-value
  (inputs 4-5, outputs 1-2), one output, Q, K and V 4-D ``(N, heads, L, head size)``
  (https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from ..core.choices import ATTENTION_OPSET, ATTENTION_TENSORRT, OPSET_RANGE
from ..core.errors import CompatibilityError
from .cost import is_static
from .precision import attention_nodes, constant_value

__all__ = ["Violation", "check_tensorrt_compat", "enforce_tensorrt_compat", "SUPPORTED_OPS", "ATTENTION_TENSORRT",
           "required_tensorrt", "MAX_TENSOR_ELEMENTS", "oversized_tensors",
           "OPSET_RANGE", "RESIZE_COORDINATE_MODES"]


SUPPORTED_OPS = frozenset({
    "Abs", "Add", "And", "ArgMax", "ArgMin", "AveragePool", "BatchNormalization", "Cast", "Ceil", "Clip",
    "Concat", "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "DepthToSpace", "DequantizeLinear",
    "Div", "Dropout", "Elu", "Equal", "Erf", "Exp", "Expand", "Flatten", "Floor", "Gather", "Gemm",
    "GlobalAveragePool", "GlobalMaxPool", "Greater", "HardSigmoid", "HardSwish", "Identity",
    "InstanceNormalization", "LayerNormalization", "LeakyRelu", "Less", "Log", "LogSoftmax", "MatMul",
    "Max", "MaxPool", "Min", "Mul", "Neg", "Not", "Or", "Pad", "Pow", "PRelu", "QuantizeLinear",
    "Reciprocal", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "Relu", "Reshape",
    "Resize", "Round", "Shape", "Sigmoid", "Slice", "Softmax", "Softplus", "SpaceToDepth", "Split",
    "Sqrt", "Squeeze", "Sub", "Sum", "Tanh", "Tile", "TopK", "Transpose", "Unsqueeze", "Where",
})


RESIZE_MODES = frozenset({"nearest", "linear"})
RESIZE_COORDINATE_MODES = frozenset({"half_pixel", "pytorch_half_pixel", "asymmetric", "align_corners",
                                     "tf_half_pixel_for_nn"})
_QDQ_TYPES = {TensorProto.INT8, TensorProto.FLOAT8E4M3FN, TensorProto.INT4}
_REDUCE_OPS = {"ReduceMax", "ReduceMin", "ReduceMean", "ReduceSum", "ReduceProd"}
_GRAPH = "<graph>"
#: The most elements one TensorRT tensor may hold (int32 indexing; see the module docstring).
MAX_TENSOR_ELEMENTS = 2**31 - 1
#: ONNX ``Attention`` attributes onnx-tensorrt's importer does not take.
_ATTENTION_REFUSED_ATTRS = ("softcap", "softmax_precision", "qk_matmul_output_mode")


@dataclass(frozen=True)
class Violation:
    """One broken rule: the node (``<graph>`` for graph-level rules), its op type, the rule, details."""

    node: str
    op_type: str
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"node {self.node!r} ({self.op_type}) breaks TensorRT rule '{self.rule}': {self.detail}"


def _opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            v = onnx.helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def _scale_violations(name: str, op: str, scale: np.ndarray | None) -> list[Violation]:
    """The positive-scale rule: ``scale`` a constant, every value finite and > 0 (bad channels named)."""
    if scale is None:
        return [Violation(name, op, "Q/DQ scale", "scale is not an initializer or Constant")]
    flat = np.asarray(scale, dtype=np.float64).ravel()
    bad = np.flatnonzero(~(np.isfinite(flat) & (flat > 0)))
    if not bad.size:
        return []
    where = "scale" if flat.size == 1 else "channel " + ", ".join(str(int(i)) for i in bad[:4]) + \
        (f" (and {bad.size - 4} more)" if bad.size > 4 else "")
    return [Violation(name, op, "Q/DQ scale", f"{where}: scale {flat[bad[0]]:g}, must be finite and > 0")]


def _dims(v: onnx.ValueInfoProto) -> list[int] | None:
    t = v.type.tensor_type if v.type.HasField("tensor_type") else None
    if t is None or not t.HasField("shape") or not all(d.HasField("dim_value") for d in t.shape.dim):
        return None
    return [int(d.dim_value) for d in t.shape.dim]


def _size_violations(model: onnx.ModelProto, g: onnx.GraphProto) -> list[Violation]:
    """The tensor-size rule on a shape-inferred graph ``g`` of ``model``: one violation per tensor of more than
    :data:`MAX_TENSOR_ELEMENTS` elements, naming it, its shape and what fits (PAM's map: the chunked form)."""
    att = attention_nodes(model)
    pam = {o for n in g.node if n.name in set(att.pam_energy) | set(att.pam_softmax) for o in n.output}
    shapes = {t.name: [int(d) for d in t.dims] for t in g.initializer}
    for v in list(g.input) + list(g.value_info) + list(g.output):
        dims = _dims(v)
        if dims is not None:
            shapes[v.name] = dims
    out = []
    for name, dims in shapes.items():
        count = math.prod(dims)
        if count <= MAX_TENSOR_ELEMENTS:
            continue
        fix = ("write PAM in query slices (export --attention chunked: one slice of the map per chunk) or export at "
               "a smaller --imgsz" if name in pam else "export at a smaller --imgsz or --batch")
        out.append(Violation(name, "tensor", "tensor size",
                             f"tensor {name!r} of shape {dims} holds {count:,} elements, at or above 2^31 (TensorRT "
                             f"indexes tensors with int32: NVIDIA/TensorRT issue 3815): {fix}"))
    return out


def oversized_tensors(model: onnx.ModelProto) -> list[Violation]:
    """The tensor-size rule alone (shape inference on a copy): what export checks before it runs a graph."""
    try:
        g = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    except Exception:  # noqa: BLE001 - as check_tensorrt_compat: no shapes, no size to judge
        return []
    return _size_violations(model, g)


def _attention_violations(name: str, node: onnx.NodeProto, rank: dict[str, int | None]) -> list[Violation]:
    """onnx-tensorrt's restrictions on ONNX ``Attention`` (module docstring); ``rank``: tensor -> rank or None."""
    out = []
    for attr in _ATTENTION_REFUSED_ATTRS:
        if any(a.name == attr for a in node.attribute):
            out.append(Violation(name, "Attention", "Attention attributes",
                                 f"attribute {attr!r} is not imported by TensorRT's ONNX parser (drop it)"))
    if any(node.input[4:6]):
        out.append(Violation(name, "Attention", "Attention past/present KV",
                             "past_key / past_value inputs (a KV cache) are not imported"))
    extra = [o for o in node.output[1:] if o]
    if extra:
        out.append(Violation(name, "Attention", "Attention outputs",
                             f"one output only (Y); present_key / present_value / qk_matmul_output {extra} are not "
                             "imported"))
    for role, t in zip(("Q", "K", "V"), node.input[:3]):
        r = rank.get(t)
        if r is not None and r != 4:
            out.append(Violation(name, "Attention", "Attention 4-D inputs",
                                 f"{role} {t!r} is {r}-D; TensorRT imports 4-D (N, heads, L, head size) Q, K, V only"))
    return out


def check_tensorrt_compat(model: onnx.ModelProto, tensorrt: tuple[int, int] = (10, 3)) -> list[Violation]:
    """Rules of the TensorRT ONNX parser (version ``tensorrt``, default JetPack 6's 10.3) that ``model`` breaks
    (empty list: none).

    Runs ONNX shape inference on a copy (``model`` is not changed) to know every tensor's type
    and shape. See the module docstring for the rules.
    """
    out: list[Violation] = []
    opset = _opset(model)
    attention = tuple(tensorrt) >= ATTENTION_TENSORRT
    low, high = OPSET_RANGE[0], ATTENTION_OPSET if attention else OPSET_RANGE[1]
    if not low <= opset <= high:
        out.append(Violation(_GRAPH, "-", "opset range", f"opset {opset} is outside {low}..{high} (TensorRT "
                             f"{'.'.join(map(str, tensorrt))}; ONNX Attention needs opset 23 and TensorRT >= 10.14)"))
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - a graph inference cannot read still gets the structural checks
        inferred = model
    g = inferred.graph
    inits = {i.name: i for i in g.initializer}
    consts = {o: n for n in g.node if n.op_type == "Constant" for o in n.output}
    io_names = {v.name for v in list(g.input) + list(g.output)}
    values = {v.name: v for v in list(g.input) + list(g.output) + list(g.value_info)}

    def const_value(name: str) -> np.ndarray | None:
        return constant_value(g, name) if name in inits or name in consts else None

    def elem(name: str) -> int | None:
        if name in inits:
            return inits[name].data_type
        v = values.get(name)
        return v.type.tensor_type.elem_type if v is not None and v.type.HasField("tensor_type") else None

    for v in list(g.input) + list(g.output):
        if not is_static(v.type):
            out.append(Violation(v.name, "graph input/output", "static shapes",
                                 f"tensor {v.name!r} has a dynamic or unknown dimension"))
    for v in g.value_info:
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape") and not is_static(v.type):
            out.append(Violation(v.name, "tensor", "static shapes", f"tensor {v.name!r} has a dynamic dimension"))
    for name, init in inits.items():
        if init.data_type == TensorProto.DOUBLE:
            out.append(Violation(name, "initializer", "no float64", "DOUBLE initializer"))
    out.extend(_size_violations(model, g))
    rank = {n: len(d) for n, d in ((v.name, _dims(v)) for v in values.values()) if d is not None}

    for node in g.node:
        name = node.name or (node.output[0] if node.output else node.op_type)
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            out.append(Violation(name, op, "operator domain", f"domain {node.domain!r} is not parsed by TensorRT"))
            continue
        if op not in SUPPORTED_OPS and not (op == "Attention" and attention):
            more = " (ONNX Attention: TensorRT >= 10.14)" if op == "Attention" else ""
            out.append(Violation(name, op, "operator support", f"{op} is not in the supported operator list{more}"))
        if op == "Attention" and attention:
            out.extend(_attention_violations(name, node, rank))
        if op == "Shape":
            out.append(Violation(name, op, "static shapes", "leftover Shape arithmetic (fold it at export)"))
        for o in node.output:
            t = elem(o)
            if t == TensorProto.DOUBLE:
                out.append(Violation(name, op, "no float64", f"output {o!r} is DOUBLE"))
            if t == TensorProto.UINT8 and o not in io_names and op != "QuantizeLinear":
                out.append(Violation(name, op, "uint8 only as network I/O", f"intermediate {o!r} is UINT8"))
        if op == "Cast" and _attr(node, "to") == TensorProto.DOUBLE:
            out.append(Violation(name, op, "no float64", "Cast to DOUBLE"))
        if op in ("QuantizeLinear", "DequantizeLinear"):
            out.extend(_scale_violations(name, op, const_value(node.input[1]) if len(node.input) > 1 else None))
            if len(node.input) < 3 or not node.input[2]:
                if op == "QuantizeLinear":
                    out.append(Violation(name, op, "Q/DQ zero point", "no zero point: output defaults to UINT8"))
                elif elem(node.input[0]) not in _QDQ_TYPES:
                    out.append(Violation(name, op, "Q/DQ zero point", "input is not INT8"))
            else:
                zp = const_value(node.input[2])
                if zp is None:
                    out.append(Violation(name, op, "Q/DQ zero point", "zero point is not an initializer"))
                else:
                    zp_type = elem(node.input[2])
                    if zp_type not in _QDQ_TYPES:
                        tname = TensorProto.DataType.Name(zp_type) if zp_type is not None else "unknown"
                        out.append(Violation(name, op, "Q/DQ zero point", f"zero point type {tname}, must be INT8"))
                    if np.any(zp != 0):
                        out.append(Violation(name, op, "Q/DQ zero point",
                                             f"zero point {zp.ravel()[:4].tolist()} is not 0 (must be symmetric)"))
        if op == "Resize":
            mode = _attr(node, "mode", "nearest")
            ctm = _attr(node, "coordinate_transformation_mode", "half_pixel")
            if mode not in RESIZE_MODES:
                out.append(Violation(name, op, "Resize mode", f"mode {mode!r}; allowed: {sorted(RESIZE_MODES)}"))
            if ctm not in RESIZE_COORDINATE_MODES:
                out.append(Violation(name, op, "Resize mode",
                                     f"coordinate_transformation_mode {ctm!r}; allowed: {sorted(RESIZE_COORDINATE_MODES)}"))
        if op in _REDUCE_OPS:
            axes_is_input = opset >= 18 or (op == "ReduceSum" and opset >= 13)
            if axes_is_input and len(node.input) > 1 and node.input[1] and const_value(node.input[1]) is None:
                out.append(Violation(name, op, "Reduce axes", "axes input must be an initializer"))
            if not axes_is_input and len(node.input) > 1 and node.input[1]:
                out.append(Violation(name, op, "Reduce axes", f"axes must be an attribute at opset {opset}"))
        if op in ("Reshape", "Expand", "Tile") and len(node.input) > 1 and const_value(node.input[1]) is None:
            out.append(Violation(name, op, "static shapes", f"shape input {node.input[1]!r} is computed, not constant"))
        if op == "Resize":
            for i in node.input[1:]:
                if i and const_value(i) is None:
                    out.append(Violation(name, op, "static shapes", f"input {i!r} is computed, not constant"))
    return out


def required_tensorrt(model: onnx.ModelProto) -> tuple[int, int]:
    """The oldest TensorRT whose parser the graph is written for: :data:`ATTENTION_TENSORRT` when it holds an ONNX
    ``Attention`` node (the ``attention-op`` form), else JetPack 6's 10.3."""
    return ATTENTION_TENSORRT if any(n.op_type == "Attention" for n in model.graph.node) else (10, 3)


def enforce_tensorrt_compat(model: onnx.ModelProto, target: str = "tensorrt",
                            tensorrt: tuple[int, int] = (10, 3)) -> list[Violation]:
    """Check ``model`` against TensorRT ``tensorrt``'s parser; for ``target == "tensorrt"`` raise on the first
    violations, else return them.

    Raises:
        CompatibilityError: names the node and the rule broken (up to three listed).
    """
    violations = check_tensorrt_compat(model, tensorrt)
    if violations and target == "tensorrt":
        more = f" (and {len(violations) - 3} more)" if len(violations) > 3 else ""
        raise CompatibilityError("; ".join(str(v) for v in violations[:3]) + more)
    return violations
