"""The calibration ranges cache ``export`` reads back: ONNX Runtime's ``TensorsData`` JSON
(``onnxruntime.quantization.calibrate.save_tensors_data``) beside its record ``calib_<graph>_<method>.json``.

Read back only after :func:`ranges_cache_problem` finds nothing wrong: the record holds the cache's SHA-256,
every tensor it names is in the graph, every range is finite and within :data:`RANGE_LIMIT`. A cache that fails
is not used; ``quantize.quantize_int8`` calibrates again and says why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..core.optional import import_onnxruntime
from ..core.utils import read_json, sha256_file

__all__ = ["RANGE_LIMIT", "ranges_cache_problem", "write_ranges"]


#: Largest activation range a calibration cache may hold (absolute value). A float32 network's activations are
#: far below it; a cache that holds more was not measured on this graph (a poisoned or corrupt cache) and would
#: give scales that round every activation to zero.
RANGE_LIMIT = 1e9


def ranges_cache_problem(path: Path, record: dict[str, Any] | None, model: onnx.ModelProto) -> str | None:
    """Why the ranges cache at ``path`` (ONNX Runtime's ``TensorsData`` JSON) must not be used for ``model``, or
    None when it may: its SHA-256 differs from the one ``record`` (the calibration record) holds, it is not the
    expected JSON, a tensor it names is not in the graph, or a range is not finite, beyond :data:`RANGE_LIMIT` or
    has lowest > highest. Untrusted input: read with the size limit of ``utils.read_json``."""
    if record is not None and "ranges_sha256" not in record:
        return "its record holds no SHA-256 of it (written by an older danet-edge)"
    if record is not None and record["ranges_sha256"] != sha256_file(path):
        return "its SHA-256 is not the one its record holds (changed since it was written)"
    try:
        data = read_json(path, max_bytes=256 * 2**20)
    except (OSError, ValueError) as e:
        return f"unreadable ({e})"
    entries = data.get("data") if isinstance(data, dict) else None
    if not isinstance(entries, dict) or not entries:
        return "no ranges in it"
    names = {t for n in model.graph.node for t in (*n.input, *n.output)} | {i.name for i in model.graph.input}
    for name, entry in entries.items():
        if name not in names:
            return f"tensor {name!r} is not in the graph"
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
