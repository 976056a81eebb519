"""FP16 graphs with FP32 islands: an ONNX graph that really computes in FP16.

TensorRT 11 takes precision only from the network (strong typing), so the FP16 export is an ONNX graph
that computes in FP16: FP32 inputs and outputs (``keep_io_types``), FP16 inside, FP32 islands where FP16
overflows or loses the result (``graph.precision.default_fp32_islands``). The converter is NVIDIA
ModelOpt AutoCast when it is importable (NVIDIA's recommendation for TensorRT 11), else a small pass here
(``fp16_with_islands``: onnxconverter-common's block list produced invalid graphs on DANet's chains of FP32
nodes).
"""

from __future__ import annotations

import copy
import importlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ..core.errors import ExportError, MissingDependencyError
from ..graph.precision import cast_to, default_fp32_islands

__all__ = ["convert_fp16", "fp16_with_islands"]

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
    with atomic_path(out, fp16.ByteSize()) as tmp:
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
        if fp16 and n.op_type == "Cast" and cast_to(n) == TensorProto.FLOAT:
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


