"""TensorRT backend: a serialized engine with its manifest (row ``tensorrt`` of the table)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..core.manifest import read_manifest
from .backends import _BaseBackend

__all__ = ["TensorRTBackend"]


class TensorRTBackend(_BaseBackend):
    """A serialized TensorRT engine (``.engine`` / ``.plan``) with its ``.json`` manifest.

    Implementation in :mod:`danet_edge.runtime.trt_runner` (imported lazily: tensorrt and a CUDA
    API are needed only here).

    Raises:
        MissingDependencyError: tensorrt or a CUDA API is not installed.
        EngineError: engine built for another GPU or TensorRT version, or not deserializable.
        ManifestError: manifest missing or not matching the engine's I/O tensors.
    """

    name = "tensorrt"
    compute_timing = "CUDA events around execute_async_v3 on the runner's stream (the engine alone: no copies)"

    def __init__(self, path: str | os.PathLike[str], cuda_backend: str | None = None) -> None:
        from .trt_runner import TrtRunner

        self.manifest = read_manifest(path)
        self._runner = TrtRunner(Path(path), self.manifest, cuda_backend=cuda_backend)
        t = self.manifest.tensorrt or {}
        self.provider = f"TensorRT {t.get('version', '?')} on {t.get('gpu_name', '?')}"

    @classmethod
    def artifact_precision(cls, path: Path, manifest: Any) -> tuple[str, str, dict[str, Any] | None]:
        """``(precision, source, detail)`` from the per-layer precision ``build`` read with TensorRT's
        engine inspector into the manifest (``precision_report``)."""
        rep = manifest.precision_report if isinstance(manifest.precision_report, dict) else {}
        if rep.get("precision") in ("fp32", "fp16", "int8"):
            return str(rep["precision"]), f"engine layers ({rep.get('source', 'engine manifest')})", \
                {"counts": rep.get("counts"), "attention": rep.get("attention")}
        return manifest.precision, "engine manifest (no layer information)", None

    def _forward(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        out = self._runner.infer(self._model_input(images))
        self.compute_ms += self._runner.compute_ms
        if self.manifest.output_kind == "labels":
            return out.astype(np.int64, copy=False), None
        logits = out.astype(np.float32, copy=False)
        return logits.argmax(1), logits

    def close(self) -> None:
        if getattr(self, "_runner", None) is not None:
            self._runner.close()
            self._runner = None
