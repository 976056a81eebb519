"""Per-layer quantization sensitivity, and mixed precision to an accuracy budget.

For an INT8 Q/DQ graph (``quantize.quantize_int8``) and the FP32 graph it came from, each quantized
layer (a Conv, MatMul or Gemm fed by DequantizeLinear) is ranked by what quantizing it costs: the graph is
evaluated with that one layer taken back to high precision (its input read before the Q/DQ, its FP32
weights at the graph's high precision: FP16 in the TensorRT-target graph, FP32 otherwise) and everything
else left INT8; the gain in pixel agreement with the FP32 graph (points), in relative L2 of the logits,
and (with labels) in mIoU is the layer's sensitivity. This leave-one-out measure on the all-INT8 graph is
what keeping a layer buys, the question the budget asks (Polygraphy's ``debug precision`` and ModelOpt's
per-layer analysis ask it the same way, by bisecting or one layer at a time).

:func:`fit_budget` then tries layers in high precision, most gain per GFLOP first (the knapsack greedy:
the INT8 share of compute stays as large as it can), re-measuring after each and keeping a layer only if it
brings the graph closer to the budget with the layers already kept, until the budget holds:
``min_agreement`` (% of pixels equal to the FP32 graph's) and/or ``max_miou_drop`` (mIoU points against
labels, FP32 graph minus candidate). Everything runs in ONNX Runtime on CPU, on the frames given.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ..graph.cost import WEIGHTED_OPS, graph_cost
from ..core.errors import ConfigError
from ..core.utils import atomic_path
from ..data.frames import model_inputs
from .quantize import drop_unread_qdq

__all__ = ["LayerSensitivity", "SensitivityReport", "Evaluator", "quantized_layers",
           "keep_high_precision", "rank_layers", "format_ranking", "write_ranking"]

Log = Callable[[str], None]


@dataclass
class LayerSensitivity:
    """One quantized layer: its compute (GFLOP) and what keeping it in high precision gains over the
    all-INT8 graph: ``agreement_gain`` (points of pixel agreement with FP32), ``rel_l2_gain`` (drop of the
    logits' relative L2 error), ``miou_gain`` (mIoU points, with labels; else None)."""

    name: str
    op_type: str
    gflop: float
    agreement_gain: float
    rel_l2_gain: float
    miou_gain: float | None = None

    @property
    def gain(self) -> float:
        """The figure the budget ranks by: mIoU gain with labels, else agreement gain (points)."""
        return self.miou_gain if self.miou_gain is not None else self.agreement_gain


@dataclass
class SensitivityReport:
    """The ranking (most sensitive first) and the all-INT8 graph's figures it is measured from."""

    base: dict[str, float | None]
    layers: list[LayerSensitivity]
    frames: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"base": self.base, "frames": self.frames, "seconds": round(self.seconds, 1),
                "layers": [asdict(x) for x in self.layers]}


class Evaluator:
    """Runs candidate graphs in ONNX Runtime on fixed frames and compares them with the FP32 graph.

    Args:
        fp32: the FP32 graph (reference).
        manifest: its manifest (size, batch, normalisation, I/O names).
        frames: ``(H, W, 3) uint8 RGB`` images.
        labels: ground truth ``(H, W)`` per frame (optional; gives mIoU), with ``num_classes`` and
            ``ignore_index``.
        threads: ONNX Runtime intra-op threads (0: its default).
    """

    def __init__(self, fp32: onnx.ModelProto, manifest: Any, frames: Sequence[np.ndarray],
                 labels: Sequence[np.ndarray] | None = None, num_classes: int | None = None,
                 ignore_index: int = 255, threads: int = 0) -> None:
        from ..data.preprocess import resize_labels

        if not frames:
            raise ConfigError("the sensitivity analysis needs at least one image")
        self.manifest, self.threads, self.n = manifest, threads, len(frames)
        self.inputs = model_inputs(list(frames), manifest)
        self.num_classes = num_classes or len(manifest.classes)
        self.ignore_index = ignore_index
        size = tuple(manifest.image_size)
        self.labels = [resize_labels(np.asarray(lb), size) for lb in labels] if labels is not None else None
        self.ref_logits = self._run(fp32, fp16=False)
        self.ref_pred = self.ref_logits.argmax(1)
        self.reference = {"agreement": 100.0, "rel_l2": 0.0, "miou": self._miou(self.ref_pred)}

    def _run(self, model: onnx.ModelProto, fp16: bool) -> np.ndarray:
        from ..core.optional import import_onnxruntime
        from ..runtime.ort_backend import session_options

        ort = import_onnxruntime()
        s = ort.InferenceSession(model.SerializeToString(), session_options("int8", self.threads, fp16),
                                 providers=["CPUExecutionProvider"])
        name = s.get_inputs()[0].name
        return np.concatenate([s.run(None, {name: x})[0] for x in self.inputs])[:self.n].astype(np.float32)

    def _miou(self, pred: np.ndarray) -> float | None:
        from ..core.metrics import ConfusionMatrix

        if self.labels is None:
            return None
        cm = ConfusionMatrix(self.num_classes, self.ignore_index)
        for p, t in zip(pred, self.labels):
            cm.update(p, t)
        return 100.0 * float(cm.miou())

    def evaluate(self, model: onnx.ModelProto) -> dict[str, float | None]:
        """``{"agreement": % vs FP32, "rel_l2": logits vs FP32, "miou": % or None}`` of ``model``."""
        fp16 = any(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer)
        logits = self._run(model, fp16)
        pred = logits.argmax(1)
        rel = float(np.linalg.norm(logits - self.ref_logits) / max(float(np.linalg.norm(self.ref_logits)), 1e-30))
        return {"agreement": 100.0 * float((pred == self.ref_pred).mean()), "rel_l2": rel, "miou": self._miou(pred)}


def quantized_layers(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv/MatMul/Gemm nodes whose data inputs come from DequantizeLinear (INT8 layers)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    return [n.name for n in model.graph.node if n.op_type in WEIGHTED_OPS and n.input[:2]
            and all(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in n.input[:2])]


def keep_high_precision(int8: onnx.ModelProto, fp32: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``int8`` with the layers ``names`` out of INT8: each reads its activation from before the
    Q/DQ and its FP32 weights (from ``fp32``, same node names) at the type the activation has (FP16 or FP32);
    Q/DQ nodes nobody reads any more are removed.

    Raises:
        ConfigError: a name that is not a quantized layer of ``int8`` or has no counterpart in ``fp32``.
    """
    model = copy.deepcopy(int8)
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    fp32_nodes = {n.name: n for n in fp32.graph.node}
    fp32_inits = {i.name: i for i in fp32.graph.initializer}
    quantized = set(quantized_layers(model))
    types = {v.name: v.type.tensor_type.elem_type for v in
             onnx.shape_inference.infer_shapes(model).graph.value_info}
    types.update({i.name: i.data_type for i in g.initializer})
    types.update({v.name: v.type.tensor_type.elem_type for v in g.input})
    touched: set[str] = set()
    for n in g.node:
        if n.name not in names:
            continue
        touched.update(n.input[:2])
        if n.name not in quantized or n.name not in fp32_nodes:
            raise ConfigError(f"{n.name} is not a quantized layer of this graph")
        act_q = producer[producer[n.input[0]].input[0]]
        activation = act_q.input[0] if act_q.op_type == "QuantizeLinear" else producer[n.input[0]].input[0]
        dtype = types.get(activation, TensorProto.FLOAT)
        ref = fp32_nodes[n.name]
        if ref.input[1] not in fp32_inits:
            raise ConfigError(f"{n.name}: its FP32 weights are not an initializer of the FP32 graph")
        w = numpy_helper.to_array(fp32_inits[ref.input[1]])
        w = w.astype(np.float16 if dtype == TensorProto.FLOAT16 else np.float32)
        wname = f"{n.name}_weight_high_precision"
        g.initializer.append(numpy_helper.from_array(w, wname))
        n.input[0], n.input[1] = activation, wname
    _bypass_orphan_qdq(model, names, touched)
    drop_unread_qdq(g)
    return model


def _bypass_orphan_qdq(model: onnx.ModelProto, kept: Sequence[str], touched: set[str]) -> None:
    """Take away the rounding that only served the layers now kept in high precision; leave every other Q/DQ.

    * A DQ the kept layers read (``touched``) that no remaining reader needs (an INT8 layer, an Add fusing into
      an INT8 Conv, or an Add whose inputs are all DQ: ONNX Runtime's fusable QLinearAdd form of the cpu graph)
      is bypassed: its readers take the tensor from before the Q.
    * A residual Add fed straight by a kept layer no longer fuses into an INT8 Conv: it reads its skip input from
      before the Q (the Q/DQ stays for any INT8 layer that shares it).

    Q/DQ pairs elsewhere (the cpu graph quantizes Conv outputs and Add inputs too) stay as they are, so keeping
    one layer measures that layer alone."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    int8 = set(quantized_layers(model))
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)

    def from_op(i: str, op: str) -> bool:
        return producer.get(i) is not None and producer[i].op_type == op

    def needs_qdq(reader: onnx.NodeProto) -> bool:
        if reader.name in int8:
            return True
        return reader.op_type == "Add" and (any(producer.get(i) is not None and producer[i].name in int8
                                                for i in reader.input)
                                            or all(from_op(i, "DequantizeLinear") for i in reader.input))

    def before_q(i: str) -> str | None:
        dq = producer.get(i)
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        return q.input[0] if q is not None and q.op_type == "QuantizeLinear" else None

    for out in touched:
        src = before_q(out)
        if src is None or any(needs_qdq(r) for r in readers.get(out, [])):
            continue
        for r in readers.get(out, []):
            r.input[:] = [src if i == out else i for i in r.input]
    kept_outputs = {o for n in g.node if n.name in kept for o in n.output}
    for add in [n for n in g.node if n.op_type == "Add" and kept_outputs.intersection(n.input)]:
        if any(producer.get(i) is not None and producer[i].name in int8 for i in add.input):
            continue  # still fuses into an INT8 Conv on its other input
        add.input[:] = [before_q(i) or i for i in add.input]


def rank_layers(int8: onnx.ModelProto, fp32: onnx.ModelProto, evaluator: Evaluator,
                layers: Sequence[str] | None = None, log: Log | None = None) -> SensitivityReport:
    """Leave-one-out sensitivity of every quantized layer (module docstring), most sensitive first."""
    from ..core.progress import track

    t0 = time.perf_counter()
    base = evaluator.evaluate(int8)
    flops = {n.name: n.flops for n in graph_cost(int8).nodes}
    out = []
    for name in track(list(layers or quantized_layers(int8)), "layer sensitivity"):
        score = evaluator.evaluate(keep_high_precision(int8, fp32, [name]))
        op = next(n.op_type for n in int8.graph.node if n.name == name)
        miou_gain = score["miou"] - base["miou"] if base["miou"] is not None else None
        out.append(LayerSensitivity(name, op, round(flops.get(name, 0) / 1e9, 4),
                                    round(score["agreement"] - base["agreement"], 4),
                                    round(base["rel_l2"] - score["rel_l2"], 6),
                                    None if miou_gain is None else round(miou_gain, 4)))
        if log:
            log(f"  {name}: agreement {score['agreement']:.3f} % ({out[-1].agreement_gain:+.3f})")
    out.sort(key=lambda x: (x.gain, x.rel_l2_gain), reverse=True)
    return SensitivityReport(base, out, evaluator.n, time.perf_counter() - t0)


def format_ranking(report: SensitivityReport, top: int = 15) -> str:
    """The ranking as a Markdown table (the ``top`` most sensitive layers)."""
    lines = [f"All-INT8 graph on {report.frames} images: agreement with FP32 {report.base['agreement']:.3f} %, "
             f"relative L2 {report.base['rel_l2']:.3g}" + (f", mIoU {report.base['miou']:.2f}"
                                                           if report.base.get("miou") is not None else ""), "",
             "| rank | layer | op | GFLOP | agreement gain (points) | rel L2 gain | mIoU gain |", "|---|---|---|---|---|---|---|"]
    for i, x in enumerate(report.layers[:top], 1):
        miou = "-" if x.miou_gain is None else f"{x.miou_gain:+.3f}"
        lines.append(f"| {i} | `{x.name}` | {x.op_type} | {x.gflop:.3f} | {x.agreement_gain:+.4f} | "
                     f"{x.rel_l2_gain:+.2e} | {miou} |")
    return "\n".join(lines)


def write_ranking(report: SensitivityReport, md_path: Any, png_path: Any | None = None, top: int = 20) -> None:
    """The ranking as Markdown (``md_path``) and a bar chart of the ``top`` gains (``png_path``), atomically.

    Raises:
        MissingDependencyError: ``png_path`` is given and matplotlib is not importable (the Markdown is written).
    """
    with atomic_path(Path(md_path)) as tmp:
        tmp.write_text("# Per-layer INT8 sensitivity\n\n" + format_ranking(report, top) + "\n")
    if png_path is None:
        return
    from ..core.optional import import_matplotlib

    import_matplotlib()  # MissingDependencyError (one line) without it; selects Agg
    import matplotlib.pyplot as plt

    layers = report.layers[:top][::-1]
    labels = "mIoU" if layers and layers[0].miou_gain is not None else "agreement with FP32"
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(layers) + 1.4))
    ax.barh([x.name.strip("/") for x in layers], [x.gain for x in layers], color="#4a78b5")
    ax.set_xlabel(f"gain in {labels} when the layer is kept in high precision (points)")
    ax.set_title(f"INT8 sensitivity, top {len(layers)} layers ({report.frames} images)")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    with atomic_path(Path(png_path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


