"""The FP32 stage of export: a PyTorch model -> a verified static-shape ONNX graph with its manifest.

Graph choices (torch 2.15):

* ``torch.onnx.export(..., dynamo=False)`` (TorchScript path): the dynamo path needs onnxscript and
  gives nothing the static graph needs; the TorchScript path with fixed input shapes, then onnxslim's
  constant folding, leaves no ``Shape`` arithmetic and no symbolic dimension.
* PAM exported in the form asked (``model.attention``): ``explicit`` MatMul -> Softmax -> (Transpose) ->
  MatMul, ``chunked`` (the same per static slice of the queries, then Concat), ``heads`` (Expand of Q and K,
  one head size) or ``attention-op`` (the heads form as one ONNX ``Attention`` node, opset 23:
  ``graph.attention_op``); never the SDPA path, which adds scale Muls around the MatMuls. The explicit and heads
  forms are traced through ``model.attention.pam_for_export``: the graph gets their nodes, the trace never holds
  their whole map.
* eval mode: only the fused logits (auxiliary heads and Dropout are not in the graph).
* input ``images`` ``(N, 3, H, W) float32`` normalised, output ``logits`` ``(N, K, H, W) float32``;
  with ``fused_io``: input ``images`` ``(N, H, W, 3) uint8`` RGB (Cast, Transpose, Sub, Mul in the graph)
  and output ``labels`` ``(N, H, W) int32`` (ArgMax, Cast in the graph).

Every graph written by export goes through :func:`finalize`: ``onnx.checker`` full check, ``trtcheck``, its
manifest in ``metadata_props['danet_edge_manifest']`` and in a ``.json`` sidecar.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from ..core.compare import relative_l2
from ..core.errors import ConfigError, ExportError
from ..core.manifest import Manifest, manifest_json, manifest_path
from ..core.onnx_meta import METADATA_KEY
from ..core.utils import atomic_path, release_memory
from ..data.frames import model_inputs
from ..core.choices import ATTENTION_OPSET, ATTENTION_TENSORRT
from ..graph.attention_op import to_attention_op
from ..graph.memory import dfs_order, memory_estimate
from ..graph.precision import decide_pam_energy, precision_report, scale_before_energy, verify_precision
from ..graph.trtcheck import enforce_tensorrt_compat, required_tensorrt
from ..model.attention import measure_pam_energy
from ..model.checkpoint import LoadedModel, checkpoint_manifest, flush_denormals
from ..model.forms import EXPORT_FORMS, chunk_bounds, reference_chunks
from .config import DEFAULT_OPSET, ExportConfig
from .graph_io import fuse_io
from .results import Artifact

#: Least share of equal class maps a fused-I/O graph must give against the graph or model it came from.
MIN_FUSED_AGREEMENT = 0.999

__all__ = ["MIN_FUSED_AGREEMENT", "export_onnx", "trace_onnx", "finalize", "fused_manifest", "ort_session", "run_graph",
           "verification_session",
           "synthetic_frames"]


def fused_manifest(m: Manifest) -> Manifest:
    """The manifest of ``graph_io.fuse_io``'s graph: uint8 ``(N, H, W, 3)`` in, int32 ``(N, H, W)`` labels out."""
    n, (h, w) = m.batch_size, m.image_size
    return replace(m, input_shape=[n, h, w, 3], input_dtype="uint8", output_name="labels", output_shape=[n, h, w],
                   output_dtype="int32", output_kind="labels")


def synthetic_frames(n: int, size: tuple[int, int], seed: int) -> list[np.ndarray]:
    """``n`` synthetic street scenes ``(H, W, 3) uint8`` RGB (``danet_edge.data.synthetic``), seeded."""
    from ..data.synthetic import render_scene

    rng = np.random.default_rng([seed, 7])
    return [render_scene(rng, size[0], size[1])[0] for _ in range(n)]


def ort_session(model: onnx.ModelProto | str | os.PathLike[str], precision: str = "fp32",
                 fp16_inside: bool = False):
    """CPU session with the session options every backend uses for ``precision``
    (``runtime.ort_backend.session_options``: FP16 graphs unoptimised, so FP16 overflow is not hidden), without
    ONNX Runtime's memory pattern (``mem_pattern=False``: export runs each graph on several images)."""
    import onnxruntime as ort

    from ..runtime.ort_backend import session_options

    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, session_options(precision, 0, fp16_inside, mem_pattern=False),
                                providers=["CPUExecutionProvider"])


def verification_session(model: onnx.ModelProto | str | os.PathLike[str], manifest: Manifest):
    """``(session, numerics)``: the ONNX Runtime session export verifies a derived graph with. A graph whose PAM a
    fused kernel takes (``graph.fused_attention.fusible_attentions``: the heads and attention-op forms in FP16) is
    run as that kernel computes it (``fused_attention_numerics``), which is what a device runs when TensorRT fuses
    it, and ``numerics`` names that; else the graph as written and ``numerics`` None."""
    from ..graph.fused_attention import FUSED_NUMERICS, fused_attention_numerics, fusible_attentions
    from ..runtime.ort_backend import holds_fp16

    graph = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    if fusible_attentions(graph):
        return ort_session(fused_attention_numerics(graph), manifest.precision, holds_fp16(manifest)), FUSED_NUMERICS
    return ort_session(model, manifest.precision, holds_fp16(manifest)), None


def run_graph(session, manifest: Manifest, frames: list[np.ndarray]) -> np.ndarray:
    """``frames`` through ``session`` at the manifest's static batch: ``(len(frames), ...)`` outputs.

    Denormals are flushed on this thread first (``checkpoint.flush_denormals``): an ONNX Runtime session made
    with default options (onnxslim's, while tracing) clears the flag on the thread that makes it, and ONNX
    Runtime computes on the calling thread too (measured: one R-50 frame at 1024x2048 15 s flushed, over 5
    minutes not)."""
    flush_denormals()
    outs = [session.run(None, {manifest.input_name: x})[0] for x in model_inputs(frames, manifest)]
    return np.concatenate(outs)[:len(frames)]


def finalize(model: onnx.ModelProto, path: Path, manifest: Manifest, target: str, board: str | None = None) -> None:
    """Validate and embed the manifest, run the full checker and the TensorRT rules, write graph + sidecar.

    The manifest is validated first by the rules every reader applies (``manifest.manifest_json``), so export
    never writes a sidecar that ``infer`` refuses. Both files are written to temporary names beside their
    targets; then the graph is renamed, then the sidecar. Two renames are never one atomic step: a kill
    between them leaves the new graph beside the old sidecar. Readers close that window by detection:
    ``manifest.read_manifest`` compares the sidecar with the manifest embedded here
    (``metadata_props[METADATA_KEY]``) and refuses a mismatch in one line, instead of running with the old
    normalisation. The graph's memory estimate (``graph.memory``) goes into ``manifest.extra["memory"]``, with
    ``board`` (the ``--jetson`` board it was exported for; default: the one its manifest already records).
    """
    sidecar = manifest_path(path)
    board = board or (manifest.extra.get("memory") or {}).get("board")  # a derived graph keeps its FP32's
    manifest.extra = {**manifest.extra, "memory": memory_estimate(model).record(board)}
    sidecar_text = manifest_json(manifest, str(sidecar))
    enforce_tensorrt_compat(model, target, required_tensorrt(model))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(manifest.to_dict())
    model.producer_name = "danet-edge"
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{path.name}: ONNX checker failed: {str(e).splitlines()[0]}") from None
    with atomic_path(sidecar) as tmp_sidecar, atomic_path(path, model.ByteSize()) as tmp_graph:
        tmp_sidecar.write_text(sidecar_text)
        onnx.save(model, str(tmp_graph))
    # leaving the block renames the graph (inner), then the sidecar (outer)


def trace_onnx(loaded: LoadedModel, size: tuple[int, int], batch: int, opset: int, attention: str = "explicit",
               chunks: int | None = None) -> onnx.ModelProto:
    """The model traced to a static-shape FP32 ONNX graph (logits out), PAM in the form asked, constant-folded
    by onnxslim; not yet checked or verified (:func:`export_onnx` does both).

    Args:
        size: ``(H, W)``; batch: N; opset: ONNX opset.
        attention, chunks: PAM's form (``model.forms.EXPORT_FORMS``) and the query chunks of ``chunked``.

    Raises:
        ConfigError: an unknown form. ExportError: ``torch.onnx.export`` failed.
    """
    import onnxslim

    if attention not in EXPORT_FORMS:
        raise ConfigError(f"--attention must be one of {', '.join(EXPORT_FORMS)}, got {attention!r}")
    h, w = size
    model = loaded.model.eval()
    old = model.head.sa.impl, model.head.sa.chunks
    traced = "heads" if attention == "attention-op" else attention  # attention-op: the heads form, rewritten below
    model.set_attention(traced, chunks if attention == "chunked" else None)  # type: ignore[arg-type]
    names = checkpoint_manifest(loaded, (h, w), batch)
    try:
        with tempfile.TemporaryDirectory(prefix="danet-edge-export-") as tmp:
            raw = Path(tmp) / "raw.onnx"
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the TorchScript path is chosen on purpose; shapes are static
                torch.onnx.export(model, (torch.zeros(batch, 3, h, w),), str(raw), input_names=[names.input_name],
                                  output_names=[names.output_name], opset_version=opset, dynamo=False,
                                  do_constant_folding=True, training=torch.onnx.TrainingMode.EVAL)
            graph = onnxslim.slim(onnx.load(str(raw)))
    except (RuntimeError, ValueError, torch.onnx.errors.OnnxExporterError) as e:
        raise ExportError(f"torch.onnx.export failed: {str(e).splitlines()[0]}") from None
    finally:
        model.set_attention(*old)
        release_memory()  # the trace's activations (the whole attention map in the explicit form) go back
        flush_denormals()  # onnxslim's ONNX Runtime sessions clear it on this thread (see run_graph)
    if traced == "heads":
        graph = scale_before_energy(graph)
    if attention == "attention-op":
        graph = onnxslim.slim(to_attention_op(graph))  # opset 23, one ONNX Attention node (TensorRT >= 10.14)
    ordered = dfs_order(graph.graph)  # one attention chunk after another, as runtimes run them
    del graph.graph.node[:]
    graph.graph.node.extend(ordered)
    graph.graph.name = "danet"
    return graph


def export_onnx(loaded: LoadedModel, out: str | os.PathLike[str], size: tuple[int, int], batch: int | None = None,
                opset: int | None = None, fused_io: bool = False, frames: list[np.ndarray] | None = None,
                tolerance: float | None = None, target: str | None = None, attention: str = "explicit",
                chunks: int | None = None, graph: onnx.ModelProto | None = None,
                record: dict[str, Any] | None = None, board: str | None = None) -> Artifact:
    """PyTorch model -> verified static-shape FP32 ONNX at ``out`` (+ ``out.json``).

    Args:
        loaded: ``checkpoint.load_model`` result.
        size: ``(H, W)``, multiples of the output stride.
        batch, opset, tolerance, target: None = :class:`~danet_edge.export.config.ExportConfig`'s defaults.
        frames: verification images ``(H, W, 3) uint8 RGB`` (any size); default synthetic.
        tolerance: ONNX Runtime vs PyTorch logits relative L2 limit (fused I/O: label agreement >= 99.9 %).
        attention, chunks: PAM's form in the graph (``model.forms.EXPORT_FORMS``) and, for ``chunked``, the number
            of query chunks (None: by size, ``forms.reference_chunks``); recorded in ``manifest.extra["attention"]``.
        graph: the graph :func:`trace_onnx` already made with these options (None: traced here).
        record: more facts of the attention for ``manifest.extra["attention"]`` (``attention.AttentionChoice``).
        board: the ``--jetson`` board, recorded in ``manifest.extra["memory"]["board"]`` (``graph.boards.board_of``).

    PAM's largest ``|Q^T K|`` is measured on ``frames`` during the PyTorch reference pass and decides whether the
    FP16 and INT8 graphs keep PAM's energy in FP32 (``graph.precision.decide_pam_energy``; recorded in
    ``manifest.extra["attention"]["energy"]``).

    Raises:
        ExportError: export, checker or verification failure (says by how much).
        CompatibilityError: TensorRT rule broken (``target="tensorrt"``).
    """
    batch = ExportConfig.default("batch") if batch is None else batch
    opset = DEFAULT_OPSET if opset is None else opset
    tolerance = ExportConfig.default("tolerance") if tolerance is None else tolerance
    target = ExportConfig.default("target") if target is None else target
    t0 = time.perf_counter()
    out = Path(out)
    h, w = size
    os_ = loaded.config.output_stride
    if attention == "chunked":  # the count the graph has: at most one a position; one chunk is the explicit form
        positions = (h // os_) * (w // os_)
        chunks = len(chunk_bounds(positions, reference_chunks(batch, positions) if chunks is None else chunks))
        attention = "chunked" if chunks > 1 else "explicit"
    if graph is None:
        graph = trace_onnx(loaded, size, batch, opset, attention, chunks)
    model = loaded.model.eval()
    written_opset = ATTENTION_OPSET if attention == "attention-op" else opset
    manifest = replace(checkpoint_manifest(loaded, (h, w), batch), kind="onnx", opset=written_opset, target=target)
    if fused_io:
        graph = fuse_io(graph, manifest.mean, manifest.std)
        manifest = fused_manifest(manifest)
    # verification against PyTorch on real (or synthetic) images
    frames = frames or synthetic_frames(2, (h, w), 0)
    got = run_graph(ort_session(graph), manifest, frames)
    release_memory()  # ONNX Runtime's arena (the whole map in the explicit form) before PyTorch's reference
    with torch.no_grad(), measure_pam_energy(model) as energy:  # PAM's largest |Q^T K|: the FP16 island decision
        ref = torch.cat([model(torch.from_numpy(x)) for x in model_inputs(frames, manifest, fused=False)]
                        ).numpy()[:len(frames)]
    pam = decide_pam_energy(attention, energy.max_abs if energy.images else None, min(energy.images, len(frames)))
    if fused_io:
        agree = float((got == ref.argmax(1)).mean())
        verification = {"label_agreement": agree}
        if agree < MIN_FUSED_AGREEMENT:
            raise ExportError(f"fused-I/O ONNX labels agree with PyTorch on {agree:.4%} of pixels (< 99.9 %)")
    else:
        err = relative_l2(got, ref)
        verification = {"rel_l2_vs_torch": err, "label_agreement": float((got.argmax(1) == ref.argmax(1)).mean())}
        if not err < tolerance:
            raise ExportError(f"FP32 ONNX differs from PyTorch by relative L2 {err:.3g} (limit {tolerance:g}) "
                              f"on {len(frames)} images")
    report = precision_report(graph)
    verify_precision(report, "fp32")
    manifest.precision_report = report.to_dict()
    manifest.extra = {**manifest.extra, "verification": verification,
                      "attention": {"form": attention, "chunks": chunks if attention == "chunked" else 1,
                                    "energy": pam.record(),
                                    **({"min_tensorrt": ".".join(map(str, ATTENTION_TENSORRT))}
                                       if attention == "attention-op" else {}), **(record or {})}}
    finalize(graph, out, manifest, target, board)
    return Artifact(out, manifest, time.perf_counter() - t0, report.to_dict(), verification, outputs=got)
