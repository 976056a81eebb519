"""The calibration ranges cache ``export`` reads back: ONNX Runtime's ``TensorsData`` JSON
(``onnxruntime.quantization.calibrate.save_tensors_data``) beside its record ``calib_<graph>_<method>.json``.

Read back only after :func:`ranges_cache_problem` finds nothing wrong: the cache is a regular file (no link, no
folder), the record holds its SHA-256, it was made by the calibration method asked, it holds a range for exactly the
tensors ONNX Runtime calibrates in this graph (:func:`calibrated_tensors`: none missing, none extra), and every
range is finite and within :data:`RANGE_LIMIT`. A cache that fails is not used; ``quantize.quantize_int8``
calibrates again and says why (a cache missing one tensor used to reach ``quantize_static``, which then stopped with
"Quantization parameters are not specified" for that tensor, naming no cache).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..core.optional import import_onnxruntime
from ..core.fixednames import read_fixed

__all__ = ["RANGE_LIMIT", "calibrated_tensors", "ranges_cache_problem", "write_ranges"]

#: ONNX Runtime's names of the calibration methods in a cache (``TensorsData.calibration_method``).
_METHOD_NAMES = {"entropy": "Entropy", "percentile": "Percentile", "minmax": "MinMax"}
#: The largest cache read back (bytes): a histogram method stores 2048 bins a tensor.
_MAX_CACHE_BYTES = 256 * 2**20


#: Largest activation range a calibration cache may hold (absolute value). A float32 network's activations are
#: far below it; a cache that holds more was not measured on this graph (a poisoned or corrupt cache) and would
#: give scales that round every activation to zero.
RANGE_LIMIT = 1e9


def calibrated_tensors(model: onnx.ModelProto, op_types: Sequence[str]) -> set[str]:
    """The tensors ONNX Runtime's calibration measures in ``model`` when it quantizes ``op_types``: every float
    (FP32 / FP16) input and output of a node of those types that is not a weight, after ONNX shape inference
    (``onnxruntime.quantization.calibrate.CalibraterBase.select_tensors_to_calibrate`` on the graph
    ``quantize_static`` loads with ``load_model_with_shape_infer``)."""
    g = onnx.shape_inference.infer_shapes(model).graph
    infos = {v.name: v for v in itertools.chain(g.value_info, g.output, g.input)}
    weights = {i.name for i in g.initializer}
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    return {t for n in g.node if n.op_type in op_types for t in itertools.chain(n.input, n.output)
            if t in infos and t not in weights and infos[t].type.HasField("tensor_type")
            and infos[t].type.tensor_type.elem_type in floats}


def ranges_cache_problem(path: Path, record: dict[str, Any] | None, model: onnx.ModelProto,
                         expected: set[str] | None = None, method: str | None = None) -> str | None:
    """Why the ranges cache at ``path`` (ONNX Runtime's ``TensorsData`` JSON) must not be used for ``model``, or
    None when it may: not a regular file (a link, a folder) or unreadable, its SHA-256 differs from the one
    ``record`` (the calibration record) holds, it is not the expected JSON, another calibration ``method`` made
    it, a tensor of ``expected`` (:func:`calibrated_tensors`) has no range or it holds one for a tensor not in
    ``expected`` (any name not in the graph when ``expected`` is None), or a range is not finite, beyond
    :data:`RANGE_LIMIT` or has lowest > highest. Untrusted input: read without following a link, size-limited."""
    if record is not None and "ranges_sha256" not in record:
        return "its record holds no SHA-256 of it (written by an older danet-edge)"
    try:
        raw = read_fixed(path, _MAX_CACHE_BYTES)
    except (OSError, ValueError) as e:
        return f"unreadable ({e})"
    if record is not None and record["ranges_sha256"] != hashlib.sha256(raw).hexdigest():
        return "its SHA-256 is not the one its record holds (changed since it was written)"
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError are ValueErrors
        return f"not valid JSON ({str(e)[:80]})"
    entries = data.get("data") if isinstance(data, dict) else None
    if not isinstance(entries, dict) or not entries:
        return "no ranges in it"
    if method is not None:
        made = data.get("calibration_method")
        made = made.get("value") if isinstance(made, dict) else made
        if not isinstance(made, str) or made.rsplit(".", 1)[-1] != _METHOD_NAMES.get(method, method):
            return f"made by calibration method {made!r}, not {method}"
        if data.get("smooth_quant", False) is not False:
            return "made with SmoothQuant, which danet-edge does not use"
    names = expected if expected is not None else \
        {t for n in model.graph.node for t in (*n.input, *n.output)} | {i.name for i in model.graph.input}
    missing = sorted(set(names) - set(entries)) if expected is not None else []
    if missing:
        return f"no range for tensor {missing[0]!r}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "") + \
            " that calibration measures in this graph"
    for name, entry in entries.items():
        if name not in names:
            return f"tensor {name!r} is not " + ("one calibration measures in this graph" if expected is not None
                                                 else "in the graph")
        if not isinstance(entry, dict):
            return f"tensor {name!r}: not a range"
        try:
            lo_f, hi_f = _cached_number(entry.get("lowest")), _cached_number(entry.get("highest"))
        except (TypeError, ValueError, IndexError):
            return f"tensor {name!r}: its range is not a number"
        if not (np.isfinite(lo_f) and np.isfinite(hi_f)) or max(abs(lo_f), abs(hi_f)) > RANGE_LIMIT or lo_f > hi_f:
            return f"tensor {name!r}: range {lo_f:g}..{hi_f:g} is not finite, beyond {RANGE_LIMIT:g} or reversed"
    return None


def _cached_number(value: Any) -> float:
    """A range end as ONNX Runtime stores it (a number, or ``{"CLS": "numpy.array", "data": ...}``), as a float.

    Raises:
        TypeError, ValueError, IndexError: not a number."""
    if isinstance(value, dict):
        value = value.get("data")
    if isinstance(value, bool) or value is None:
        raise TypeError(f"{value!r} is not a number")
    return float(np.asarray(value, np.float64).reshape(-1)[0])


def write_ranges(path: Path, ranges: dict[str, tuple[float, float]]) -> None:
    """Given ranges as ONNX Runtime's calibration cache (``TensorsData``, MinMax), which ``quantize_static`` reads
    instead of calibrating."""
    import_onnxruntime()
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData, save_tensors_data

    data = {k: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
            for k, (lo, hi) in ranges.items()}
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), path)
