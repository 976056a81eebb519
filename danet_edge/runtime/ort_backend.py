"""ONNX Runtime backend: FP32, FP16 and INT8 Q/DQ graphs (row ``onnxruntime`` of the table)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.optional import import_onnxruntime
from ..core.errors import ConfigError, DataError, ManifestError
from ..core.manifest import read_manifest
from .backends import _BaseBackend
from ..core.io_contract import ORT_DTYPES, TensorSpec, check_io

__all__ = ["OnnxRuntimeBackend", "OnnxRuntimeFusedAttentionBackend", "ORT_PROVIDERS", "session_options", "holds_fp16"]


#: Execution providers in order of preference; short names accepted on the command line.
ORT_PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider",
                 "cpu": "CPUExecutionProvider"}
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def _resolve_providers(providers: Sequence[str] | None) -> list[str]:
    """User list (short or full names) checked against what this onnxruntime build has; default:
    TensorRT, CUDA, CPU, keeping only those available.

    Raises:
        ConfigError: unknown provider, or one this onnxruntime build does not have.
        MissingDependencyError: onnxruntime is not importable.
    """
    ort = import_onnxruntime()

    available = ort.get_available_providers()
    if not providers:
        return [p for p in ORT_PROVIDERS.values() if p in available] or available
    every = set(ort.get_all_providers())
    out = []
    for p in providers:
        full = ORT_PROVIDERS.get(p.lower(), p)
        if full not in every:
            raise ConfigError(f"unknown execution provider {p!r}: use one of {', '.join(ORT_PROVIDERS)} "
                              f"or a full name such as {', '.join(ORT_PROVIDERS.values())}")
        if full not in available:
            raise ConfigError(f"execution provider {full} is not available in this onnxruntime build "
                              f"(available: {', '.join(available)})")
        out.append(full)
    return out


def holds_fp16(manifest: Any) -> bool:
    """Whether the graph has FP16 compute: an FP16 graph, or an INT8 graph whose unquantized part is FP16."""
    counts = ((getattr(manifest, "precision_report", None) or {}).get("counts") or {})
    return manifest.precision == "fp16" or bool(counts.get("fp16"))


def session_options(precision: str, threads: int = 0, fp16_inside: bool = False, mem_pattern: bool = True) -> Any:
    """ONNX Runtime session options for a graph of ``precision``: the one policy export verification
    and every backend use. Graphs with FP16 compute (``precision == "fp16"`` or ``fp16_inside``: an INT8
    graph whose unquantized ops are FP16) run with graph optimisation off: ORT's CPU provider runs ops
    without FP16 kernels in FP32 and, when optimising, merges the Casts around them, which hides an
    FP16 overflow the graph would have on a GPU.

    Denormal floats are flushed to zero (``session.set_denormal_as_zero``, on every ONNX Runtime thread): PAM's
    softmax over thousands of keys leaves most of its map below FP32's smallest normal (1.2e-38), and x86 CPUs
    multiply such values about 20x slower. Measured, DANet R-50 at 1024x2048, one synthetic street scene, explicit
    form: 14.4 s with the flush against several minutes without (NOTES); what is flushed is below 1.2e-38 of a
    probability that sums to 1, so logits do not change beyond rounding.

    ``mem_pattern=False`` turns off ONNX Runtime's memory pattern: with it, a session's second run allocates the
    whole planned activation block beside what the first run left in its arena (DANet R-50 at 512x1024: +400 MiB
    on the second frame; at 1024x2048 about +5 GB). Export's verification runs each graph on several images.

    Raises:
        MissingDependencyError: onnxruntime is not importable.
    """
    ort = import_onnxruntime()

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    so.add_session_config_entry("session.set_denormal_as_zero", "1")
    so.enable_mem_pattern = mem_pattern
    if precision == "fp16" or fp16_inside:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return so


class OnnxRuntimeBackend(_BaseBackend):
    """An ONNX graph (FP32, FP16 or INT8 Q/DQ) run with ONNX Runtime.

    The sidecar manifest (``model.onnx.json``) says how to feed it; the graph's input and output
    names, shapes and element types are checked against it at open.

    Args:
        path: ``.onnx`` file with its ``.onnx.json`` manifest.
        providers: execution providers (``["cuda", "cpu"]`` or full names); default TensorRT, CUDA,
            CPU, those available.
        threads: ``intra_op_num_threads`` (0 = onnxruntime's default).

    ``session_options`` follow :func:`session_options` (FP16 graphs unoptimised, as export verifies them).

    Raises:
        ManifestError: manifest missing, invalid, or not matching the graph.
        ConfigError: unknown or unavailable provider. DataError: the file is not a readable ONNX graph.
        MissingDependencyError: onnxruntime (or onnxruntime-gpu) is not installed.
    """

    name = "onnxruntime"
    compute_timing = ("perf_counter around InferenceSession.run alone (host tensors in and out: with the CUDA or "
                      "TensorRT provider it includes their copies; no normalisation, no argmax)")

    def __init__(self, path: str | os.PathLike[str], providers: Sequence[str] | None = None,
                 threads: int = 0) -> None:
        ort = import_onnxruntime()

        path = Path(path)
        self.manifest = read_manifest(path)
        self.providers = _resolve_providers(providers)
        self.session_options = session_options(self.manifest.precision, threads, holds_fp16(self.manifest))
        self.provider = f"ONNX Runtime {ort.__version__} {self.providers[0]}"
        try:
            self.session = ort.InferenceSession(self._graph(path), self.session_options, providers=self.providers)
        except DataError:
            raise
        except Exception as e:  # onnxruntime raises its own Fail / InvalidGraph / RuntimeException types
            raise DataError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0][:300]})") from None
        self._check_graph(path)

    def _graph(self, path: Path) -> str | bytes:
        """What the session loads: the file itself (a subclass may rewrite the graph)."""
        return str(path)

    @classmethod
    def artifact_precision(cls, path: Path, manifest: Any) -> tuple[str, str, dict[str, Any] | None]:
        """``(precision, source, detail)`` read from the graph's node types (``precision.precision_report``),
        not from the file name or the manifest."""
        import onnx

        from ..graph.precision import precision_report

        rep = precision_report(onnx.load(str(path), load_external_data=False))
        d = rep.to_dict()
        return rep.precision, "ONNX graph (node types)", {k: d.get(k) for k in ("counts", "attention_quantized", "cost")}

    def _check_graph(self, path: Path) -> None:
        m = self.manifest
        ins, outs = self.session.get_inputs(), self.session.get_outputs()
        check_io(path, m, [TensorSpec.of(t.name, t.shape, ORT_DTYPES.get(t.type)) for t in ins],
                 [TensorSpec.of(t.name, t.shape, ORT_DTYPES.get(t.type)) for t in outs])
        expected_rank = 3 if m.output_kind == "labels" else 4
        if len(m.output_shape) != expected_rank:
            raise ManifestError(f"{path}: output_kind {m.output_kind!r} needs a {expected_rank}-D output, "
                                f"the manifest says {m.output_shape}")
        self._in_dtype = _ORT_TYPES.get(ins[0].type, np.float32)

    def _forward(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        x = self._model_input(images)
        if x.dtype != self._in_dtype:
            x = x.astype(self._in_dtype)
        out = self._timed(self._run, x)  # the graph alone: compute_ms
        if self.manifest.output_kind == "labels":
            return out.astype(np.int64, copy=False), None
        logits = out.astype(np.float32, copy=False)
        return logits.argmax(1), logits

    def _run(self, x: np.ndarray) -> np.ndarray:
        """The graph's one output for input batch ``x`` (what a runtime subclass replaces)."""
        (out,) = self.session.run([self.manifest.output_name], {self.manifest.input_name: x})
        return out

    def close(self) -> None:
        self.session = None


class OnnxRuntimeFusedAttentionBackend(OnnxRuntimeBackend):
    """An ONNX graph run by ONNX Runtime with its fusible PAM (heads or attention-op in FP16) computed as TensorRT's
    fused attention kernel computes it (``graph.fused_attention.fused_attention_numerics``: Q K^T and the softmax in
    FP32, P rounded to FP16, P V accumulated in FP32), not as an unfused FP16 graph stores its energy. What a device
    gives when the build fuses the attention (``build`` records ``attention_fused``), modelled on a CPU; a graph
    without a fusible attention runs as written. Row ``onnxruntime-fused-attention`` (``check --backend``).

    Raises:
        as :class:`OnnxRuntimeBackend`; DataError: the graph cannot be read to be rewritten.
    """

    name = "onnxruntime-fused-attention"

    def _graph(self, path: Path) -> bytes:
        import onnx

        from ..graph.fused_attention import FUSED_NUMERICS, fused_attention_numerics, fusible_attentions

        try:
            graph = onnx.load(str(path))
        except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and OSError alike
            raise DataError(f"{path}: not a readable ONNX graph ({str(e).splitlines()[0][:200]})") from None
        fused = fusible_attentions(graph)
        self.provider += f"; {FUSED_NUMERICS}" if fused else "; no fusible attention in this graph: run as written"
        return fused_attention_numerics(graph).SerializeToString()
