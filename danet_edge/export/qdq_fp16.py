"""FP16 outside the Q/DQ of a TensorRT-target INT8 graph, with Q/DQ scales TensorRT accepts.

Under strong typing every op left outside the Q/DQ runs at the type the graph gives it, so the INT8 graph's
unquantized part is converted to FP16 (``fp16.fp16_with_islands``, with the FP32 islands) and the Q/DQ
scales become FP16 too (opset 19). :func:`fp16_scale` keeps each scale positive (onnx-tensorrt refuses a
scale <= 0) and never smaller than its FP32 value."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from ..graph.precision import producers


__all__ = ['FP16_MIN_NORMAL', 'FP16_MIN_POSITIVE', 'fp16_scale']


def _qdq_scales(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    inits = {i.name: i for i in model.graph.initializer}
    names = {n.input[1] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    return {k: numpy_helper.to_array(inits[k]).astype(np.float64) for k in names if k in inits}


FP16_MIN_NORMAL = 2.0 ** -14  # 6.1e-5: below it FP16 values are subnormal (fewer significant bits)


FP16_MIN_POSITIVE = 2.0 ** -24  # 6.0e-8: the smallest positive FP16; anything below half of it rounds to 0


def fp16_scale(scale: np.ndarray) -> np.ndarray:
    """Q/DQ scales as FP16 values TensorRT accepts, returned as float32 (exactly representable in FP16).

    ``scale``: any shape, float32, >= 0. Scales at or above FP16's smallest normal (6.1e-5) round to the
    nearest FP16 (relative error <= 2^-11). Smaller ones (per-channel weight scales of near-dead or BN-folded
    channels: a channel whose largest weight is under 7.8e-3) go to the next FP16 at or above
    ``max(scale, 2^-24)``: rounding to nearest would make a scale under 3e-8 zero, and onnx-tensorrt's Q/DQ
    importer requires every scale > 0 (``QuantDequantLinearHelper``); rounding up never shrinks a scale, so a
    value quantized with it is never clipped. Weights quantized with the old scale must be requantized
    (:func:`_fp16_safe_scales` does).
    """
    s = np.asarray(scale, dtype=np.float32)
    floor = np.maximum(s, np.float32(FP16_MIN_POSITIVE))
    up = floor.astype(np.float16)
    up = np.where(up.astype(np.float32) < floor, np.nextafter(up, np.float16(np.inf)), up)
    return np.where(s < FP16_MIN_NORMAL, up, s.astype(np.float16)).astype(np.float32)


def _fp16_safe_scales(model: onnx.ModelProto) -> int:
    """Replace every Q/DQ scale initializer by :func:`fp16_scale` of it, in place, before the graph goes FP16;
    the INT8 weights dequantized with a raised scale are requantized against it (``q * s / s16``, rounded;
    ``|q'| <= |q|`` since ``s16 >= s``), so what a DQ gives is the weight within one step ``s16`` (half a step
    from ONNX Runtime's rounding to ``s``, half from this one).

    Returns how many scale values were rounded up (those under FP16's smallest normal).
    """
    inits = {i.name: i for i in model.graph.initializer}
    raised = 0
    new_scales: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for n in model.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(n.input) < 2 or n.input[1] not in inits:
            continue
        name = n.input[1]
        if name not in new_scales:
            s = numpy_helper.to_array(inits[name]).astype(np.float32)
            s16 = fp16_scale(s)
            changed = s < FP16_MIN_NORMAL  # rounded up (subnormal range), not to nearest: requantize against it
            new_scales[name] = (s, s16, changed)
            if np.any(changed):
                raised += int(np.sum(changed))
                inits[name].CopyFrom(numpy_helper.from_array(s16.astype(np.float32), name))
        s, s16, changed = new_scales[name]
        w = inits.get(n.input[0])
        if n.op_type != "DequantizeLinear" or w is None or w.data_type != TensorProto.INT8 or not np.any(changed):
            continue
        q = numpy_helper.to_array(w).astype(np.float64)
        ratio = np.where(changed, s.astype(np.float64) / s16.astype(np.float64), 1.0)
        if ratio.ndim == 1 and q.ndim > 1:  # per-channel along ``axis`` (default 1; ORT writes 0 for Conv weights)
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1) % q.ndim
            ratio = ratio.reshape([-1 if d == axis else 1 for d in range(q.ndim)])
        requant = np.clip(np.rint(q * ratio), -128, 127).astype(np.int8)
        w.CopyFrom(numpy_helper.from_array(requant, w.name))
    return raised


def _fp16_outside_qdq(model: onnx.ModelProto, pam_energy: bool | None = None) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """FP16 for every op outside the Q/DQ but the FP32 islands; opset 19 so Q/DQ scales are FP16.

    ``pam_energy``: keep PAM's energy MatMul and Softmax in FP32 (the FP32 graph's decision,
    ``precision.pam_energy_in_fp32``; None: read from ``model``'s own embedded manifest).

    Scales are first made FP16-safe (:func:`fp16_scale`: none rounds to 0, which TensorRT's parser refuses).
    Returns the graph and what FP16 did to the scales: how many fell below FP16's smallest normal
    (6.1e-5: per-channel weight scales of small weights; stored as subnormals with fewer bits), how many of
    those were rounded up (their weights requantized against the stored scale) and the largest relative
    change of any scale.
    """
    from onnx import version_converter

    from ..graph.precision import default_fp32_islands
    from .fp16 import fp16_with_islands

    before = _qdq_scales(model)
    raised = _fp16_safe_scales(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 19:
        model = version_converter.convert_version(model, 19)
    producer = producers(model.graph)
    quantized = {n.name for n in model.graph.node  # INT8 already (e.g. attention with include_attention)
                 if any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in n.input[:2])}
    model = fp16_with_islands(model, [n for n in default_fp32_islands(model, pam_energy) if n not in quantized])
    after = _qdq_scales(model)
    values = np.concatenate([v.ravel() for v in before.values()]) if before else np.zeros(0)
    rel = max((float(np.max(np.abs(after[k] - v) / np.maximum(np.abs(v), 1e-30))) for k, v in before.items()
               if k in after), default=0.0)
    return model, {"fp16_scales_subnormal": int((np.abs(values) < FP16_MIN_NORMAL).sum()),
                   "fp16_scales_raised": raised, "fp16_scales": int(values.size),
                   "fp16_scale_max_rel_error": float(f"{rel:.3g}")}
