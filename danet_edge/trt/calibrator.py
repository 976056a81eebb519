"""TensorRT 10.x implicit INT8 calibration: an ``IInt8EntropyCalibrator2`` over a calibration set.

Deprecated in TensorRT 10 and removed in 11 (explicit Q/DQ from ``danet-edge export --int8`` is the
path that works on both); kept for users of the old flow on JetPack 6.

Two behaviours of TensorRT's Python wrapper shape this module (TensorRT Python API,
``IInt8EntropyCalibrator2``: https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Int8/EntropyCalibrator2.html):

* an exception raised inside ``get_batch`` is printed by the wrapper and read as "no more batches",
  so the engine would be calibrated on a truncated set and its cache written. The calibrator keeps
  the first error, refuses to write a cache after it, and :func:`engine.build_engine` fails the build;
* the cache is whatever the calibrator returns from ``read_calibration_cache``: it is reused only when
  its record (``<cache>.json``) names the same graph, image list (paths and SHA-256 of each file),
  batch and method, so another folder or count never silently reuses an old cache.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..data.calib import CalibrationSet
from ..core.manifest import Manifest
from ..core.utils import atomic_path, read_json, sha256_file, write_json

__all__ = ["CALIB_METHOD", "calibration_key", "default_cache_path", "make_calibrator", "calibration_cache_problem"]

CALIB_METHOD = "EntropyCalibration2"


def calibration_key(onnx_path: Path, calib_set: CalibrationSet, batch: int) -> dict[str, Any]:
    """The record a calibration cache is keyed by: graph, images (name + SHA-256), batch, method."""
    images = [[rel, sha256_file(p)] for rel, p in zip(calib_set.relative_paths(), calib_set.paths)]
    key = {"onnx_sha256": sha256_file(onnx_path), "method": CALIB_METHOD, "batch": batch,
           "seed": calib_set.seed, "images": images}
    key["key"] = hashlib.sha256(repr(sorted(key.items())).encode()).hexdigest()
    return key


#: Largest activation scale a calibration cache may hold (a range of 127 x this). Beyond it the cache was not
#: measured on a float32 network (a poisoned or corrupt file) and would round every activation to zero.
SCALE_LIMIT = 1e9 / 127


def calibration_cache_problem(data: bytes, record: dict[str, Any] | None = None) -> str | None:
    """Why TensorRT calibration cache bytes must not be used, or None when they may.

    The cache is text (TensorRT's ``IInt8Calibrator.write_calibration_cache``): a header line
    ``TRT-<version>-EntropyCalibration2`` then one ``<tensor>: <scale>`` line per tensor, the scale the
    big-endian hex of a float32. Refused: a SHA-256 other than the one its ``record`` holds (when the record
    has one), another method in the header, a line that does not parse, a scale that is not finite, not positive
    or beyond :data:`SCALE_LIMIT`.
    """
    import struct

    if record is not None and "cache_sha256" in record and hashlib.sha256(data).hexdigest() != record["cache_sha256"]:
        return "its SHA-256 is not the one its record holds (changed since it was written)"
    try:
        lines = data.decode("ascii").splitlines()
    except UnicodeDecodeError:
        return "not a text calibration cache"
    if not lines or not (lines[0].startswith("TRT-") and lines[0].endswith(CALIB_METHOD)):
        return f"header {lines[0][:60]!r} is not TRT-<version>-{CALIB_METHOD}" if lines else "empty"
    for line in lines[1:]:
        name, sep, hexval = line.rpartition(":")
        try:
            scale = struct.unpack(">f", bytes.fromhex(hexval.strip()))[0]
        except (ValueError, struct.error):
            return f"line {line[:60]!r} is not '<tensor>: <hex float32>'"
        if not sep or not name.strip():
            return f"line {line[:60]!r} names no tensor"
        if not (np.isfinite(scale) and 0 < scale <= SCALE_LIMIT):
            return f"tensor {name.strip()!r}: scale {scale:g} is not finite, not positive or beyond {SCALE_LIMIT:g}"
    return None


def default_cache_path(onnx_path: Path, key: dict[str, Any]) -> Path:
    """``<onnx stem>.int8-calib.<key[:12]>.cache`` beside the ONNX."""
    return onnx_path.with_name(f"{onnx_path.stem}.int8-calib.{key['key'][:12]}.cache")


def make_calibrator(trt: Any, cuda: Any, calib_set: CalibrationSet, manifest: Manifest, cache: Path,
                    key: dict[str, Any]) -> Any:
    """An ``IInt8EntropyCalibrator2`` feeding ``calib_set`` through ``preprocess.preprocess``.

    Batches come from ``CalibrationSet.model_batch`` (the rule ONNX Runtime's calibration uses too).
    The returned object has ``error`` (the first exception in ``get_batch``, or None), ``batches`` (how
    many were given to TensorRT), ``cache_reused`` and ``close()`` (frees its device buffer and stream;
    idempotent).
    """
    batch = manifest.batch_size
    shape = tuple(manifest.input_shape)
    fused = manifest.input_dtype == "uint8"
    record = Path(os.fspath(cache) + ".json")

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.index = 0
            self.batches = 0
            self.error: BaseException | None = None
            self.cache_reused = False
            self.cache_refused: str | None = None  # why a cache on disk was not used (then recalibrated)
            self.stream = cuda.create_stream()
            try:
                self.buf = cuda.alloc(shape, np.uint8 if fused else np.float32)
            except BaseException:
                cuda.destroy_stream(self.stream)
                raise

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.error is not None or self.index >= calib_set.num_batches(batch):
                return None
            try:
                x = calib_set.model_batch(self.index, batch, manifest.image_size, manifest.mean, manifest.std, fused)
                np.copyto(self.buf.host, x.reshape(shape))
                cuda.h2d_async(self.buf, self.stream)
                cuda.synchronize(self.stream)
            except BaseException as e:  # TensorRT's wrapper would swallow it: keep it for build_engine
                self.error = e
                raise
            self.index += 1
            self.batches += 1
            return [self.buf.device]

        def read_calibration_cache(self) -> bytes | None:
            if not (cache.is_file() and record.is_file()):
                return None
            try:
                old = read_json(record)
            except (OSError, ValueError):
                return None
            if not isinstance(old, dict) or old.get("key") != key["key"]:
                return None
            data = cache.read_bytes()
            self.cache_refused = calibration_cache_problem(data, old)
            if self.cache_refused is not None:
                return None  # TensorRT calibrates again and writes a new cache
            self.cache_reused = True
            return data

        def write_calibration_cache(self, data: Any) -> None:
            if self.error is not None:
                return  # never keep a cache calibrated on a truncated set
            blob = bytes(data)
            with atomic_path(cache) as tmp:
                tmp.write_bytes(blob)
            write_json(record, {**key, "cache_sha256": hashlib.sha256(blob).hexdigest()})

        def close(self) -> None:
            if self.buf is not None:
                cuda.free(self.buf)
                self.buf = None
            if self.stream is not None:
                cuda.destroy_stream(self.stream)
                self.stream = None

    return EntropyCalibrator()
