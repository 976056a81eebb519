"""What precision a graph really computes in, and where DANet's attention is (pure ONNX analysis).

``attention_nodes`` finds PAM's and CAM's MatMuls, Softmaxes and CAM's ReduceMax/Sub by structure;
``default_fp32_islands`` names the nodes FP16 must leave in FP32: CAM's energy chain always (sums of ``H*W``
products of post-ReLU activations: they grow with the image and pass FP16's 65504 at trained magnitudes), PAM's
energy MatMul and Softmax only where :func:`decide_pam_energy` says so. ``precision_report`` reads the precision
back from the graph itself (ONNX shape inference), and ``verify_precision`` raises ``PrecisionError`` when what
was asked is not there. The FP16 conversion that uses the islands is ``export/fp16.py``.

PAM's energy ``Q^T K`` is a dot product over ``d = C/8`` channels: unlike CAM's it does not grow with the image.
Export measures its largest ``|value|`` on the images it runs (:class:`PamEnergy`, in the manifest's
``extra["attention"]["energy"]``) and keeps it in FP32 only in the forms TensorRT materialises (explicit,
chunked) and only when the measured value comes within :data:`PAM_ENERGY_MARGIN` of FP16's range, as ModelOpt's
AutoCast keeps a node in FP32 from the ranges it measures. The fusible forms (heads, attention-op) never keep it:
TensorRT's fused multi-head attention needs both batched MatMuls in FP16, BF16 or INT8 (an FP32 MatMul or Softmax
between them breaks the pattern), and the fused kernel accumulates ``Q K^T`` and the softmax in FP32 inside the
kernel without writing the map (TensorRT developer guide, "Multi-Head Attention Fusion"; quoted in
NVIDIA/TensorRT issues 2981 and 4167).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper


from ..core.errors import PrecisionError

__all__ = ["AttentionNodes", "attention_nodes", "default_fp32_islands", "FP16_MAX", "PAM_ENERGY_MARGIN",
           "FUSIBLE_FORMS", "PamEnergy", "decide_pam_energy", "pam_energy_in_fp32", "PrecisionReport", "precision_report",
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


#: FP16's largest finite value.
FP16_MAX = 65504.0
#: How far under :data:`FP16_MAX` PAM's measured largest ``|energy|`` must stay for its energy to leave FP32 in the
#: explicit and chunked forms: x16, four binary orders of headroom for images export did not see (a CamVid-trained
#: R-18 measured 427 on 24 held-out frames, 150x under FP16's largest value).
PAM_ENERGY_MARGIN = 16.0
#: PAM forms whose attention TensorRT can run as one fused kernel (one head size for Q, K and V).
FUSIBLE_FORMS = ("heads", "attention-op")


@dataclass(frozen=True)
class PamEnergy:
    """Where PAM's energy ``Q^T K`` computes in the FP16 and INT8 graphs, and the measurement that decided it.

    Attributes:
        form: PAM's form (``model.forms.EXPORT_FORMS``).
        max_abs: largest ``|Q^T K|`` measured in FP32 over ``images`` images (None: not measured).
        images: how many images it was measured on.
        fp32: keep PAM's energy MatMul and Softmax in FP32 (an island) in the FP16 / INT8 graphs.
        reason: one line saying why, for the manifest and the export log.
    """

    form: str
    max_abs: float | None
    images: int
    fp32: bool
    reason: str

    @property
    def fits_fp16(self) -> bool:
        """Whether the measured energy is within :data:`PAM_ENERGY_MARGIN` of FP16's range (False unmeasured):
        what ``build`` asks of an unfused engine, which stores the energy in FP16."""
        return self.max_abs is not None and self.max_abs * PAM_ENERGY_MARGIN < FP16_MAX

    def record(self) -> dict[str, Any]:
        """The manifest's ``extra["attention"]["energy"]``."""
        return {"max_abs": None if self.max_abs is None else float(f"{self.max_abs:.6g}"), "images": self.images,
                "fp16_max": FP16_MAX, "margin": PAM_ENERGY_MARGIN, "fits_fp16": self.fits_fp16,
                "fp32_island": self.fp32, "reason": self.reason}

    @classmethod
    def from_record(cls, form: str, record: dict[str, Any] | None) -> PamEnergy:
        """The decision a manifest recorded (``record()``); without one (a graph exported before it was
        measured), the explicit and chunked forms keep the island."""
        if not isinstance(record, dict) or not isinstance(record.get("fp32_island"), bool):
            return decide_pam_energy(form, None, 0)
        value = record.get("max_abs")
        return cls(form, float(value) if isinstance(value, (int, float)) else None, int(record.get("images") or 0),
                   bool(record["fp32_island"]), str(record.get("reason", "")))


def decide_pam_energy(form: str, max_abs: float | None, images: int) -> PamEnergy:
    """Whether PAM's energy stays in FP32 in the FP16 / INT8 graphs of ``form`` (module docstring).

    ``max_abs``: the largest ``|Q^T K|`` measured (FP32) on ``images`` images, None when not measured.
    """
    if form in FUSIBLE_FORMS:
        return PamEnergy(form, max_abs, images, False,
                         "fusible form: Q, K and V enter TensorRT's fused attention in FP16, which accumulates Q K^T "
                         "and the softmax in FP32 inside the kernel")
    if max_abs is None:
        return PamEnergy(form, None, images, True, "PAM energy not measured: kept in FP32")
    if not max_abs * PAM_ENERGY_MARGIN < FP16_MAX:
        return PamEnergy(form, max_abs, images, True,
                         f"largest |PAM energy| {max_abs:.4g} on {images} images is within x{PAM_ENERGY_MARGIN:g} of "
                         f"FP16's {FP16_MAX:g}: kept in FP32")
    return PamEnergy(form, max_abs, images, False,
                     f"largest |PAM energy| {max_abs:.4g} on {images} images, {FP16_MAX / max_abs:.0f}x under FP16's "
                     f"{FP16_MAX:g} (margin x{PAM_ENERGY_MARGIN:g}): FP16")


def pam_energy_in_fp32(model: onnx.ModelProto) -> bool:
    """The PAM decision of a graph export wrote (:class:`PamEnergy` in the manifest embedded in its
    ``metadata_props``); a graph without one keeps PAM's energy in FP32 unless its form (read from its structure)
    is fusible."""
    import json

    from ..core.onnx_meta import METADATA_KEY

    text = next((p.value for p in model.metadata_props if p.key == METADATA_KEY), None)
    try:
        attention = (json.loads(text).get("extra") or {}).get("attention") or {} if text else {}
    except (ValueError, AttributeError):
        attention = {}
    form = attention.get("form") if isinstance(attention, dict) else None
    if not isinstance(form, str):  # a graph without export's manifest: its form read from its structure
        form = _structural_form(model)
    return PamEnergy.from_record(form, attention.get("energy") if isinstance(attention, dict) else None).fp32


def _structural_form(model: onnx.ModelProto) -> str:
    """PAM's form from the graph's nodes alone (``memory.attention_form`` reads it with shapes): an ``Attention``
    node, a Q that reaches the energy MatMul through an ``Expand`` (the heads form), several PAM Softmaxes
    (chunked), else explicit."""
    a = attention_nodes(model)
    if a.pam_op:
        return "attention-op"
    prod, by_name = producers(model.graph), {n.name: n for n in model.graph.node}
    for e in a.pam_energy:
        n = prod.get(by_name[e].input[0])
        while n is not None and n.op_type in ("Mul", "Cast"):
            n = prod.get(n.input[0])
        if n is not None and n.op_type == "Expand":
            return "heads"
    return "chunked" if len(a.pam_softmax) > 1 else "explicit"


def default_fp32_islands(model: onnx.ModelProto, pam_energy: bool | None = None) -> list[str]:
    """Node names kept in FP32 in the FP16 graph (module docstring): CAM's energy MatMul, ReduceMax, Sub and
    Softmax always; PAM's energy MatMul and Softmax when ``pam_energy`` (None: the graph's own decision,
    :func:`pam_energy_in_fp32`). An ONNX ``Attention`` node is never kept in FP32: it is the fusible form."""
    a = attention_nodes(model)
    keep_pam = pam_energy_in_fp32(model) if pam_energy is None else pam_energy
    names = a.cam_energy + a.cam_reduce + a.cam_softmax
    return names + (a.pam_energy + a.pam_softmax if keep_pam else [])



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
