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

__all__ = ["CALIB_METHOD", "calibration_key", "default_cache_path", "make_calibrator"]

CALIB_METHOD = "EntropyCalibration2"


def calibration_key(onnx_path: Path, calib_set: CalibrationSet, batch: int) -> dict[str, Any]:
    """The record a calibration cache is keyed by: graph, images (name + SHA-256), batch, method."""
    images = [[rel, sha256_file(p)] for rel, p in zip(calib_set.relative_paths(), calib_set.paths)]
    key = {"onnx_sha256": sha256_file(onnx_path), "method": CALIB_METHOD, "batch": batch,
           "seed": calib_set.seed, "images": images}
    key["key"] = hashlib.sha256(repr(sorted(key.items())).encode()).hexdigest()
    return key


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
            self.cache_reused = True
            return cache.read_bytes()

        def write_calibration_cache(self, data: Any) -> None:
            if self.error is not None:
                return  # never keep a cache calibrated on a truncated set
            with atomic_path(cache) as tmp:
                tmp.write_bytes(bytes(data))
            write_json(record, key)

        def close(self) -> None:
            if self.buf is not None:
                cuda.free(self.buf)
                self.buf = None
            if self.stream is not None:
                cuda.destroy_stream(self.stream)
                self.stream = None

    return EntropyCalibrator()
