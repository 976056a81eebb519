"""Where QAT's fake quantization goes, and back to a graph: the QAT record of a recipe's Q/DQ graph (:func:`qat_plan`),
the ranges that make ONNX Runtime's quantizer write the learned scales (:func:`learned_ranges`), and the check that a
QAT graph quantizes exactly the record's tensors (:func:`check_placement`). The steps that use them are in
``export.qat_train``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..core.errors import ExportError
from ..core.utils import read_json
from ..graph.precision import constant_value, consumers, producers
from ..model.fakequant import QAT_FORMAT, validate_qat_record
from .quantize import residual_adds

__all__ = ["qat_plan", "learned_ranges", "qat_provenance", "quantized_tensors", "check_placement", "ranges_file",
           "module_path"]



def module_path(node_name: str) -> str:
    """The PyTorch module a node of a TorchScript-exported graph came from: ``/backbone/layer1/layer1.0/conv1/Conv``
    -> ``backbone.layer1.0.conv1`` (each scope repeats its parent's name before a Sequential index)."""
    parts = node_name.strip("/").split("/")[:-1]
    out, prev = [], None
    for seg in parts:
        out.append(seg[len(prev) + 1:] if prev and seg.startswith(prev + ".") else seg)
        prev = seg
    return ".".join(out)


def _inside(node: onnx.NodeProto | None, module: str) -> bool:
    """Whether ``node`` was made inside ``module`` (a graph input or constant is made nowhere)."""
    if node is None:
        return False
    path = module_path(node.name)
    return path == module or path.startswith(module + ".")


def _const(g: onnx.GraphProto, name: str) -> np.ndarray:
    value = constant_value(g, name)
    if value is None:
        raise ExportError(f"Q/DQ graph: no constant {name!r}")
    return value


def quantized_tensors(qdq: onnx.ModelProto, fp32: onnx.ModelProto) -> dict[str, dict[str, Any]]:
    """Every activation a Q/DQ graph quantizes, named as in the FP32 graph it came from:
    ``{fp32 tensor: {"scale", "zero_point", "qmin", "qmax", "readers": [(node name, op, input index)]}}``.

    A DequantizeLinear that reads an initializer is a weight, not listed. Names are taken from the readers'
    inputs in the FP32 graph, so casts and fused I/O added after quantization do not change them.

    Raises:
        ExportError: a DequantizeLinear whose readers are not nodes of the FP32 graph, or read different tensors.
    """
    g, fg = qdq.graph, fp32.graph
    fnodes = {n.name: n for n in fg.node}
    prod, cons = producers(g), consumers(g)
    inits = {i.name for i in g.initializer}
    out: dict[str, dict[str, Any]] = {}
    for dq in g.node:
        if dq.op_type != "DequantizeLinear" or dq.input[0] in inits:
            continue
        q = prod.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        scale = float(np.asarray(_const(g, dq.input[1]), dtype=np.float64).reshape(-1)[0])
        zp_arr = _const(g, dq.input[2]) if len(dq.input) > 2 and dq.input[2] else np.zeros((), np.int8)
        zero_point = int(np.asarray(zp_arr).reshape(-1)[0])
        info = np.iinfo(np.asarray(zp_arr).dtype)
        readers, names = [], set()
        for reader in cons.get(dq.output[0], []):
            idx = list(reader.input).index(dq.output[0])
            fnode = fnodes.get(reader.name)
            if fnode is None or idx >= len(fnode.input):
                raise ExportError(f"Q/DQ graph: {reader.name or reader.op_type} reads a Q/DQ pair but is not in the "
                                  "FP32 graph")
            names.add(fnode.input[idx])
            readers.append((reader.name, reader.op_type, idx))
        if len(names) != 1:
            raise ExportError(f"Q/DQ graph: the pair {dq.name} feeds {len(names)} different FP32 tensors")
        tensor = names.pop()
        out[tensor] = {"scale": scale, "zero_point": zero_point, "qmin": int(info.min), "qmax": int(info.max),
                       "readers": readers}
    return out


def _weight_convs(qdq: onnx.ModelProto) -> list[str]:
    """Names of the Conv nodes whose weight input comes through a DequantizeLinear of an initializer."""
    g = qdq.graph
    prod = producers(g)
    inits = {i.name for i in g.initializer}
    out = []
    for n in g.node:
        if n.op_type == "Conv" and len(n.input) > 1:
            dq = prod.get(n.input[1])
            if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
                out.append(n.name)
    return out


def qat_plan(qdq: onnx.ModelProto, fp32: onnx.ModelProto, recipe: str, target: str, ranges: dict[str, Any],
             image_size: tuple[int, int], source_sha256: str, calibration: dict[str, Any] | None = None
             ) -> dict[str, Any]:
    """The QAT record (``model.fakequant``) of a recipe's Q/DQ graph ``qdq`` made from the FP32 graph ``fp32``.

    Each quantized tensor becomes one quantizer with its sites: the ``input`` of each Conv that reads it, the
    ``skip`` of each residual Add that reads it (``quantize.residual_adds``), else the ``output`` of the Conv
    that makes it, else the ``module_input`` of the module whose node reads it when the tensor comes from outside
    that module (PAM's residual ``gamma * out + x`` reads PAM's input). ``ranges``: the calibration ranges ONNX Runtime computed (``{tensor: (lowest, highest)}``).

    Raises:
        ExportError: a quantized tensor read by something QAT cannot place (the message names it).
    """
    fg = fp32.graph
    fprod = producers(fg)
    residual = residual_adds(fp32)
    activations = []
    for tensor, q in quantized_tensors(qdq, fp32).items():
        sites: list[list[str]] = []
        for name, op, idx in q["readers"]:
            if op == "Conv" and idx == 0:
                site = ["input", module_path(name)]
            elif op == "Add" and name in residual and idx != residual[name]:
                site = ["skip", module_path(name)]
            elif fprod.get(tensor) is not None and fprod[tensor].op_type == "Conv":
                site = ["output", module_path(fprod[tensor].name)]
            elif module_path(name) and not _inside(fprod.get(tensor), module_path(name)):
                site = ["module_input", module_path(name)]  # e.g. PAM's ``gamma * out + x``: x is PAM's input
            else:
                raise ExportError(f"QAT cannot place the Q/DQ of {tensor} (read by {op} {name}): only Conv inputs and "
                                  "outputs and residual skips are simulated")
            if site not in sites:
                sites.append(site)
        activations.append({"tensor": tensor, "scale": q["scale"], "zero_point": q["zero_point"],
                            "qmin": q["qmin"], "qmax": q["qmax"], "sites": sites})
    record = {"format": QAT_FORMAT, "recipe": recipe, "target": target, "image_size": [int(s) for s in image_size],
              "source_sha256": source_sha256, "calibration": calibration or {}, "learned": False, "epochs": 0,
              "activations": activations, "weights": [module_path(n) for n in _weight_convs(qdq)],
              "ranges": {k: [float(v[0]), float(v[1])] for k, v in ranges.items()}}
    return validate_qat_record(record, "QAT plan")


def learned_ranges(record: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """The ranges to give ONNX Runtime's quantizer so that it writes the record's scales and zero points:
    the calibration ranges, with each quantized tensor's replaced by ``((qlo - z) s, (qhi - z) s)``, where
    ``qlo..qhi`` is -127..127 for symmetric INT8 (``ActivationSymmetric``: ONNX Runtime divides the larger
    bound by 127) and 0..255 for UINT8 (scale = range / 255, zero point = -lowest / scale)."""
    out = {k: (float(v[0]), float(v[1])) for k, v in record["ranges"].items()}
    for a in record["activations"]:
        s, z = float(a["scale"]), int(a["zero_point"])
        lo, hi = (-127, 127) if a["qmin"] < 0 else (a["qmin"], a["qmax"])
        out[a["tensor"]] = ((lo - z) * s, (hi - z) * s)
    return out


def qat_provenance(record: dict[str, Any]) -> dict[str, Any]:
    """What a QAT graph's manifest records of where its scales came from (``calibration.qat``): the recipe, the
    epochs fine-tuned, the float checkpoint QAT started from (SHA-256), the size it was fine-tuned at, the initial
    calibration, and the count of learned activation scales and INT8 weights."""
    return {"recipe": record["recipe"], "epochs": int(record.get("epochs", 0)), "learned": bool(record.get("learned")),
            "source_sha256": record["source_sha256"], "image_size": list(record["image_size"]),
            "initial_calibration": record.get("calibration", {}), "activation_scales": len(record["activations"]),
            "int8_weights": len(record["weights"])}


def check_placement(graph: str | os.PathLike[str], fp32: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Refuse a Q/DQ graph whose quantized activations are not exactly the QAT record's (FP32 tensor names).

    Raises:
        ExportError: naming the first few tensors quantized beyond the record's, or missing.
    """
    got = set(quantized_tensors(onnx.load(str(graph)), onnx.load(str(fp32))))
    expected = {a["tensor"] for a in record["activations"]}
    if got != expected:
        extra, missing = sorted(got - expected), sorted(expected - got)
        raise ExportError(f"the INT8 graph quantizes other tensors than the QAT record: {len(extra)} more "
                          f"({', '.join(extra[:3])}), {len(missing)} fewer ({', '.join(missing[:3])})")


def ranges_file(path: Path) -> dict[str, tuple[float, float]]:
    """``{tensor: (lowest, highest)}`` from ONNX Runtime's calibration cache (``TensorsData`` JSON)."""
    raw = read_json(path)
    data = raw.get("data") if isinstance(raw, dict) else None
    if not isinstance(data, dict):
        raise ExportError(f"{path}: not an ONNX Runtime calibration cache")
    return {k: (float(v["lowest"]), float(v["highest"])) for k, v in data.items()}


